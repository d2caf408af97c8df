/**
 * A live checkpoint of another process (`checkpoint(pid, path, { live: true })`): the target is stopped only to
 * record its threads and layout and to write-protect its memory, then runs on while its pages are copied out
 * through the usual pipeline. A write to a page not yet copied is held by the kernel (a synchronous
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
import { freeze } from "../kernel/freeze.ts";
import type { Decision, PolicyOptions } from "../kernel/policy.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import { inject } from "../kernel/inject.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../kernel/uffd.ts";
import { requireCapabilities } from "../kernel/capabilities.ts";
import { type LiveRun, WriteProtectServer, type WriteProtectStats } from "../kernel/wp_server.ts";
import type { Region } from "../kernel/region.ts";
import { MemoryPersister } from "../image/persister.ts";
import { liveSource } from "../image/sources.ts";
import { budgetShares } from "../image/budget.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";
import { failure, processSections, type TakenFigures, takenFigures } from "./checkpoint_record.ts";

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
   * Called while the target is frozen, after its layout was read and before it is protected and thawed: to
   * record something of the process at the exact moment the image shows (a test reads counters here).
   */
  onFrozen?: () => void;
}

/** What a live checkpoint did besides what every checkpoint reports. */
export interface LiveStats {
  /** Pages copied aside because the target wrote them before the background copy got there. */
  earlyPages: number;
  /** Write faults served during the copy. */
  faults: number;
  /** The longest a write waited for its fault to be served, in milliseconds. */
  maxFaultMs: number;
  /** Bytes write-protected while the target was stopped (the regions that could be). */
  protectedBytes: number;
  /** Bytes copied aside while the target was stopped (regions that cannot be write-protected). */
  copiedStoppedBytes: number;
  /** How long protecting took (part of the stop window), in milliseconds. */
  protectMs: number;
  /** How long the background copy took (the target running), in milliseconds. */
  copyMs: number;
  /** Everything the write-fault server counted. */
  server: WriteProtectStats;
}

/** What {@link persistLive} took: every checkpoint's figures, the stop, and the live checkpoint's own. */
export interface LiveTaken extends TakenFigures {
  /** How long the target was stopped, in milliseconds. */
  stoppedMs: number;
  /** The live checkpoint's own figures. */
  live: LiveStats;
}

/**
 * Whether a region can be write-protected synchronously: private anonymous memory (the kernel refuses
 * synchronous write-protection of file mappings, and a shared mapping's pages are also other processes').
 */
function protectable(r: Region): boolean {
  return !r.perms.shared && r.inode === 0n;
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
  const frozen = freeze(pid, { registers: opts.registers ?? true, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  progress.stopped?.(true, frozenAt);
  let uffd: Userfaultfd | undefined;
  let server: WriteProtectServer | undefined;
  let persister: MemoryPersister | undefined;
  // Lift every protection and wake every waiter: stop the server (no gather runs any more), close the
  // userfaultfd (its release un-protects what is left). Idempotent.
  const release = () => {
    const stats = server?.stop();
    uffd?.close();
    return stats;
  };
  try {
    const decisions = decide(pid, opts);
    const kept = decisions.filter((d) => d.persist);
    const plans = (() => {
      using pm = Pagemap.open(pid);
      return kept.map((d) => ({
        region: d.region,
        runs: pm.runs(d.region.start, d.region.end, { anonOnly: d.pages === "anon" }),
        bytes: 0,
        preload: !protectable(d.region),
      }));
    })();
    for (const p of plans) {
      for (let i = 0; i < p.runs.length; i += 2) p.bytes += Number(p.runs[i + 1] - p.runs[i]);
    }
    const sections = processSections(pid, frozen, decisions, opts.altStacks ?? true);
    opts.onFrozen?.();
    const protectStarted = performance.now();
    {
      using inj = inject(frozen);
      uffd = Userfaultfd.inTarget(inj, { features: 0n }); // the target's copy is closed: cryo's is the only one
    }
    let protectedBytes = 0, copiedStoppedBytes = 0;
    for (const p of plans) {
      if (p.preload || p.bytes === 0) continue;
      const len = p.region.end - p.region.start;
      try {
        uffd.register(p.region.start, len, UFFDIO_REGISTER_MODE.WP);
      } catch {
        p.preload = true; // e.g. a hugetlb or VM_DROPPABLE region: copied now instead
        continue;
      }
      uffd.writeProtect(p.region.start, len, true);
      protectedBytes += p.bytes;
    }
    const runs: LiveRun[] = [];
    for (const p of plans) {
      if (p.preload) copiedStoppedBytes += p.bytes;
      for (let i = 0; i < p.runs.length; i += 2) {
        runs.push({ start: p.runs[i], end: p.runs[i + 1], preload: p.preload });
      }
    }
    server = WriteProtectServer.start(uffd, pid, runs, { neighbours: opts.liveNeighbours });
    const protectMs = performance.now() - protectStarted;
    frozen.thaw();
    progress.stopped?.(false);
    const stoppedMs = performance.now() - frozenAt;

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
    const stats = release()!;
    const copyMs = performance.now() - copyStarted;
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
      stoppedMs,
      live: {
        earlyPages: stats.earlyPages,
        faults: stats.faults,
        maxFaultMs: stats.maxFaultMs,
        protectedBytes,
        copiedStoppedBytes,
        protectMs,
        copyMs,
        server: stats,
      },
    };
  } catch (e) {
    frozen.thaw();
    if (persister) await persister.abort(); // no gather runs after this: the server may stop
    release();
    throw failure(e, opts.signal);
  } finally {
    frozen.thaw();
    progress.stopped?.(false);
    release();
    progress.done();
  }
}
