/**
 * Restore (roll back) a live process to an image: verify the image (every record decoded), freeze the process,
 * check that every image region is still mapped with the same protection (a region that grew is fine; one that
 * shrank or vanished is a refusal listing them) and that its threads are those of the checkpoint, then write
 * registers and memory back all or nothing (lib/restore_commit.ts: held by a stop that outlives cryo, every
 * overwritten byte journaled, undone on any failure or abort), thaw. A key means the image must be encrypted.
 *
 * @module
 */

import { freeze } from "../kernel/freeze.ts";
import { CryoError } from "../errors.ts";
import { pendingRecovery, readMarker } from "./recovery.ts";
import {
  commitRestore,
  matchThreads,
  refuseThreadChanges,
  type RestoreResult,
  threadChanges,
} from "./restore_commit.ts";
import { requireSealed } from "../image/sealing.ts";
import { decodeThreads, register, type ThreadState } from "../kernel/threads.ts";
import type { Codec } from "../codecs/codec.ts";
import { MemoryLoader } from "../image/loader.ts";
import { checkBudget } from "../image/budget.ts";
import { checkIdentity, planRestoreLayout } from "./restore_plan.ts";
import { describeChange } from "../kernel/layout_fix.ts";
import { PTHREAD_TID_OFFSET, recreatable, whyNotRecreatable } from "../kernel/threads_fix.ts";
import { decodeKernelState, describeOffsetChange, readKernelState } from "../kernel/kernel_state.ts";
import {
  describeDescriptorChange,
  NO_DESCRIPTOR_FIXES,
  planDescriptorFixes,
} from "../kernel/descriptors_fix.ts";
import { KIND, REQUIRED } from "../image/format.ts";
import { openInput, verifyStream } from "../image/stream.ts";
import { restoreStream } from "./restore_stream.ts";
import type { SealKey } from "../codecs/keys.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";
import { verifyWithProgress } from "./inspect.ts";
import type { ProcessTracking } from "../kernel/tracking.ts";
import {
  decodeTrackingSection,
  readTrackingMark,
  TRACKING_SECTION,
  type TrackingMark,
  trackingSince,
  writeTrackingMark,
} from "./tracked.ts";
import { adoptTracking } from "../kernel/tracking.ts";
import { isUserfaultfd } from "../kernel/uffd.ts";
import { loadWritten } from "./restore_written.ts";
import { openChain } from "./chain_restore.ts";
import { imageDigest } from "../image/chain.ts";
import type { HeldImage } from "./held_image.ts";

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
  /**
   * Empty the image's large private regions before writing them, their old pages moved aside whole for the undo
   * (default true): only the image's data is written, and nothing is read, compared or journaled there.
   * `false` journals every page instead (each is read and compared, and only those that changed are saved and
   * written), which costs less only when few pages differ. Not done in a process that holds a userfaultfd (a
   * region moved with `mremap` would lose its registration).
   */
  moveAside?: boolean;
  /** Codecs the image may use beyond raw. */
  codecs?: readonly Codec[];
  /** The key of an encrypted image (`keyFromFile`/`keyFromEnv`). */
  key?: SealKey;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes restored. */
  progress?: Progress;
  /** Abort: before the write phase nothing is done; during it, everything written is undone. */
  signal?: AbortSignal;
  /** Bytes of buffers the restore may hold at once, whatever the image's size (lib/image/budget.ts; 64 MiB). */
  memoryBudget?: number;
  /**
   * Go ahead although threads were born or ended since the checkpoint (default false: refused, because a
   * thread born since runs on memory rolled back to before it existed). Registers go back into the threads
   * that still exist; the others are reported in the result.
   */
  allowThreadChanges?: boolean;
  /**
   * End the threads born since the checkpoint (an injected `exit` on each) instead of refusing them (default
   * true). A thread born since would otherwise run on memory rolled back to before it existed. Ending a thread
   * cannot be undone, so it is the write phase's last step, after everything that can fail; the stacks of the
   * ended threads stay mapped (unused).
   */
  endBornThreads?: boolean;
  /**
   * Restore into a process that is not the one the image was taken from (another pid, start time, boot or
   * executable), e.g. a fresh process of the same program (default false: refused). The layout is made to
   * follow the image all the same; what the program keeps outside its memory (descriptors, sockets, kernel
   * objects) is that process's own.
   */
  force?: boolean;
  /**
   * Finish a restore of `pid` that an earlier cryo left when it was killed (the target was left stopped): the
   * image is the one that restore recorded (`path` may be empty or the same path). The target is resumed.
   */
  recover?: boolean;
  /**
   * Write back only the pages written since the image was taken (lib/ops/restore_written.ts): `"auto"` (the
   * default) when the image records the tracking it was taken at and the process still holds that arming
   * (lib/ops/tracked.ts), a {@link ProcessTracking} armed when the image was taken (as `snapshot()` keeps), or
   * `false` for the full path. When the fast path cannot be used the full one is taken, and the result's
   * `tracking.reason` says why; either way the tracking is armed again before the target runs.
   */
  tracking?: "auto" | ProcessTracking | false;
  /**
   * The image was verified before by this process and has not changed since ({@link imageStamp} of it then):
   * when the file's stamp is still the same, the full verification is not run again (`snapshot()` verifies its
   * image once, then rolls back many times).
   */
  verified?: ImageStamp;
  /**
   * The image, held open and verified once ({@link HeldImage}, as `snapshot()` keeps it): used instead of
   * opening and verifying `path` again while {@link HeldImage.stands} for it (the same file, unchanged); else
   * ignored.
   */
  held?: HeldImage;
}

/** What identifies an image file's contents cheaply: device, inode, size, mtime and the footer checksum. */
export interface ImageStamp {
  /** `dev:ino:size:mtime:digest`. */
  readonly stamp: string;
}

/**
 * The stamp of the image at `path` (see {@link ImageStamp}).
 *
 * @param path The image.
 * @returns Its stamp.
 */
export function imageStamp(path: string): ImageStamp {
  const st = Deno.statSync(path);
  return { stamp: `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}:${imageDigest(path).digest}` };
}

/** Whether `path` still has the stamp it had when it was verified. */
function verifiedBefore(path: string, stamp: ImageStamp | undefined): boolean {
  if (!stamp) return false;
  try {
    return imageStamp(path).stamp === stamp.stamp;
  } catch {
    return false;
  }
}

/**
 * Roll process `pid` back to the image at `path`.
 *
 * @param pid The process (not this one).
 * @param path The image.
 * @param opts Registers, dry run, codecs, progress, abort.
 * @returns What was written.
 * @throws {ImageError} When the image does not verify (nothing written).
 * @throws {KeyError} When a key is given and the image is not encrypted, or the other way round (nothing
 *   written).
 * @throws {IdentityMismatchError} When the process is not the image's (another pid, start time, boot or
 *   executable) and `force` is not set (nothing written).
 * @throws {LayoutMismatchError} When a region of the image cannot be recreated (a shared or device mapping, a
 *   deleted file), or its threads changed (nothing written).
 * @throws {RestoreIncompleteError} When the write failed and could not be undone: the target is left stopped
 *   for `recover`.
 */
export async function restore(pid: number, path: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const started = performance.now();
  const progress = opts.progress ?? silentProgress;
  if (opts.memoryBudget !== undefined) checkBudget(opts.memoryBudget); // before anything is frozen
  if (opts.recover) {
    const marker = readMarker(pid);
    if (!marker) {
      throw new CryoError(`Cannot recover pid ${pid}: no interrupted restore of this process is recorded`);
    }
    if (path && path !== marker.image) {
      throw new CryoError(
        `Cannot recover pid ${pid} from ${path}: the interrupted restore was from ${marker.image}`,
      );
    }
    path = marker.image;
  }
  if (path === "-") {
    if (opts.dryRun) throw new TypeError("Cannot dry-run a restore from a stream: it can be read only once");
    if (opts.recover) throw new CryoError(`Cannot recover pid ${pid}: the interrupted restore read a stream`);
    return await restoreStream(pid, path, opts);
  }
  const held = opts.held?.stands(path) ? opts.held : undefined; // verified once, unchanged since
  if (!held && !opts.dryRun && sealedWhole((await MemoryLoader.head(path)).header)) {
    // Authenticated, decrypted and checked in full by the stream reader before anything is written (each frame,
    // record and padding byte, the tail): opening the file first walked every record once more (524,288
    // records: 111 -> N MiB).
    requireSealed(true, opts.key, path);
    return await restoreStream(pid, path, opts);
  }
  using chain = held ? undefined : await openChain(path, opts.codecs); // an incremental image: its chain, flattened
  using opened = chain ? await MemoryLoader.open(chain.path, { codecs: opts.codecs }) : undefined;
  const loader = held?.loader ?? opened!;
  if (chain && !verifiedBefore(chain.path, opts.verified)) await verifyWithProgress(loader, progress);
  requireSealed(loader.encrypted, opts.key, path);
  if (loader.encrypted) {
    // Encrypted records are authenticated and decrypted by the stream reader (the whole file first).
    if (!opts.dryRun) return await restoreStream(pid, path, opts);
    await verifyStream(await openInput(path), { key: opts.key, codecs: opts.codecs, path });
  }
  opts.signal?.throwIfAborted();
  const threadsBytes = loader.section("threads");
  let recorded = threadsBytes ? decodeThreads(threadsBytes, path) : [];
  const { dataBytes, holeBytes } = loader.index.absolute;
  const recovering = pendingRecovery(pid); // asked before the freeze, which hides the stopped state
  startPhase(progress, "freeze");
  const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  let fast: ReturnType<typeof pickTracking> | undefined;
  progress.stopped?.(true, frozenAt);
  try {
    const identity = checkIdentity(pid, path, loader.source, loader.section("identity"), opts.force);
    if (identity.length) recorded = matchThreads(recorded, frozen.tids);
    const threads = opts.registers === false ? [] : recorded;
    const changes = threadChanges(recorded, frozen.tids);
    const ending = opts.endBornThreads !== false && threadsBytes && opts.registers !== false
      ? changes.born
      : [];
    const layout = planRestoreLayout(pid, path, loader.regions, loader.section("layout"));
    // Threads that ended since are created again (with their registers); threads born since are refused.
    const again = opts.registers === false
      ? []
      : recorded.filter((t) => changes.gone.includes(t.tid) && recreatable(t));
    if (threadsBytes && !opts.allowThreadChanges) {
      refuseThreadChanges(pid, {
        born: changes.born.filter((t) => !ending.includes(t)),
        gone: changes.gone.filter((t) => !again.some((a) => a.tid === t)),
      }, (tid) => {
        const t = recorded.find((r) => r.tid === tid);
        return t ? whyNotRecreatable(t) : null;
      });
    }
    const kernelBytes = loader.section("kernel");
    const fixes = kernelBytes && !identity.length
      ? planDescriptorFixes(decodeKernelState(kernelBytes, path), readKernelState(pid))
      : NO_DESCRIPTOR_FIXES; // a forced restore into another process: its descriptors are its own
    const recreate: { state: ThreadState; clearTid?: bigint }[] = [];
    for (const t of again) recreate.push({ state: t, clearTid: await clearTidOf(loader, t) });
    const result: RestoreResult = {
      pid,
      path,
      dryRun: opts.dryRun ?? false,
      regions: loader.regions.filter((g) => !g.relocatable).length,
      dataBytes,
      holeBytes,
      threadsRestored: 0,
      threadsGone: changes.gone,
      threadsBorn: changes.born,
      threadsRecreated: again.map((t) => t.tid),
      threadsEnded: opts.dryRun ? ending : [],
      identity,
      layoutChanges: layout.changes.map(describeChange),
      offsetChanges: fixes.offsets.map(describeOffsetChange),
      descriptorChanges: fixes.reopen.map(describeDescriptorChange),
      journalBytes: 0,
      asideBytes: 0,
      recovered: false,
      stoppedMs: 0,
      totalMs: 0,
    };
    const trackingSection = loader.section(TRACKING_SECTION);
    const picked = fast = pickTracking(pid, opts, trackingSection, path);
    if ("reason" in picked && opts.tracking !== false && (opts.tracking || trackingSection)) {
      result.tracking = { used: false, reason: picked.reason };
    }
    if (!opts.dryRun) {
      // The loader batches its writes: the phase is shown as a step with its elapsed time, not a percentage.
      startPhase(progress, "write");
      const done = await commitRestore(
        frozen,
        path,
        recovering,
        async (ctx) => {
          ctx.setThreads(threads); // first: a register set the kernel refuses fails before any memory is written
          ctx.fixLayout(layout, layout.scratchAt);
          ctx.recreateThreads(recreate); // their stacks are mapped again by now
          ctx.reopenDescriptors(fixes.reopen); // before the offsets: a copy shares its partner's
          ctx.putOffsets(fixes.offsets);
          if ("tracking" in picked) {
            const w = await loadWritten(loader, ctx.target, frozen, picked.tracking);
            result.tracking = { used: true, writtenBytes: w.writtenBytes, releasedBytes: w.releasedBytes };
            progress.advance(w.copiedBytes);
            ctx.endAfter(ending);
            return { copiedBytes: w.copiedBytes, mappedBytes: 0, holeBytes: w.holeBytes, mappedRegions: 0 };
          }
          if (opts.moveAside !== false) result.asideBytes = ctx.moveAside(layout.aside, layout.asideAt);
          const summary = await loader.load(ctx.target);
          progress.advance(summary.copiedBytes); // written (the write phase is shown uncounted: these are its bytes)
          if ("rearm" in picked && picked.rearm && picked.mark) {
            picked.rearm.arm(); // the memory is the image's again: so are the written bits (still frozen)
            writeTrackingMark(pid, picked.mark);
          }
          ctx.endAfter(ending); // last: rolled-back memory does not know them, and ending cannot be undone
          return summary;
        },
        opts.signal,
        progress,
        { memoryBudget: opts.memoryBudget },
      );
      result.holeBytes = done.value.holeBytes;
      result.threadsRestored = done.threadsRestored;
      result.threadsEnded = done.threadsEnded;
      result.journalBytes = done.journalBytes;
      result.recovered = done.recovered;
    }
    frozen.thaw();
    progress.stopped?.(false);
    result.stoppedMs = performance.now() - frozenAt;
    result.totalMs = performance.now() - started;
    return result;
  } finally {
    frozen.thaw();
    progress.stopped?.(false);
    if (fast && "tracking" in fast && fast.own) fast.tracking.close();
    if (fast && "rearm" in fast) fast.rearm?.close();
    progress.done();
  }
}

/**
 * The tracking a rollback may trust (its written bits are those since the image), or why not; with the
 * reason, a tracking to arm again after a full write (the process holds one for this image's arming).
 */
function pickTracking(
  pid: number,
  opts: RestoreOptions,
  section: Uint8Array | undefined,
  path: string,
):
  | { tracking: ProcessTracking; own: boolean }
  | { reason: string; rearm?: ProcessTracking; mark?: TrackingMark } {
  if (opts.tracking === false) return { reason: "not asked" };
  if (opts.tracking && opts.tracking !== "auto") {
    if (opts.tracking.closed) return { reason: "the tracking was closed" };
    return { tracking: opts.tracking, own: false };
  }
  const found = trackingSince(pid, section, path);
  if ("tracking" in found) return { tracking: found.tracking, own: true };
  const mark = readTrackingMark(pid);
  if (!section || !mark || !isUserfaultfd(pid, mark.fd)) return found;
  const want = decodeTrackingSection(section, path);
  if (want.fd !== mark.fd) return found;
  // The process holds the tracking, armed for another image: after a full write it is this image's again.
  const rearm = adoptTracking(pid, mark.fd);
  return { reason: found.reason, rearm, mark: want };
}

/** Whether the header is an encrypted full image's (an encrypted incremental one is refused by `openChain`). */
function sealedWhole(header: { requiredFeatures: bigint }): boolean {
  const f = header.requiredFeatures;
  return (f & REQUIRED.ENCRYPTED) !== 0n && (f & REQUIRED.PARENT) === 0n;
}

/**
 * Where the kernel should clear thread `t`'s id when it exits (glibc's `pthread.tid`): the TCB (fs_base) plus
 * glibc's offset, used only when the image holds `t`'s id there (another libc, or none: no clear-tid).
 */
async function clearTidOf(loader: MemoryLoader, t: ThreadState): Promise<bigint | undefined> {
  const at = register(t, "fs_base") + PTHREAD_TID_OFFSET;
  const r = loader.findRecord(at);
  if (!r || r.kind !== KIND.DATA || at + 4n > r.address + BigInt(r.length)) return undefined;
  const bytes = await loader.readRecord(r);
  const word = new DataView(bytes.buffer, bytes.byteOffset + Number(at - r.address), 4).getInt32(0, true);
  return word === t.tid ? at : undefined;
}
