/**
 * Restore a live process from a streamed or encrypted image: `cryo restore --pid P -` (stdin) and restores of
 * encrypted image files. Like {@link restore}, the process is frozen, its layout is checked against the
 * image's region table before anything is written, registers are put back and it is thawed on every path.
 *
 * From a stream, each chunk is verified (and, when encrypted, authenticated) before it is written, but a
 * stream cannot be read twice: a stream that turns out truncated or damaged part-way leaves the chunks before
 * the damage written (and the process thawed, its holes not zeroed, registers not restored), and the call
 * throws. From a file, the whole image is verified first, so nothing is written unless all of it is good.
 *
 * @module
 */

import { freeze } from "./freeze.ts";
import { decodeThreads } from "./threads.ts";
import type { Codec } from "./codec.ts";
import type { SealKey } from "./seal.ts";
import { pidTarget } from "./image/targets.ts";
import { loadStream, openInput, verifyStream } from "./image/stream.ts";
import type { RestoreResult } from "./restore.ts";
import { type Progress, silentProgress } from "./cli/progress.ts";

/** Options of {@link restoreStream}. */
export interface StreamRestoreOptions {
  /** The key of an encrypted image (`keyFromFile`/`keyFromEnv`). */
  key?: SealKey;
  /** Codecs beyond the built-in raw, zstd and lz4. */
  codecs?: readonly Codec[];
  /** Put the recorded registers back into threads that still exist (default true). */
  registers?: boolean;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes restored. */
  progress?: Progress;
  /** Abort: before the freeze nothing is done; during a stream, the next chunk is not written. */
  signal?: AbortSignal;
}

/**
 * Roll process `pid` back to the image read from `input`: a file (verified in full first) or `"-"` (stdin,
 * verified chunk by chunk).
 *
 * @param pid The process (not this one).
 * @param input The image file, or `"-"` for stdin.
 * @param opts Key, codecs, registers, progress, abort.
 * @returns What was written.
 * @throws {KeyError} When the image is encrypted and the key is missing or wrong (nothing written).
 * @throws {LayoutMismatchError} When the process's regions do not match (nothing written).
 * @throws {ImageError} When the image is damaged or truncated (from a file: nothing written; from a stream:
 *   nothing after the last verified chunk).
 */
export async function restoreStream(
  pid: number,
  input: string,
  opts: StreamRestoreOptions = {},
): Promise<RestoreResult> {
  const started = performance.now();
  const progress = opts.progress ?? silentProgress;
  const streamOpts = { key: opts.key, codecs: opts.codecs, path: input };
  if (input !== "-") await verifyStream(await openInput(input), streamOpts);
  opts.signal?.throwIfAborted();
  const stream = await openInput(input);
  const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  try {
    const s = await loadStream(stream, pidTarget(pid), {
      ...streamOpts,
      onChunk: (r) => {
        progress.advance(r.length);
        opts.signal?.throwIfAborted();
      },
    });
    const threadsBytes = opts.registers === false ? undefined : s.sectionBytes.get("threads");
    const threads = threadsBytes ? decodeThreads(threadsBytes, input) : [];
    const gone = threads.filter((t) => !frozen.tids.includes(t.tid)).map((t) => t.tid);
    let threadsRestored = 0;
    for (const t of threads) {
      if (gone.includes(t.tid)) continue;
      frozen.setRegisters(t.tid, t);
      threadsRestored++;
    }
    frozen.thaw();
    const stoppedMs = performance.now() - frozenAt;
    return {
      pid,
      path: input,
      dryRun: false,
      regions: s.regions.filter((g) => !g.relocatable).length,
      dataBytes: s.dataBytes,
      holeBytes: s.holeBytes,
      threadsRestored,
      threadsGone: gone,
      stoppedMs,
      totalMs: performance.now() - started,
    };
  } finally {
    frozen.thaw();
    progress.done();
  }
}
