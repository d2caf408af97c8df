/**
 * The libzstd symbol table (the system's `libzstd.so.1`), loaded once on first use: `$CRYO_LIBZSTD` if set,
 * else the soname. The `_nb` variants run on a pool thread (`nonblocking`), so N calls in flight use N cores;
 * every buffer they are given must stay referenced until their promise settles.
 *
 * @module
 */

import { loadSystemLibrary } from "./_load.ts";
import { int, ptr, size_t, uint } from "./types.ts";

/** `unsigned long long` */
const ull = "u64" as const;

const symbols = {
  // unsigned ZSTD_versionNumber(void);
  ZSTD_versionNumber: { parameters: [], result: uint },
  // size_t ZSTD_compressBound(size_t srcSize);
  ZSTD_compressBound: { parameters: [size_t], result: size_t },
  // unsigned ZSTD_isError(size_t code);
  ZSTD_isError: { parameters: [size_t], result: uint },
  // const char *ZSTD_getErrorName(size_t code);
  ZSTD_getErrorName: { parameters: [size_t], result: ptr },
  // int ZSTD_minCLevel(void);
  ZSTD_minCLevel: { parameters: [], result: int },
  // int ZSTD_maxCLevel(void);
  ZSTD_maxCLevel: { parameters: [], result: int },
  // ZSTD_CCtx *ZSTD_createCCtx(void);
  ZSTD_createCCtx: { parameters: [], result: ptr },
  // size_t ZSTD_freeCCtx(ZSTD_CCtx *cctx);
  ZSTD_freeCCtx: { parameters: [ptr], result: size_t },
  // ZSTD_DCtx *ZSTD_createDCtx(void);
  ZSTD_createDCtx: { parameters: [], result: ptr },
  // size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx);
  ZSTD_freeDCtx: { parameters: [ptr], result: size_t },
  // size_t ZSTD_compressCCtx(ZSTD_CCtx *cctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize,
  //                          int compressionLevel);
  // (given views, not pointers: no pointer object per call)
  ZSTD_compressCCtx: { parameters: [ptr, "buffer", size_t, "buffer", size_t, int], result: size_t },
  // (the same, on a pool thread)
  ZSTD_compressCCtx_nb: {
    name: "ZSTD_compressCCtx",
    parameters: [ptr, ptr, size_t, ptr, size_t, int],
    result: size_t,
    nonblocking: true,
  },
  // size_t ZSTD_decompressDCtx(ZSTD_DCtx *dctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize);
  // (given views, not pointers: no pointer object per call)
  ZSTD_decompressDCtx: { parameters: [ptr, "buffer", size_t, "buffer", size_t], result: size_t },
  // (the same, on a pool thread)
  ZSTD_decompressDCtx_nb: {
    name: "ZSTD_decompressDCtx",
    parameters: [ptr, ptr, size_t, ptr, size_t],
    result: size_t,
    nonblocking: true,
  },
  // unsigned long long ZSTD_getFrameContentSize(const void *src, size_t srcSize);
  ZSTD_getFrameContentSize: { parameters: [ptr, size_t], result: ull },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libzstd symbols. */
export type ZstdSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** `ZSTD_error_dstSize_tooSmall`: the output did not fit the capacity given. */
export const ZSTD_ERROR_DST_SIZE_TOO_SMALL = 70;

let loaded: ZstdSymbols | undefined;

/**
 * The libzstd symbols, loading the library on first call.
 *
 * @returns The symbols.
 * @throws {CryoError} When the library cannot be loaded, naming what was tried.
 */
export function zstd(): ZstdSymbols {
  loaded ??= loadSystemLibrary(
    "libzstd.so.1",
    "CRYO_LIBZSTD",
    symbols,
    "Install it (Debian: apt-get install libzstd1)",
  );
  return loaded;
}

/**
 * The error code of a zstd result (`ZSTD_getErrorCode` is `0 - result` for an error result).
 *
 * @param ret A zstd `size_t` result for which `ZSTD_isError` is true.
 * @returns The positive error code, e.g. 70.
 */
export function zstdErrorCode(ret: number | bigint): number {
  return Number(-BigInt.asIntN(64, BigInt(ret)));
}

/**
 * The name of a zstd error result, e.g. `Destination buffer is too small`.
 *
 * @param ret A zstd `size_t` result for which `ZSTD_isError` is true.
 * @returns The name libzstd gives the error.
 */
export function zstdErrorName(ret: number | bigint): string {
  const p = zstd().ZSTD_getErrorName(BigInt(ret));
  return p ? Deno.UnsafePointerView.getCString(p) : `zstd error ${zstdErrorCode(ret)}`;
}
