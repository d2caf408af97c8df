/**
 * The liblz4 symbol table (the system's `liblz4.so.1`), loaded once on first use: `$CRYO_LIBLZ4` if set, else
 * the soname. The `_nb` variants run on a pool thread (`nonblocking`), so N calls in flight use N cores; every
 * buffer they are given must stay referenced until their promise settles. The LZ4 functions keep their state on
 * the calling thread's stack, so they are safe to run concurrently.
 *
 * @module
 */

import { loadSystemLibrary } from "./_load.ts";
import { int, ptr } from "./types.ts";

const symbols = {
  // int LZ4_versionNumber(void);
  LZ4_versionNumber: { parameters: [], result: int },
  // int LZ4_compressBound(int inputSize);
  LZ4_compressBound: { parameters: [int], result: int },
  // int LZ4_compress_fast(const char *src, char *dst, int srcSize, int dstCapacity, int acceleration);
  // (given views, not pointers: no pointer object per call)
  LZ4_compress_fast: { parameters: ["buffer", "buffer", int, int, int], result: int },
  // (the same, on a pool thread)
  LZ4_compress_fast_nb: {
    name: "LZ4_compress_fast",
    parameters: [ptr, ptr, int, int, int],
    result: int,
    nonblocking: true,
  },
  // int LZ4_compress_HC(const char *src, char *dst, int srcSize, int dstCapacity, int compressionLevel);
  // (given views, not pointers)
  LZ4_compress_HC: { parameters: ["buffer", "buffer", int, int, int], result: int },
  // (the same, on a pool thread)
  LZ4_compress_HC_nb: {
    name: "LZ4_compress_HC",
    parameters: [ptr, ptr, int, int, int],
    result: int,
    nonblocking: true,
  },
  // int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity);
  // (given views, not pointers: no pointer object per call)
  LZ4_decompress_safe: { parameters: ["buffer", "buffer", int, int], result: int },
  // (the same, on a pool thread)
  LZ4_decompress_safe_nb: {
    name: "LZ4_decompress_safe",
    parameters: [ptr, ptr, int, int],
    result: int,
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The liblz4 symbols. */
export type Lz4Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

let loaded: Lz4Symbols | undefined;

/**
 * The liblz4 symbols, loading the library on first call.
 *
 * @returns The symbols.
 * @throws {CryoError} When the library cannot be loaded, naming what was tried.
 */
export function lz4(): Lz4Symbols {
  loaded ??= loadSystemLibrary(
    "liblz4.so.1",
    "CRYO_LIBLZ4",
    symbols,
    "Install it (Debian: apt-get install liblz4-1)",
  );
  return loaded;
}
