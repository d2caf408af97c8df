/**
 * The libxxhash symbol table (XXH3-64), bound once at module load from the system's `libxxhash.so.0`
 * (override with `$CRYO_LIBXXHASH`).
 *
 * @module
 */

import { lazySystemLibrary } from "./_load.ts";
import { ptr, size_t, ulong } from "./types.ts";

const symbols = {
  // XXH64_hash_t XXH3_64bits(const void *data, size_t len);
  XXH3_64bits: { parameters: [ptr, size_t], result: ulong },
  // XXH64_hash_t XXH3_64bits(const void *data, size_t len);  (a JS buffer, passed without copying)
  XXH3_64bits_buf: { name: "XXH3_64bits", parameters: ["buffer", size_t], result: ulong },
  // XXH64_hash_t XXH3_64bits(const void *data, size_t len);  (on a pool thread)
  XXH3_64bits_nb: { name: "XXH3_64bits", parameters: [ptr, size_t], result: ulong, nonblocking: true },
  // XXH3_state_t *XXH3_createState(void);
  XXH3_createState: { parameters: [], result: ptr },
  // XXH_errorcode XXH3_freeState(XXH3_state_t *state);
  XXH3_freeState: { parameters: [ptr], result: "i32" },
  // XXH_errorcode XXH3_64bits_reset(XXH3_state_t *state);
  XXH3_64bits_reset: { parameters: [ptr], result: "i32" },
  // XXH_errorcode XXH3_64bits_update(XXH3_state_t *state, const void *input, size_t length);
  XXH3_64bits_update: { parameters: [ptr, ptr, size_t], result: "i32" },
  // XXH_errorcode XXH3_64bits_update(XXH3_state_t *state, const void *input, size_t length);  (on a pool thread)
  XXH3_64bits_update_nb: {
    name: "XXH3_64bits_update",
    parameters: [ptr, ptr, size_t],
    result: "i32",
    nonblocking: true,
  },
  // XXH64_hash_t XXH3_64bits_digest(const XXH3_state_t *state);
  XXH3_64bits_digest: { parameters: [ptr], result: ulong },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libxxhash symbols, opened on first use. */
export const xxhash: Deno.DynamicLibrary<typeof symbols>["symbols"] = lazySystemLibrary(
  "libxxhash.so.0",
  "CRYO_LIBXXHASH",
  symbols,
  "Install libxxhash0 (apt-get install libxxhash0)",
);
