/**
 * Checkpoint another process: freeze it, persist every persistable region (sparse: only the pages that hold
 * data, all-zero pages as holes), record its threads' registers and rseq, thaw it. The target is thawed on
 * every path, including errors and an aborted signal; a failed checkpoint leaves no file at the path.
 *
 * @module
 */

import { close, memfdCreate } from "../../ffi/libc.ts";
import { freeze, type Frozen } from "../kernel/freeze.ts";
import { readRegions } from "../kernel/maps.ts";
import { classify, type Decision, type PolicyOptions } from "../kernel/policy.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import { markStacks, threadStacks } from "../kernel/stacks.ts";
import { type Codec, raw } from "../codecs/codec.ts";
import type { Sealer } from "../codecs/seal.ts";
import { type ImageSummary, MemoryPersister } from "../image/persister.ts";
import { incompressible, nameRawImage, transcode } from "./transcode.ts";
import { pidSource } from "../image/sources.ts";
import { budgetShares } from "../image/budget.ts";
import { dirOf, scratchFile } from "../image/tempfile.ts";
import type { Region } from "../kernel/region.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";
import { type IncrementalInfo, IncrementalPlan } from "./incremental.ts";
import { decisionsWithEarlyFacts, readEarlyFacts } from "./early_facts.ts";
import { type LiveStats, persistLive } from "./checkpoint_live.ts";
import {
  allocatedBytes,
  failure,
  processSections,
  type TakenFigures,
  takenFigures,
} from "./checkpoint_record.ts";

/** Options of {@link checkpoint}. */
export interface CheckpointOptions extends PolicyOptions {
  /** fsync the image before it is given its name (default true). */
  fsync?: boolean;
  /** Leave the target stopped (SIGSTOP, resume it with SIGCONT) after the checkpoint (default false). */
  leaveStopped?: boolean;
  /** Record registers and rseq of every thread (default true). */
  registers?: boolean;
  /**
   * Record the alternate signal stack of each thread blocked in a system call (what a restore sets on such a
   * thread if it has ended and is created again). Default true. Reading it takes an injected call on that
   * thread (its registers are put back and its single step cleared before the next thread, see
   * ffi/helper/inject.c); false injects nothing.
   */
  altStacks?: boolean;
  /** The codec of data chunks (default raw). */
  codec?: Codec;
  /** Decoded bytes per compressed record. */
  chunkSize?: number;
  /** Encrypt every chunk (AES-256-GCM) and authenticate the metadata: `await Sealer.create(key)`. */
  sealer?: Sealer;
  /**
   * With a codec or sealer: encode while the target is stopped, the fastest checkpoint in all, but the target
   * stays stopped while every chunk is encoded. By default (false) a raw image is taken first and encoded after
   * the thaw, so the target is stopped only to read it.
   */
  encodeWhileStopped?: boolean;
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /**
   * Bytes of buffers the checkpoint may hold at once, whatever the target's size (default 64 MiB, plus one
   * chunk per codec worker): bounce buffers and write-behind, and the raw image's window while it is transcoded.
   */
  memoryBudget?: number;
  /** Receives bytes persisted. */
  progress?: Progress;
  /** Abort the checkpoint (the target is thawed, nothing is left at the path). */
  signal?: AbortSignal;
  /**
   * Keep the target frozen until the image is complete (finalized, fsynced, named) and hand the `Frozen` back
   * in the result's `frozen`, for the caller to act on the target and thaw it (`hibernate` releases the
   * persisted pages). On failure the target is thawed as usual. Default false.
   */
  keepFrozen?: boolean;
  /**
   * Arm write tracking at this checkpoint (kept inside the target, lib/ops/tracked.ts) and record it in the
   * image, so that a rollback to it writes back only what was written since, and an incremental checkpoint over
   * it reads only that. Default false.
   */
  track?: boolean;
  /**
   * Take an incremental image over this parent image (lib/ops/incremental.ts): only what changed since it is
   * stored; the image names the parent by content and restores with its chain.
   */
  parent?: string;
  /** Codecs the parent chain may use beyond raw. */
  codecs?: readonly Codec[];
  /**
   * A live checkpoint (lib/ops/checkpoint_live.ts, docs/LIVE.md): the target is stopped only to record its
   * threads and write-protect its memory, then runs while its pages are copied out; a page it writes first is
   * copied aside before the write goes through. The image is its memory at the freeze. Not with `keepFrozen`,
   * `leaveStopped` or `encodeWhileStopped`. Default false.
   */
  live?: boolean;
  /** With `live`: pages copied aside per write fault (an aligned block, a power of two up to 512; default 1). */
  liveNeighbours?: number;
  /** With `live`: called while the target is frozen, before it is thawed (the moment the image shows). */
  onFrozen?: () => void;
  /** With `live`: called (and awaited) after the arm, before the freeze (the target runs, its memory protected). */
  onArmed?: () => void | Promise<void>;
}

/** What {@link checkpoint} did. */
export interface CheckpointResult extends TakenFigures {
  /** The image path. */
  path: string;
  /** The process. */
  pid: number;
  /** Disk space the image takes (blocks × 512), 0 for a stream. */
  allocatedBytes: number;
  /** How long the target was stopped, in milliseconds. */
  stoppedMs: number;
  /** How long the whole checkpoint took, in milliseconds. */
  totalMs: number;
  /** With `keepFrozen`: the still frozen target, which the caller thaws. */
  frozen?: Frozen;
  /** With `track` or `parent`: how the changed pages were found, and whether tracking was armed. */
  incremental?: IncrementalInfo;
  /** With `live`: pages copied early because of a write, the faults served, what was protected. */
  live?: LiveStats;
  /**
   * With a `codec`: `true` when a sample of the memory did not compress (the codec would have stored every chunk
   * raw), so the raw image was named as the image instead of being written again; its records are uncompressed.
   */
  storedRaw?: boolean;
}

/** The persistable regions of `pid` with the policy's decisions (for `cryo regions` and checkpoint). */
export function regionDecisions(pid: number, opts: PolicyOptions = {}): Decision<Region>[] {
  const regions = readRegions(pid, { smaps: true });
  return classify(markStacks(regions, threadStacks(pid, regions)), opts);
}

/**
 * Checkpoint process `pid` into the image at `path` (`"-"` writes to stdout).
 *
 * @param pid The process (not this one).
 * @param path The image path.
 * @param opts Policy filters, codec, fsync, progress and abort.
 * @returns What was persisted and how long the target was stopped.
 * @throws {SystemError} When the process cannot be frozen or read (ESRCH, EPERM).
 */
export async function checkpoint(
  pid: number,
  path: string,
  opts: CheckpointOptions = {},
): Promise<CheckpointResult> {
  if (opts.live && (opts.keepFrozen || opts.leaveStopped || opts.encodeWhileStopped)) {
    throw new TypeError(
      "Cannot take a live checkpoint with keepFrozen, leaveStopped or encodeWhileStopped: the target runs",
    );
  }
  if (((opts.codec ?? raw).id === 0 && !opts.sealer) || opts.encodeWhileStopped) {
    return await persistPid(pid, path, opts);
  }
  // Compressing or encrypting runs at a few hundred MiB/s: done while the target is stopped, it would pace the
  // reads. So take a raw image first (the target is stopped only to read it), then transcode it.
  // An image to be encrypted is taken in memory (a memfd), so that no plaintext of the target's memory ever
  // reaches a disk; one only to be compressed is taken in an unnamed file on the output's file system (or
  // TMPDIR's, for a stream), which no name points to: it is gone when closed, even if this process is killed.
  const started = performance.now();
  const fd = opts.sealer
    ? memfdCreate("cryo-raw-image")
    : scratchFile(path === "-" ? Deno.env.get("TMPDIR") || "/tmp" : dirOf(path));
  const rawPath = `/proc/self/fd/${fd}`;
  try {
    const rawOpts = { ...opts, codec: undefined, sealer: undefined, fsync: false };
    const taken = await persistPid(pid, { fd }, rawOpts);
    let summary: ImageSummary;
    let storedRaw = false;
    try {
      opts.signal?.throwIfAborted();
      const encodeStarted = performance.now();
      // Memory that does not compress: the raw image is the image (its chunks would all be stored raw). Not for
      // a live checkpoint (its image is compressed as taken), an incremental one, a stream or a sealed one.
      const asIs = !opts.sealer && path !== "-" && !opts.parent && !opts.track && !opts.live &&
        opts.keepFrozen !== true && await incompressible(rawPath, opts.codec!) &&
        nameRawImage(fd, path, opts.fsync ?? true);
      storedRaw = asIs;
      summary = asIs
        ? { path, fileSize: taken.imageBytes, records: taken.records } as ImageSummary
        : await transcode(rawPath, path, opts);
      if (taken.frozen) taken.stoppedMs += performance.now() - encodeStarted; // still stopped meanwhile
    } catch (e) {
      taken.frozen?.thaw();
      throw e;
    }
    return {
      ...taken,
      path,
      records: summary.records,
      imageBytes: summary.fileSize,
      allocatedBytes: allocatedBytes(path),
      totalMs: performance.now() - started,
      ...(storedRaw ? { storedRaw } : {}),
    };
  } finally {
    close(fd);
  }
}

/** Checkpoint `pid` into a raw image (or one encoded while the target is stopped, when called so). */
async function persistPid(
  pid: number,
  out: string | { fd: number },
  opts: CheckpointOptions,
): Promise<CheckpointResult> {
  const path = typeof out === "string" ? out : `fd ${out.fd}`;
  const started = performance.now();
  if (opts.live && (opts.parent || opts.track)) {
    throw new TypeError("Cannot take a live checkpoint with parent or track: not supported together yet");
  }
  if (opts.live) {
    const taken = await persistLive(pid, out, opts, regionDecisions);
    return { ...taken, path, pid, allocatedBytes: allocatedBytes(out), totalMs: performance.now() - started };
  }
  const progress = opts.progress ?? silentProgress;
  opts.signal?.throwIfAborted();
  const shares = budgetShares(opts.memoryBudget); // checked before the target is frozen
  const linkFrom = typeof out === "string" ? out : "-"; // a raw image to transcode: the parent is named absolutely
  using inc = opts.parent || opts.track ? await IncrementalPlan.open(pid, linkFrom, opts) : undefined;
  const early = inc ? readEarlyFacts(pid) : undefined; // smaps walks every page table: not in the stop window
  startPhase(progress, "freeze");
  const frozen = freeze(pid, { registers: opts.registers ?? true, timeoutMs: opts.freezeTimeoutMs });
  const frozenAt = performance.now() - frozen.freezeMs;
  progress.stopped?.(true, frozenAt);
  let persister: MemoryPersister | undefined;
  let handedOver = false; // with keepFrozen, set once the image is complete: the caller thaws from then on
  try {
    const decisions = early ? decisionsWithEarlyFacts(pid, early, opts) : regionDecisions(pid, opts);
    const kept = decisions.filter((d) => d.persist);
    persister = await MemoryPersister.create(out, {
      source: pidSource(pid, { bufferSize: shares.bounceSize }),
      writeBehind: shares.writeBehind,
      regions: kept.map((d) => d.region),
      codec: opts.codec,
      chunkSize: opts.chunkSize,
      sealer: opts.sealer,
      fsync: opts.fsync ?? true,
      incremental: inc?.incremental,
    });
    const plans = inc ? await inc.plan(pid, kept, frozen) : (() => {
      using pm = Pagemap.open(pid);
      return kept.map((d) => {
        const runs = pm.runs(d.region.start, d.region.end, { anonOnly: d.pages === "anon" });
        let bytes = 0;
        for (let i = 0; i < runs.length; i += 2) bytes += Number(runs[i + 1] - runs[i]);
        return { region: d.region, within: BigUint64Array.of(d.region.start, d.region.end), runs, bytes };
      });
    })();
    startPhase(progress, "read", plans.reduce((n, p) => n + p.bytes, 0));
    for (const [name, bytes] of inc?.sections() ?? []) persister.addSection(name, bytes);
    for (const [name, bytes] of processSections(pid, frozen, decisions, opts.altStacks ?? true)) {
      persister.addSection(name, bytes);
    }
    let stoppedMs = 0;
    const release = () => {
      if (stoppedMs) return;
      if (opts.leaveStopped) Deno.kill(pid, "SIGSTOP");
      if (!opts.keepFrozen) {
        frozen.thaw();
        progress.stopped?.(false);
      }
      stoppedMs = performance.now() - frozenAt;
    };
    // The gathered store reads a region's runs in batches while earlier batches are written behind (within the
    // budget); the target is thawed once the last store has returned. An incremental plan's changed pieces of a
    // region go in one call, the gaps between them left to the parent.
    for (const { within, runs } of plans) {
      opts.signal?.throwIfAborted();
      if (!within.length) continue;
      await persister.storeRuns(runs, {
        start: within[0],
        end: within[within.length - 1],
        within: inc?.incremental ? within : undefined,
        signal: opts.signal,
        progress: (n) => progress.advance(n),
      });
    }
    opts.signal?.throwIfAborted();
    // Every byte is read: the target may run while the index is written and the file is synced (unless the
    // caller keeps it frozen).
    release();
    startPhase(progress, "sync");
    const summary = await persister.finalize();
    persister = undefined;
    if (opts.keepFrozen) stoppedMs = performance.now() - frozenAt;
    handedOver = opts.keepFrozen ?? false;
    return {
      ...takenFigures(decisions, frozen, summary),
      path,
      pid,
      allocatedBytes: allocatedBytes(out),
      stoppedMs,
      totalMs: performance.now() - started,
      frozen: opts.keepFrozen ? frozen : undefined,
      incremental: inc?.info,
    };
  } catch (e) {
    if (persister) await persister.abort();
    throw failure(e, opts.signal);
  } finally {
    if (!handedOver) {
      frozen.thaw();
      progress.stopped?.(false);
    }
    progress.done();
  }
}
