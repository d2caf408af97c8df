/**
 * The write phase of a restore, all or nothing. Everything that can be checked has been checked before it
 * starts (the image verified and decoded, the layout and the thread set compared); what can still fail (a
 * register set the kernel refuses, a stream that breaks part-way, SIGINT or SIGTERM, a target that dies) is
 * undone:
 *
 * 1. the target, already frozen, is **held** by a pending SIGSTOP (`Frozen.hold`) and a marker names it and
 *    the image (lib/ops/recovery.ts): if cryo is killed from here on, the target stays stopped, never runs
 *    half-written, and `cryo restore --recover --pid P` finishes the restore;
 * 2. every byte and register set about to be overwritten is saved in the undo **journal** first
 *    (lib/kernel/journal.ts);
 * 3. on any failure the journal is played back, the hold taken back and the target thawed exactly as it was;
 *    on success the journal is dropped, the hold taken back and the target thawed.
 *
 * @module
 */

import type { Progress } from "./progress.ts";
import { LayoutMismatchError, RestoreIncompleteError } from "../errors.ts";
import type { Frozen } from "../kernel/freeze.ts";
import { RestoreJournal } from "../kernel/journal.ts";
import { removeMarker, writeMarker } from "./recovery.ts";
import { readThreadState, resumable, type RseqConfig, type ThreadState } from "../kernel/threads.ts";
import { inject, type Injector, SYS } from "../kernel/inject.ts";
import { type AppliedLayout, applyLayout, type LayoutPlan } from "../kernel/layout_fix.ts";
import { endThread, type RecreateOptions, recreateThread } from "../kernel/threads_fix.ts";
import { type LoadTarget, pidTarget } from "../image/targets.ts";
import { budgetShares } from "../image/budget.ts";
import type { OffsetChange } from "../kernel/kernel_state.ts";
import type { DescriptorChange } from "../kernel/descriptors_fix.ts";
import { libc } from "../../ffi/libc.ts";
import { F, MREMAP, O } from "../../ffi/constants.ts";
import { holdsUserfaultfd } from "../kernel/uffd.ts";
import { hex } from "../hex.ts";

const SIGCONT = 18;

/** What the thread set of a target looks like against an image's threads section. */
export interface ThreadChanges {
  /** Threads recorded in the image that no longer exist. */
  gone: number[];
  /** Threads of the target the image does not know (born since the checkpoint). */
  born: number[];
}

/**
 * Compare the image's threads with the frozen target's.
 *
 * @param threads The image's threads section, decoded.
 * @param tids The target's threads.
 * @returns What differs.
 */
export function threadChanges(threads: readonly ThreadState[], tids: readonly number[]): ThreadChanges {
  const recorded = new Set(threads.map((t) => t.tid));
  const live = new Set(tids);
  return {
    gone: threads.filter((t) => !live.has(t.tid)).map((t) => t.tid),
    born: tids.filter((t) => !recorded.has(t)),
  };
}

/**
 * The image's threads given to another process's (a forced restore into a fresh process of the same program):
 * by position, leader first, when both have as many threads; otherwise unchanged (and refused as changed).
 *
 * @param threads The image's threads section, decoded (leader first).
 * @param tids The target's threads (leader first).
 * @returns The threads with the target's tids.
 */
export function matchThreads(threads: readonly ThreadState[], tids: readonly number[]): ThreadState[] {
  if (threads.length !== tids.length) return [...threads];
  return threads.map((t, i) => ({ ...t, tid: tids[i] }));
}

/**
 * Refuse a rollback into a target whose threads of the checkpoint have ended: memory that outlived them still
 * counts on them (a runtime's pool waits for a worker that is not there, and the program hangs). Threads born
 * since are not refused: the restore ends them ({@link CommitContext.endAfter}).
 *
 * @param pid The target.
 * @param changes The difference ({@link threadChanges}).
 * @param why Why a thread of the checkpoint cannot be created again (lib/kernel/threads_fix.ts).
 * @throws {LayoutMismatchError} Listing each thread, unless nothing changed.
 */
export function refuseThreadChanges(
  pid: number,
  changes: ThreadChanges,
  why: (tid: number) => string | null = () => null,
): void {
  const differences = changes.gone.map((t) =>
    `thread ${t} of the checkpoint has ended and cannot be created again: ${
      why(t) ?? "the image does not record it"
    } (memory rolled back would still count on it)`
  );
  if (differences.length) throw new LayoutMismatchError(`pid ${pid}'s threads`, differences);
}

const RSEQ_FLAG_UNREGISTER = 1;

/**
 * Make thread `tid`'s rseq registration the one recorded at the checkpoint, by a `rseq(2)` run inside it: a
 * thread caught just after its birth had not registered yet, and resumed there it registers again, which the
 * kernel refuses while the later registration stands (glibc then aborts: "rseq registration failed"). The
 * change is journaled.
 */
function setRseq(
  frozen: Frozen,
  journal: RestoreJournal,
  tid: number,
  now: RseqConfig | null,
  want: RseqConfig | null,
): void {
  const have = now?.abiPointer ?? 0n, need = want?.abiPointer ?? 0n;
  if (have === need && (have === 0n || now!.abiSize === want!.abiSize)) return;
  const apply = (from: RseqConfig | null, to: RseqConfig | null) => {
    using inj = inject(frozen, { tid });
    if (from && from.abiPointer) {
      inj.syscall(SYS.rseq, from.abiPointer, from.abiSize, RSEQ_FLAG_UNREGISTER, from.signature);
    }
    if (to && to.abiPointer) inj.syscall(SYS.rseq, to.abiPointer, to.abiSize, 0, to.signature);
  };
  apply(now, want);
  journal.addUndo(() => apply(want, now));
}

/** What a restore did (or, with `dryRun`, would do). */
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
  /** Thread ids of the target born since the checkpoint: they were ended (see `threadsEnded`). */
  threadsBorn: number[];
  /** Thread ids ended by the restore (born since the checkpoint; with `registers: false`, none). */
  threadsEnded: number[];
  /** Thread ids of the image that had ended and were created again (with their recorded registers). */
  threadsRecreated: number[];
  /** How the target differs from the image's process (non-empty only with `force`). */
  identity: string[];
  /** The layout changes made (or, with `dryRun`, that would be made), one line each. */
  layoutChanges: string[];
  /** The file offsets put back (or, with `dryRun`, that would be), one line each. */
  offsetChanges: string[];
  /** The descriptors opened again (or, with `dryRun`, that would be), one line each. */
  descriptorChanges: string[];
  /** Bytes of the target saved in the undo journal before they were overwritten. */
  journalBytes: number;
  /** Bytes of regions whose old pages were moved aside whole instead (`RestoreOptions.moveAside`). */
  asideBytes: number;
  /** Whether this finished a restore that an earlier, killed cryo had left (the target was resumed). */
  recovered: boolean;
  /** How long the target was stopped, in milliseconds (0 for a dry run that did not freeze). */
  stoppedMs: number;
  /**
   * Whether only the pages written since the image was taken were written back (write tracking,
   * lib/ops/restore_written.ts), and if not, why the full path was taken. Absent when tracking was not asked.
   */
  tracking?: { used: boolean; reason?: string; writtenBytes?: number; releasedBytes?: number };
  /** How long the whole restore took, in milliseconds. */
  totalMs: number;
}

/** What {@link commitRestore} did. */
export interface CommitSummary<T> {
  /** The write function's result. */
  value: T;
  /** Threads whose registers were put back. */
  threadsRestored: number;
  /** Threads ended ({@link CommitContext.endAfter}). */
  threadsEnded: number[];
  /** Bytes the journal saved (what was overwritten). */
  journalBytes: number;
  /** Whether this finished a restore that an earlier, killed cryo left (the target was then resumed). */
  recovered: boolean;
  /** Layout changes made ({@link CommitContext.fixLayout}). */
  layoutChanges: number;
  /** Threads created again ({@link CommitContext.recreateThreads}). */
  threadsRecreated: number;
  /** File offsets put back ({@link CommitContext.putOffsets}). */
  offsetsPut: number;
}

/** What the write function is given. */
export interface CommitContext {
  /** Write into this target: every byte goes through the journal. */
  target: LoadTarget;
  /** Put these threads' registers back (saving the current ones first); threads that are gone are skipped. */
  setThreads(threads: readonly ThreadState[]): void;
  /**
   * End these threads (born since the checkpoint: rolled-back memory does not know them, and left running they
   * would act on it, e.g. finish a read their runtime no longer waits for) with an `exit(2)` run inside each,
   * once everything else has been written: ending a thread cannot be undone, so it is the last step.
   */
  endAfter(tids: readonly number[]): void;
  /**
   * Make the target's layout follow the image (lib/kernel/layout_fix.ts): each change by an injected system
   * call, its undo journaled first. Call it before writing memory.
   *
   * @param plan The changes (no refusals).
   * @param scratchAt Where the injector's scratch page may go (out of the way of every change), or 0n.
   */
  fixLayout(plan: LayoutPlan, scratchAt: bigint): void;
  /**
   * Create threads of the image that have ended since again (lib/kernel/threads_fix.ts), with their recorded
   * registers; the undo ends them. Call it after {@link fixLayout} (their stacks must be mapped) and before
   * writing memory.
   *
   * @param threads The recorded threads to recreate, each with its name and clear-tid address if known.
   */
  recreateThreads(threads: readonly (RecreateOptions & { state: ThreadState })[]): void;
  /**
   * Put file offsets back (an injected `lseek` each; the undo seeks back to where it was).
   *
   * @param changes The offsets ({@link planOffsets}).
   */
  putOffsets(changes: readonly OffsetChange[]): void;
  /**
   * Open again the descriptors closed since (or taken by another object) that were copies of one still open: an
   * injected `dup3` each, its undo (a `close`, or putting the other object back from where it was kept)
   * journaled first. Before {@link putOffsets} (a copy shares its partner's offset).
   */
  reopenDescriptors(changes: readonly DescriptorChange[]): void;
  /**
   * Empty whole regions before the image is written over them, their old pages moved aside to `at` (an injected
   * `mremap` with `MREMAP_DONTUNMAP`: page tables move, no byte is copied; the undo, journaled first, moves them
   * back; the commit unmaps them). Writes into a region moved aside are not journaled. A region the kernel
   * refuses to move (it spans mappings, it is locked) is journaled page by page as before, and so is every
   * region of a process that holds a userfaultfd (a region moved by `mremap` would lose its registration).
   *
   * @param ranges The regions (page aligned).
   * @param at A free range for all of them, each followed by a free page.
   * @returns Bytes moved aside.
   */
  moveAside(ranges: readonly { start: bigint; end: bigint }[], at: bigint): number;
}

/**
 * Run the write phase of a restore into the frozen `frozen`, all or nothing (see the module doc). The caller
 * thaws `frozen` in a `finally` as always; on success it has been thawed here already.
 *
 * @param frozen The frozen target.
 * @param image The image's path (for the recovery marker), or `-`.
 * @param recovering Whether this finishes an interrupted restore (`pendingRecovery`, asked before the
 *   freeze): the target is then resumed on success, and left stopped on failure.
 * @param write Writes memory and registers through the context.
 * @param signal Aborts: checked after the write, so an abort undoes everything.
 * @param progress Told when the target runs again.
 * @param opts `memoryBudget`: bytes the write may hold at once (lib/image/budget.ts), which sets the target's
 *   window.
 * @returns What was done.
 * @throws The write's error, after the target was put back as it was.
 * @throws {RestoreIncompleteError} When putting it back failed too: the target is left stopped.
 */
export async function commitRestore<T>(
  frozen: Frozen,
  image: string,
  recovering: boolean,
  write: (ctx: CommitContext) => Promise<T>,
  signal?: AbortSignal,
  progress?: Progress,
  opts: { memoryBudget?: number } = {},
): Promise<CommitSummary<T>> {
  const pid = frozen.pid;
  const recovered = recovering;
  signal?.throwIfAborted();
  writeMarker(pid, image); // first: whenever the hold is in force, a marker says how to finish
  frozen.hold();
  using journal = new RestoreJournal(pid);
  let threadsRestored = 0;
  let layoutChanges = 0;
  let threadsRecreated = 0;
  let offsetsPut = 0;
  const releases: AppliedLayout[] = []; // regions moved aside, unmapped once the restore has committed
  const displaced: number[] = []; // descriptors kept aside, closed at the commit ({@link CommitContext.reopenDescriptors})
  const asides: { at: bigint; length: bigint }[] = []; // old pages moved aside ({@link CommitContext.moveAside})
  let inj: Injector | undefined;
  const toEnd: number[] = [];
  const live = new Set(frozen.tids);
  const ctx: CommitContext = {
    target: pidTarget(pid, { journal, window: budgetShares(opts.memoryBudget).window }),
    setThreads(threads) {
      for (const t of threads) {
        if (!live.has(t.tid)) continue;
        const now = readThreadState(t.tid);
        journal.saveRegisters(t.tid, now);
        setRseq(frozen, journal, t.tid, now.rseq, t.rseq);
        frozen.setRegisters(t.tid, resumable(t, now)); // a timed wait it has left since returns EINTR
        threadsRestored++;
      }
    },
    endAfter(tids) {
      toEnd.push(...tids.filter((t) => live.has(t) && t !== pid));
    },
    fixLayout(plan, scratchAt) {
      if (!plan.changes.length) return;
      inj ??= inject(frozen, { scratchAt });
      releases.push(applyLayout(plan, inj, journal));
      layoutChanges += plan.changes.length;
    },
    recreateThreads(threads) {
      for (const t of threads) {
        inj ??= inject(frozen);
        let made = false;
        journal.recordUndo(`end the recreated thread ${t.state.tid}`, () => {
          if (made) endThread(frozen, t.state.tid);
        });
        recreateThread(frozen, inj, t.state, t);
        made = true;
        threadsRecreated++;
      }
    },
    reopenDescriptors(changes) {
      for (const c of changes) {
        inj ??= inject(frozen);
        const on = inj;
        let made = false;
        if (c.displaced) {
          const { target, cloexec } = c.displaced;
          const kept = Number(on.syscall(SYS.fcntl, c.fd, F.DUPFD_CLOEXEC, 0));
          displaced.push(kept);
          journal.recordUndo(`put ${target} back at fd ${c.fd}`, () => {
            on.syscall(SYS.dup3, kept, c.fd, cloexec ? O.CLOEXEC : 0);
            on.closeFd(kept);
          });
        } else {
          journal.recordUndo(`close the reopened fd ${c.fd}`, () => {
            if (made) on.closeFd(c.fd);
          });
        }
        on.syscall(SYS.dup3, c.from, c.fd, c.cloexec ? O.CLOEXEC : 0);
        made = true;
      }
    },
    moveAside(ranges, at) {
      let bytes = 0;
      if (holdsUserfaultfd(pid)) return 0; // a region moved by mremap would lose its registration there
      for (const r of ranges) {
        if (!at) break;
        inj ??= inject(frozen);
        const on = inj, len = r.end - r.start, to = at;
        let moved = false;
        journal.recordUndo(`move the old pages of ${hex(r.start)}-${hex(r.end)} back`, () => {
          if (moved) on.syscall(SYS.mremap, to, len, len, MREMAP.MAYMOVE | MREMAP.FIXED, r.start);
        });
        const flags = MREMAP.MAYMOVE | MREMAP.FIXED | MREMAP.DONTUNMAP;
        moved = BigInt.asUintN(64, on.raw(SYS.mremap, r.start, len, len, flags, to)) === to;
        if (!moved) continue; // refused: journaled page by page as it is written
        journal.markAside(r.start, r.end);
        asides.push({ at: to, length: len });
        at += len + 4096n;
        bytes += Number(len);
      }
      return bytes;
    },
    putOffsets(changes) {
      for (const c of changes) {
        inj ??= inject(frozen);
        const on = inj;
        journal.recordUndo(
          `offset of fd ${c.fd} back to ${c.from}`,
          () => on.syscall(SYS.lseek, c.fd, c.from, 0),
        );
        on.syscall(SYS.lseek, c.fd, c.to, 0 /* SEEK_SET */);
        offsetsPut++;
      }
    },
  };
  let value: T;
  try {
    value = await write(ctx);
    signal?.throwIfAborted();
  } catch (e) {
    try {
      journal.undo((tid, regs) => frozen.setRegisters(tid, regs));
      inj?.close();
    } catch (undoError) {
      frozen.thaw(true); // stays stopped by the hold; the marker stays for --recover
      throw new RestoreIncompleteError(
        pid,
        `Cannot restore pid ${pid}: ${(e as Error).message}; putting it back failed too (${
          (undoError as Error).message
        }): it is left stopped, for a recovering restore to finish`,
        { cause: e },
      );
    }
    if (recovered) {
      frozen.thaw(true); // it was left half-written by a killed restore: it stays stopped, for --recover
    } else {
      frozen.thaw();
      removeMarker(pid);
    }
    throw e;
  }
  for (const r of releases) {
    try {
      r.release();
    } catch { /* left mapped where nothing uses it: a leak, not a fault (a recovering restore unmaps it) */ }
  }
  for (const a of asides) {
    try {
      inj!.munmap(a.at, a.length);
    } catch { /* as above */ }
  }
  for (const fd of displaced) {
    try {
      inj!.closeFd(fd);
    } catch { /* left open where nothing names it: a leak, not a fault */ }
  }
  inj?.close();
  const threadsEnded = toEnd.filter((tid) => {
    try {
      endThread(frozen, tid);
      return true;
    } catch {
      return false; // left running: reported, not thrown (everything else is written, and cannot be undone)
    }
  });
  frozen.thaw();
  progress?.stopped?.(false);
  if (recovered) libc.kill(pid, SIGCONT); // stopped since the killed restore: let it run again
  removeMarker(pid);
  return {
    value,
    threadsRestored,
    threadsEnded,
    journalBytes: journal.bytes,
    recovered,
    layoutChanges,
    threadsRecreated,
    offsetsPut,
  };
}
