/**
 * A live checkpoint of another process (`checkpoint(pid, path, { live: true })`): the target is stopped twice,
 * briefly: once to create a userfaultfd in it (lib/ops/live_arm.ts: its memory is then write-protected while it
 * runs), once to record its threads and layout and to protect again what it wrote since; then it runs on while
 * its pages are copied out through the usual pipeline. A write to a page not yet copied is held by the kernel (a synchronous
 * write-protect fault of a userfaultfd) until the write-fault server (`lib/kernel/wp_server.ts`, a native thread)
 * has copied that page aside; the background copy takes that copy. The image is the memory at the freeze.
 *
 * Regions that cannot be write-protected synchronously (private file mappings, shared memory) are copied aside
 * while the target is stopped. A page the target unmaps (or replaces) before it was copied makes the checkpoint
 * fail with an error saying so: its memory at the freeze is gone.
 *
 * If cryo dies during the copy, the target is never left waiting: the userfaultfd's only descriptor is cryo's
 * (the target's copy is closed at once), and its release by the kernel lifts every protection and wakes every
 * waiting thread. docs/LIVE.md has the whole story.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { freeze, type Frozen } from "../kernel/freeze.ts";
import type { Decision, PolicyOptions } from "../kernel/policy.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import type { Userfaultfd } from "../kernel/uffd.ts";
import { register } from "../kernel/threads.ts";
import { PAGE_SIZE } from "../../ffi/libc.ts";
import { requireCapabilities } from "../kernel/capabilities.ts";
import { liveRunTable, WriteProtectServer, type WriteProtectStats } from "../kernel/wp_server.ts";
import type { Region } from "../kernel/region.ts";
import { MemoryPersister } from "../image/persister.ts";
import { liveSource } from "../image/sources.ts";
import { budgetShares } from "../image/budget.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";
import { failure, processSections, type TakenFigures, takenFigures } from "./checkpoint_record.ts";
import { arm, type Armed, disarm, HOT_PAGES, rearm } from "./live_arm.ts";
import { decisionsWithEarlyFacts } from "./early_facts.ts";

/** Options of a live checkpoint (a subset of `CheckpointOptions`). */
export interface LiveCheckpointOptions extends PolicyOptions {
  /** fsync the image before it is given its name (default true). */
  fsync?: boolean;
  /** Record registers and rseq of every thread (default true). */
  registers?: boolean;
  /** Record the alternate signal stacks of threads blocked in a system call (`CheckpointOptions.altStacks`). */
  altStacks?: boolean;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes persisted. */
  progress?: Progress;
  /** Abort the checkpoint (the protection is lifted, nothing is left at the path). */
  signal?: AbortSignal;
  /** Pages copied aside per write fault: the aligned block around the page written (1-512, default 1). */
  liveNeighbours?: number;
  /** Bytes of bounce buffers and write-behind the copy may hold (lib/image/budget.ts; default 64 MiB). */
  memoryBudget?: number;
  /**
   * Called while the target is frozen, after its layout was read and before it is thawed: to record something
   * of the process at the exact moment the image shows (a test reads counters here).
   */
  onFrozen?: () => void;
  /**
   * Called (and awaited) after the arm, the target running with its memory protected, before the freeze: a
   * test changes the target here (maps, unmaps, writes) to see that the freeze's layout and page tables win.
   */
  onArmed?: () => void | Promise<void>;
}

/** What a live checkpoint did besides what every checkpoint reports. */
export interface LiveStats {
  /** Pages copied aside because the target wrote them before the background copy got there. */
  earlyPages: number;
  /** Write faults served during the copy. */
  faults: number;
  /** The longest a write waited for its fault to be served, in milliseconds. */
  maxFaultMs: number;
  /** Bytes of the regions write-protected while the target ran (address space: populated or not). */
  protectedBytes: number;
  /** Bytes copied aside while the target was stopped (regions that cannot be write-protected, hot pages). */
  copiedStoppedBytes: number;
  /** The first stop (creating the userfaultfd in the target), freeze to thaw, in milliseconds. */
  armStoppedMs: number;
  /** The second stop (recording, re-protecting what was written since the arm), freeze to thaw, in ms. */
  freezeStoppedMs: number;
  /** How long registering and protecting took while the target ran, before the freeze, in milliseconds. */
  protectMs: number;
  /** Write faults served between the arm and the freeze (each lifted its page's protection). */
  armFaults: number;
  /** Pages protected again at the freeze: written, or populated, since they were protected at the arm. */
  rearmedPages: number;
  /**
   * Pages written since the arm that the freeze copied aside instead of protecting again (the target's hot pages,
   * up to 1 MiB: lib/ops/live_arm.ts `HOT_PAGES`); they are part of {@link copiedStoppedBytes}.
   */
  hotPages: number;
  /** How long registering and protecting again took at the freeze (part of the second stop), in ms. */
  rearmMs: number;
  /**
   * What the second stop was made of, in milliseconds: stopping every thread, reading the layout and the
   * threads' and kernel's state, stopping the arm server, re-protecting ({@link rearmMs}), starting the
   * copy's server (with the copy of what cannot be protected).
   */
  freezeParts: { freeze: number; record: number; armServer: number; rearm: number; server: number };
  /** How long the background copy took (the target running), in milliseconds. */
  copyMs: number;
  /**
   * How long lifting the protection left (unregistering chunk by chunk, the server serving), stopping the server
   * and closing the userfaultfd took, in milliseconds.
   */
  closeMs: number;
  /** Everything the write-fault server counted. */
  server: WriteProtectStats;
}

/** What {@link persistLive} took: every checkpoint's figures, the stop, and the live checkpoint's own. */
export interface LiveTaken extends TakenFigures {
  /** The longer of the two stops (the arm's and the freeze's), in milliseconds. */
  stoppedMs: number;
  /** The live checkpoint's own figures. */
  live: LiveStats;
}

/**
 * Lift the protection of the pages the freeze's own recording writes into, in each frozen thread: just below
 * its red zone (recording a blocked thread's alternate signal stack injects `sigaltstack()` into it, which
 * writes 24 bytes at `(rsp - 192) & ~15`, and the bytes are put back after: lib/kernel/thread_kernel.ts) and its
 * rseq area (the kernel updates it when a stepped thread returns to user mode). With those pages protected, each
 * write waits for a fault the arm server serves, a wake-up and a scheduling delay each: tens of milliseconds of
 * the stop on a loaded machine. `rearm()` protects them again (written since the arm).
 */
function liftWhereRecorded(uffd: Userfaultfd, frozen: Frozen): void {
  const page = BigInt(PAGE_SIZE);
  const lift = (at: bigint, len: bigint) => {
    const from = at - at % page, end = at + len, to = end + (page - end % page) % page;
    try {
      uffd.writeProtect(from, to - from, false);
    } catch { /* not a registered range: nothing to lift */ }
  };
  for (const t of frozen.threads) {
    if (t.general.length) lift((register(t, "rsp") - 192n) & ~15n, 24n);
    if (t.rseq?.abiPointer) lift(t.rseq.abiPointer, BigInt(t.rseq.abiSize || 32));
  }
}

/** The bytes of runs `[start0, end0, …]`, without a bigint per run. */
function runBytes(runs: BigUint64Array): number {
  const w = new Uint32Array(runs.buffer, runs.byteOffset, 2 * runs.length);
  let n = 0;
  for (let i = 0; i < w.length; i += 4) n += (w[i + 2] - w[i]) + (w[i + 3] - w[i + 1]) * 4294967296;
  return n;
}

/**
 * Take a raw image of `pid` at `out` live: freeze, record, write-protect, thaw, copy in the background.
 *
 * @param pid The process.
 * @param out The image path or a stream.
 * @param opts Options.
 * @param decide The policy's decisions for the process (checkpoint.ts `regionDecisions`).
 * @returns What was taken.
 * @throws {CryoError} When the target unmapped a page before it was copied, or the kernel lacks a feature.
 */
export async function persistLive(
  pid: number,
  out: string | { fd: number },
  opts: LiveCheckpointOptions,
  decide: (pid: number, opts: PolicyOptions) => Decision<Region>[],
): Promise<LiveTaken> {
  requireCapabilities(`take a live checkpoint of pid ${pid}`, ["userfaultfd", "pidfdGetfd", "pagemapScan"]);
  const progress = opts.progress ?? silentProgress;
  opts.signal?.throwIfAborted();
  startPhase(progress, "freeze");
  let armed: Armed | undefined;
  let frozen: Frozen | undefined;
  let server: WriteProtectServer | undefined;
  let persister: MemoryPersister | undefined;
  // Lift every protection and wake every waiter: stop the servers (no gather runs any more), close the
  // userfaultfd (its release un-protects what is left). Idempotent.
  const release = () => {
    armed?.server.stop();
    const stats = server?.stop();
    armed?.uffd.close();
    return stats;
  };
  try {
    // 1. Arm: a short stop for the userfaultfd, then protect everything while the target runs.
    armed = arm(pid, { ...opts, progress }, decide);
    const uffd = armed.uffd;
    await opts.onArmed?.();
    opts.signal?.throwIfAborted();

    // 2. Freeze: record, protect again what was written since the arm, start the copy's server, thaw. The arm
    // server serves until every thread stopped (a thread in a kernel-mode fault stops only once it is served).
    // Not boosted (SCHED_FIFO for threads slow to stop, freeze.ts): a thread in a kernel-mode write fault when
    // it is interrupted retries the fault until the server has served it, and, boosted, it held the freeze for
    // a second (the kernel's real-time throttling) in 2 of 60 rounds here; unboosted, the longest was 72 ms.
    frozen = freeze(pid, {
      registers: opts.registers ?? true,
      timeoutMs: opts.freezeTimeoutMs,
      boost: false,
    });
    const frozenAt = performance.now() - frozen.freezeMs;
    progress.stopped?.(true, frozenAt);
    using pm = Pagemap.open(pid);
    // smaps was read at the arm; the stacks are where the threads' registers say.
    const sps = frozen.threads.filter((t) => t.general.length).map((t) => register(t, "rsp"));
    const decisions = decisionsWithEarlyFacts(pid, armed.regions, opts, sps.length ? sps : undefined);
    const kept = decisions.filter((d) => d.persist);
    // Recording the threads injects system calls, which write into the target's (protected) memory: the arm
    // server must still serve those faults. The pages they touch are protected again below.
    liftWhereRecorded(uffd, frozen);
    const sections = processSections(pid, frozen, decisions, opts.altStacks ?? true);
    opts.onFrozen?.();
    const recorded = performance.now();
    const armStats = armed.server.stop(); // joined: nothing lifts a protection from here until the thaw
    const rearmStarted = performance.now();
    const budget = { pages: HOT_PAGES }; // the hot pages, written since the arm: copied aside, not protected
    const plans = kept.map((d) => ({ region: d.region, bytes: 0, ...rearm(uffd, pm, d, budget) }));
    const rearmMs = performance.now() - rearmStarted;
    let copiedStoppedBytes = 0, rearmedPages = 0, hotPages = 0;
    for (const p of plans) {
      p.bytes = runBytes(p.runs);
      if (p.preload) copiedStoppedBytes += p.bytes;
      rearmedPages += p.rearmedPages;
      hotPages += p.hotPages;
    }
    copiedStoppedBytes += hotPages * PAGE_SIZE;
    const runs = liveRunTable(plans);
    const serverStarted = performance.now();
    server = WriteProtectServer.start(uffd, pid, runs, { neighbours: opts.liveNeighbours });
    const freezeParts = {
      freeze: frozen.freezeMs,
      record: recorded - (frozenAt + frozen.freezeMs),
      armServer: rearmStarted - recorded,
      rearm: serverStarted - rearmStarted,
      server: performance.now() - serverStarted,
    };
    frozen.thaw();
    progress.stopped?.(false);
    const freezeStoppedMs = performance.now() - frozenAt;

    // The target runs. Copy every run out; the server copies what it writes first.
    const copyStarted = performance.now();
    const shares = budgetShares(opts.memoryBudget);
    persister = await MemoryPersister.create(out, {
      source: liveSource(pid, server, { bufferSize: shares.bounceSize }),
      writeBehind: shares.writeBehind,
      regions: kept.map((d) => d.region),
      fsync: opts.fsync ?? true,
    });
    startPhase(progress, "read", plans.reduce((n, p) => n + p.bytes, 0)); // while the target runs
    for (const { region, runs } of plans) {
      opts.signal?.throwIfAborted();
      await persister.storeRuns(runs, {
        start: region.start,
        end: region.end,
        signal: opts.signal,
        progress: (n) => progress.advance(n),
      });
    }
    const closing = performance.now();
    disarm(uffd, [
      ...armed.registered,
      ...plans.filter((p) => !p.preload).map((p) => ({ start: p.region.start, end: p.region.end })),
    ]);
    const stats = release()!;
    const closeMs = performance.now() - closing;
    const copyMs = closing - copyStarted;
    if (stats.lostPages) {
      throw new CryoError(
        `Cannot take a live checkpoint of pid ${pid}: ${stats.lostPages} page(s) from 0x${
          stats.firstLost.toString(16)
        } on were gone before they were copied; take a stopped checkpoint instead`,
      );
    }
    for (const [name, bytes] of sections) persister.addSection(name, bytes);
    opts.signal?.throwIfAborted();
    startPhase(progress, "sync");
    const summary = await persister.finalize();
    persister = undefined;
    return {
      ...takenFigures(decisions, frozen, summary),
      stoppedMs: Math.max(armed.stoppedMs, freezeStoppedMs),
      live: {
        earlyPages: stats.earlyPages,
        faults: stats.faults,
        maxFaultMs: stats.maxFaultMs,
        protectedBytes: armed.protectedBytes,
        copiedStoppedBytes,
        armStoppedMs: armed.stoppedMs,
        freezeStoppedMs,
        protectMs: armed.protectMs,
        armFaults: armStats.outsideFaults,
        rearmedPages,
        hotPages,
        rearmMs,
        freezeParts,
        copyMs,
        closeMs,
        server: stats,
      },
    };
  } catch (e) {
    frozen?.thaw();
    if (persister) await persister.abort(); // no gather runs after this: the server may stop
    release();
    throw failure(e, opts.signal);
  } finally {
    frozen?.thaw();
    progress.stopped?.(false);
    release();
    progress.done();
  }
}
