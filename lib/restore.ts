/**
 * Restore (roll back) a live process to an image: verify the image, freeze the process, check that every image
 * region is still mapped with the same protection (a region that grew is fine; one that shrank or vanished is
 * a refusal listing them), write the memory back, put the threads' registers back, thaw. Nothing is written
 * into the process unless the image verified and the layout matched; the process is thawed on every path.
 *
 * @module
 */

import { freeze } from "./freeze.ts";
import { decodeThreads } from "./threads.ts";
import type { Codec } from "./codec.ts";
import { MemoryLoader } from "./image/loader.ts";
import { pidTarget } from "./image/targets.ts";
import { KIND } from "./image/layout.ts";
import { openInput, verifyStream } from "./image/stream.ts";
import { restoreStream } from "./restore_stream.ts";
import type { SealKey } from "./seal.ts";
import { type Progress, silentProgress } from "./cli/progress.ts";

/** Options of {@link restore}. */
export interface RestoreOptions {
  /**
   * Put the recorded registers back into threads that still exist (default true). Without them a thread resumes
   * with its current registers on memory (its stack included) rolled back to the checkpoint: only safe when
   * every thread is where it was then, or the image holds none of their stacks.
   */
  registers?: boolean;
  /** Verify and check the layout, report what would be written, write nothing (default false). */
  dryRun?: boolean;
  /** Codecs the image may use beyond raw. */
  codecs?: readonly Codec[];
  /** The key of an encrypted image (`keyFromFile`/`keyFromEnv`). */
  key?: SealKey;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes restored. */
  progress?: Progress;
  /** Abort before anything is written (the target is thawed). */
  signal?: AbortSignal;
}

/** What {@link restore} did (or, with `dryRun`, would do). */
export interface RestoreResult {
  /** The process. */
  pid: number;
  /** The image. */
  path: string;
  /** Whether this was a dry run (nothing written). */
  dryRun: boolean;
  /** Image regions written into. */
  regions: number;
  /** Bytes of data written back. */
  dataBytes: number;
  /** Bytes of holes made zero (pages already zero are not written). */
  holeBytes: number;
  /** Threads whose registers were put back. */
  threadsRestored: number;
  /** Thread ids recorded in the image that no longer exist (their registers were not restored). */
  threadsGone: number[];
  /** How long the target was stopped, in milliseconds (0 for a dry run that did not freeze). */
  stoppedMs: number;
  /** How long the whole restore took, in milliseconds. */
  totalMs: number;
}

/**
 * Roll process `pid` back to the image at `path`.
 *
 * @param pid The process (not this one).
 * @param path The image.
 * @param opts Registers, dry run, codecs, progress, abort.
 * @returns What was written.
 * @throws {ImageError} When the image does not verify (nothing written).
 * @throws {LayoutMismatchError} When the process's regions no longer match (nothing written).
 */
export async function restore(pid: number, path: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const started = performance.now();
  const progress = opts.progress ?? silentProgress;
  if (path === "-") {
    if (opts.dryRun) throw new TypeError("Cannot dry-run a restore from a stream: it can be read only once");
    return await restoreStream(pid, path, opts);
  }
  using loader = await MemoryLoader.open(path, { codecs: opts.codecs });
  await loader.verify();
  if (loader.encrypted) {
    // Encrypted records are authenticated and decrypted by the stream reader (the whole file first).
    if (!opts.dryRun) return await restoreStream(pid, path, opts);
    await verifyStream(await openInput(path), { key: opts.key, codecs: opts.codecs, path });
  }
  opts.signal?.throwIfAborted();
  const target = pidTarget(pid);
  const threadsBytes = opts.registers === false ? undefined : loader.section("threads");
  const threads = threadsBytes ? decodeThreads(threadsBytes, path) : [];
  const absolute = loader.records.filter((r) => r.segment === 0);
  const dataBytes = absolute.reduce((n, r) => n + (r.kind === KIND.DATA ? r.length : 0), 0);
  const holeBytes = absolute.reduce((n, r) => n + (r.kind === KIND.HOLE ? r.length : 0), 0);
  const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  try {
    const plan = loader.checkTarget(target);
    const gone = threads.filter((t) => !frozen.tids.includes(t.tid)).map((t) => t.tid);
    const result: RestoreResult = {
      pid,
      path,
      dryRun: opts.dryRun ?? false,
      regions: plan.length,
      dataBytes,
      holeBytes,
      threadsRestored: 0,
      threadsGone: gone,
      stoppedMs: 0,
      totalMs: 0,
    };
    if (!opts.dryRun) {
      opts.signal?.throwIfAborted();
      progress.total(dataBytes);
      const summary = await loader.load(target);
      progress.advance(summary.copiedBytes);
      result.holeBytes = summary.holeBytes;
      for (const t of threads) {
        if (gone.includes(t.tid)) continue;
        frozen.setRegisters(t.tid, t);
        result.threadsRestored++;
      }
    }
    frozen.thaw();
    result.stoppedMs = performance.now() - frozenAt;
    result.totalMs = performance.now() - started;
    return result;
  } finally {
    frozen.thaw();
    progress.done();
  }
}
