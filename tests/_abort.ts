/**
 * Restore options that interrupt a restore once its memory is written, for tests of its undo.
 *
 * @module
 */

import type { Progress } from "../lib/ops/progress.ts";

/** Restore options whose progress report (made once the memory is written) aborts the restore. */
export function abortAfterWriting(): { signal: AbortSignal; progress: Progress } {
  const controller = new AbortController();
  const progress: Progress = {
    total() {},
    advance() {
      controller.abort(new Error("interrupted in the test"));
    },
    done() {},
  };
  return { signal: controller.signal, progress };
}
