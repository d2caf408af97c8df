/**
 * The helper library's C source, as text: every `ffi/helper/*.c` and `helper.h`, imported with the module so
 * that a copy of cryo run from a URL or from JSR carries (and Deno caches) what it needs to build its helper on
 * first use (`helper_build.ts`). `tests/ffi_test.ts` checks that this list is the folder's.
 *
 * @module
 */

import abi_c from "./helper/abi.c" with { type: "text" };
import diff_c from "./helper/diff.c" with { type: "text" };
import fault_server_c from "./helper/fault_server.c" with { type: "text" };
import freeze_c from "./helper/freeze.c" with { type: "text" };
import futex_c from "./helper/futex.c" with { type: "text" };
import gather_c from "./helper/gather.c" with { type: "text" };
import helper_h from "./helper/helper.h" with { type: "text" };
import hold_c from "./helper/hold.c" with { type: "text" };
import inject_c from "./helper/inject.c" with { type: "text" };
import live_c from "./helper/live.c" with { type: "text" };
import pread_c from "./helper/pread.c" with { type: "text" };
import rseq_c from "./helper/rseq.c" with { type: "text" };
import safepoint_c from "./helper/safepoint.c" with { type: "text" };
import save_write_c from "./helper/save_write.c" with { type: "text" };

/** The helper's source files by name (`freeze.c`, `helper.h`, …), sorted by name. */
export const HELPER_SOURCES: Readonly<Record<string, string>> = {
  "abi.c": abi_c,
  "diff.c": diff_c,
  "fault_server.c": fault_server_c,
  "freeze.c": freeze_c,
  "futex.c": futex_c,
  "gather.c": gather_c,
  "helper.h": helper_h,
  "hold.c": hold_c,
  "inject.c": inject_c,
  "live.c": live_c,
  "pread.c": pread_c,
  "rseq.c": rseq_c,
  "safepoint.c": safepoint_c,
  "save_write.c": save_write_c,
};
