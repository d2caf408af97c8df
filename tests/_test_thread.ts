/**
 * The test-thread fixture (`tests/fixtures/test_thread.c`, built into `ffi/build/libcryo_test_thread.so` by
 * `deno task build`): a native thread that registers with a helper safepoint, recurses deep, parks once and
 * returns a checkable fold of its stack. It is linked against the local helper build, so it is not part of
 * the shipped library. Loaded once, on first use.
 *
 * @module
 */

import { int, long, ptr, uint } from "../ffi/types.ts";

const symbols = {
  // void *cryo_test_thread_start(void *sp, int depth, uint32_t seed);  (NULL on failure)
  cryo_test_thread_start: { parameters: [ptr, int, uint], result: ptr },
  // long cryo_test_thread_join(void *handle, long timeout_ns);  (the result, or -errno; blocks: on a pool thread)
  cryo_test_thread_join: { parameters: [ptr, long], result: long, nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

/** The fixture's symbols. */
export type TestThreadSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

const path = new URL("../ffi/build/libcryo_test_thread.so", import.meta.url).pathname;
let loaded: TestThreadSymbols | undefined;

/**
 * The test-thread fixture's symbols, loading the library on first call.
 *
 * @throws {Error} When it cannot be loaded (not built: run `deno task build`).
 */
export function testThread(): TestThreadSymbols {
  if (loaded) return loaded;
  try {
    loaded = Deno.dlopen(path, symbols).symbols;
  } catch (e) {
    throw new Error(`Cannot load ${path}: ${(e as Error).message.split("\n")[0]}; run \`deno task build\``);
  }
  return loaded;
}
