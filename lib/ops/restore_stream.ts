/**
 * Restore a live process from a streamed or encrypted image: `cryo restore --pid P -` (stdin) and restores of
 * encrypted image files. Like {@link restore}, the process is frozen, its layout is checked against the
 * image's region table before anything is written, and the write phase is all or nothing
 * (lib/ops/restore_commit.ts): every byte overwritten is journaled first and put back on any failure.
 *
 * From a file, the whole image is verified (every chunk authenticated and decoded) first, its threads checked
 * against the target's and registers put back before memory. From a stream, which can be read only once, each
 * chunk is verified before it is written and the journal is what makes it all or nothing: a stream that turns
 * out truncated or damaged part-way, a threads section that does not fit the target or the kernel refuses,
 * or an abort, undoes every chunk written so far. Threads follow the image as in {@link restore}: those of the
 * checkpoint that ended since are created again (lib/kernel/threads_fix.ts) once the memory is written, those
 * born since are ended last; file offsets are put back. The journal costs one read of the target's overwritten
 * bytes and one write of them to an unlinked temporary file (see lib/kernel/journal.ts).
 *
 * @module
 */

import { freeze } from "../kernel/freeze.ts";
import { awaitHeader, byteStream } from "./stream_head.ts";
import { pendingRecovery } from "./recovery.ts";
import { decodeThreads, type ThreadState } from "../kernel/threads.ts";
import type { Codec } from "../codecs/codec.ts";
import type { SealKey } from "../codecs/keys.ts";
import { loadStream, openInput, type StreamSummary, verifyStream } from "../image/stream.ts";
import { checkIdentity, planRestoreLayout } from "./restore_plan.ts";
import { describeChange } from "../kernel/layout_fix.ts";
import { clearTidInTarget, recreatable, whyNotRecreatable } from "../kernel/threads_fix.ts";
import { decodeKernelState, describeOffsetChange, readKernelState } from "../kernel/kernel_state.ts";
import {
  describeDescriptorChange,
  NO_DESCRIPTOR_FIXES,
  planDescriptorFixes,
} from "../kernel/descriptors_fix.ts";
import {
  commitRestore,
  matchThreads,
  refuseThreadChanges,
  type RestoreResult,
  threadChanges,
} from "./restore_commit.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";

/** Options of {@link restoreStream}. */
export interface StreamRestoreOptions {
  /** The key of an encrypted image (`keyFromFile`/`keyFromEnv`); given, the image must be encrypted. */
  key?: SealKey;
  /** Codecs beyond the built-in raw, zstd and lz4. */
  codecs?: readonly Codec[];
  /** Put the recorded registers back into threads that still exist (default true). */
  registers?: boolean;
  /**
   * Go ahead although threads of the checkpoint have ended since and cannot be created again (default false:
   * refused).
   */
  allowThreadChanges?: boolean;
  /** End the threads born since the checkpoint (default true), as `restore()` does; false refuses them. */
  endBornThreads?: boolean;
  /** Move the old pages of large private regions aside instead of journaling them (default true), as `restore()` does. */
  moveAside?: boolean;
  /** Restore into a process that is not the image's (default false: refused). */
  force?: boolean;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes restored. */
  progress?: Progress;
  /** Bytes of buffers the restore may hold at once (lib/image/budget.ts; default 64 MiB). */
  memoryBudget?: number;
  /** Abort: before the freeze nothing is done; during the write, everything written is undone. */
  signal?: AbortSignal;
}

/**
 * Roll process `pid` back to the image read from `input`: a file (verified in full first) or `"-"` (stdin,
 * verified chunk by chunk, journaled so that a failure part-way undoes it).
 *
 * @param pid The process (not this one).
 * @param input The image file, or `"-"` for stdin.
 * @param opts Key, codecs, registers, progress, abort.
 * @returns What was written.
 * @throws {KeyError} When the image is encrypted and the key is missing or wrong, or a key was given for an
 *   image that is not encrypted (nothing written).
 * @throws {LayoutMismatchError} When the process's regions or threads do not match (nothing written; from a
 *   stream, a thread mismatch is found at its end and everything written is undone).
 * @throws {ImageError} When the image is damaged or truncated (nothing is left written).
 * @throws {RestoreIncompleteError} When undoing failed too: the target is left stopped for recovery.
 */
export async function restoreStream(
  pid: number,
  input: string,
  opts: StreamRestoreOptions = {},
): Promise<RestoreResult> {
  const started = performance.now();
  const progress = opts.progress ?? silentProgress;
  const streamOpts = { key: opts.key, codecs: opts.codecs, path: input };
  let known: ThreadState[] | undefined; // from a file's verification pass, before anything is written
  let verified: StreamSummary | undefined;
  if (input !== "-") {
    // Reported to a sink with phases only: a sink with one bar counts the write (see verifyWithProgress).
    if (progress.phase) startPhase(progress, "verify", (await Deno.stat(input)).size);
    verified = await verifyStream(await openInput(input), {
      ...streamOpts,
      onChunk: progress.phase ? (r) => progress.advance(r.storedLength) : undefined,
    }); // a key means it must be sealed
    const bytes = verified.sectionBytes.get("threads");
    known = bytes ? decodeThreads(bytes, input) : [];
  }
  opts.signal?.throwIfAborted();
  // An abort must not wait for the next byte of a stream that may never come: it errors the stream.
  let opened = await openInput(input);
  // A stream: the target is frozen only once the header has arrived (a slow writer must not keep it stopped).
  // Either way read through BYOB reads into the reader's buffers, and errored at once by an abort.
  if (input === "-") opened = await awaitHeader(opened, input, opts.signal);
  else opened = byteStream(opened, undefined, opts.signal);
  const stream = opened;
  const recovering = pendingRecovery(pid); // asked before the freeze, which hides the stopped state
  startPhase(progress, "freeze");
  const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  progress.stopped?.(true, frozenAt);
  startPhase(progress, "write", verified?.dataBytes);
  const registers = opts.registers !== false;
  // Threads of the checkpoint that ended since are created again when they can be, threads born since are
  // ended (as restore() does); anything else is refused, unless allowThreadChanges.
  const checkThreads = (threads: readonly ThreadState[], present: boolean) => {
    const changes = threadChanges(threads, frozen.tids);
    const again = registers && present
      ? threads.filter((t) => changes.gone.includes(t.tid) && recreatable(t))
      : [];
    const ending = registers && present && opts.endBornThreads !== false ? changes.born : [];
    if (present && !opts.allowThreadChanges) {
      refuseThreadChanges(pid, {
        gone: changes.gone.filter((t) => !again.some((a) => a.tid === t)),
        born: changes.born.filter((t) => !ending.includes(t)),
      }, (tid) => {
        const t = threads.find((r) => r.tid === tid);
        return t ? whyNotRecreatable(t) : null;
      });
    }
    return { ...changes, again, ending };
  };
  try {
    let identity: string[] = [];
    let layoutChanges: string[] = [];
    let offsetChanges: string[] = [];
    let descriptorChanges: string[] = [];
    let asideBytes = 0;
    if (verified) {
      const id = verified.sectionBytes.get("identity");
      identity = checkIdentity(pid, input, verified.source, id, opts.force);
      if (identity.length && known) known = matchThreads(known, frozen.tids);
    }
    if (known) checkThreads(known, known.length > 0);
    const done = await commitRestore(
      frozen,
      input,
      recovering,
      async (ctx) => {
        const { target, setThreads, fixLayout, endAfter, recreateThreads, putOffsets, reopenDescriptors } =
          ctx;
        if (known && registers) setThreads(known); // first: refused registers fail before memory
        const s = await loadStream(stream, target, {
          ...streamOpts,
          onHeader: (source, regions) => {
            if (!verified) identity = checkIdentity(pid, input, source, undefined, opts.force);
            // From a stream the `layout` section comes last: nothing is unmapped as born since.
            const layout = planRestoreLayout(pid, input, regions, verified?.sectionBytes.get("layout"));
            fixLayout(layout, layout.scratchAt);
            layoutChanges = layout.changes.map(describeChange);
            if (opts.moveAside !== false) asideBytes = ctx.moveAside(layout.aside, layout.asideAt);
          },
          onChunk: (r) => {
            progress.advance(r.length);
            opts.signal?.throwIfAborted();
          },
        });
        const bytes = s.sectionBytes.get("threads");
        const threads = known ?? (bytes ? decodeThreads(bytes, input) : []);
        const changes = checkThreads(threads, bytes !== undefined);
        const id = s.sectionBytes.get("identity");
        if (!verified && id) identity = checkIdentity(pid, input, s.source, id, opts.force);
        if (!known && registers) setThreads(threads);
        // Memory holds the image's bytes now: glibc's pthread.tid of each thread to create again is read there.
        recreateThreads(changes.again.map((t) => ({ state: t, clearTid: clearTidInTarget(pid, t) })));
        const kernel = verified?.sectionBytes.get("kernel") ?? s.sectionBytes.get("kernel");
        const fixes = kernel && !identity.length
          ? planDescriptorFixes(decodeKernelState(kernel, input), readKernelState(pid))
          : NO_DESCRIPTOR_FIXES;
        reopenDescriptors(fixes.reopen);
        putOffsets(fixes.offsets);
        descriptorChanges = fixes.reopen.map(describeDescriptorChange);
        offsetChanges = fixes.offsets.map(describeOffsetChange);
        if (threads.length) endAfter(changes.ending); // last: ending a thread cannot be undone
        return { s, changes };
      },
      opts.signal,
      progress,
      { memoryBudget: opts.memoryBudget },
    );
    frozen.thaw();
    progress.stopped?.(false);
    const { s, changes } = done.value;
    return {
      pid,
      path: input,
      dryRun: false,
      regions: s.regions.filter((g) => !g.relocatable).length,
      dataBytes: s.dataBytes,
      holeBytes: s.holeBytes,
      threadsRestored: done.threadsRestored,
      threadsGone: changes.gone,
      threadsBorn: changes.born,
      threadsRecreated: changes.again.map((t) => t.tid),
      threadsEnded: done.threadsEnded,
      identity,
      layoutChanges,
      offsetChanges,
      descriptorChanges,
      journalBytes: done.journalBytes,
      asideBytes,
      recovered: done.recovered,
      stoppedMs: performance.now() - frozenAt,
      totalMs: performance.now() - started,
    };
  } finally {
    frozen.thaw();
    progress.stopped?.(false);
    progress.done();
  }
}
