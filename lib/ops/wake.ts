/**
 * Wake a process that `hibernate` (lib/ops/hibernate.ts) left stopped with its pages released.
 *
 * Before anything is written: the marker must name this very process (pid and start time), the image must be
 * the one recorded (path and identity) and verify (every checksum, every record decoded; a key means it must
 * be encrypted and authenticate), and the process must be stopped.
 *
 * - **Eager** (default): the restore machinery (lib/restore.ts: frozen, layout and threads checked, held,
 *   every overwritten byte journaled, all or nothing) writes every page back; then SIGCONT.
 * - **Lazy**: frozen again, a userfaultfd is created inside the target and the released anonymous regions are
 *   registered in missing mode; private file regions (their copied-on-write pages) are written at once; a fault
 *   server (lib/kernel/fault_server.ts) serves every page the process touches from the image, mapped in this
 *   process (a compressed image is decoded into memory first; an encrypted one is refused: wake it eagerly).
 *   The process is resumed at once while this function fills the remaining pages in the background
 *   (`UFFDIO_COPY`, skipping those already served). It returns when every page is back and the userfaultfd is
 *   closed. An abort (Ctrl-C) finishes the loading eagerly, then returns.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { freeze } from "../kernel/freeze.ts";
import { restore } from "./restore.ts";
import { refuseThreadChanges, threadChanges } from "./restore_commit.ts";
import { decodeThreads } from "../kernel/threads.ts";
import type { Codec } from "../codecs/codec.ts";
import type { SealKey } from "../codecs/keys.ts";
import { MemoryLoader } from "../image/loader.ts";
import { KIND } from "../image/format.ts";
import { pidTarget } from "../image/targets.ts";
import { requireSealed } from "../image/sealing.ts";
import { anonymousRange, RemoteWriter } from "../image/remote.ts";
import { inject } from "../kernel/inject.ts";
import { isUserfaultfd, UFFDIO_REGISTER_MODE, Userfaultfd } from "../kernel/uffd.ts";
import { FaultServer, type FaultServerStats } from "../kernel/fault_server.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";
import { verifyWithProgress } from "./inspect.ts";
import {
  type HibernationMarker,
  imageIdentity,
  ownerAlive,
  readHibernationMarker,
  removeHibernationMarker,
  writeHibernationMarker,
} from "./hibernate.ts";
import { type ProcessMemory, processMemory, processState, settleStopped } from "../kernel/process_status.ts";
import { addrOf, PAGE_SIZE } from "../../ffi/libc.ts";
import { PAGE_STATE, Pagemap } from "../kernel/pagemap.ts";

const CHUNK = 256 << 10;

/** Options of {@link wake}. */
export interface WakeOptions {
  /** Resume at once and serve pages on demand while the rest loads in the background (default false). */
  lazy?: boolean;
  /** The key of an encrypted image. */
  key?: SealKey;
  /** Codecs beyond raw, zstd and lz4. */
  codecs?: readonly Codec[];
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes loaded. */
  progress?: Progress;
  /** Eager: bytes of buffers the write may hold at once, whatever the image's size (lib/image/budget.ts). */
  memoryBudget?: number;
  /**
   * Eager: before the write nothing is done, during it everything is undone (the process stays hibernated).
   * Lazy: before the resume the process stays hibernated; after it, the loading is finished eagerly.
   */
  signal?: AbortSignal;
  /** Lazy: the largest prefetch window of the fault server (default 1 MiB). */
  maxPrefetch?: number;
  /** Lazy: how many bytes the background fill copies per `UFFDIO_COPY` (default 2 MiB). */
  chunkBytes?: number;
  /** Lazy: called once the process runs again (before the background fill). */
  onResumed?: () => void | Promise<void>;
}

/** What {@link wake} did. */
export interface WakeResult {
  /** The process. */
  pid: number;
  /** The image. */
  path: string;
  /** Whether the wake was lazy. */
  lazy: boolean;
  /** Bytes of data written back (eager) or served and filled (lazy). */
  dataBytes: number;
  /** Bytes of holes (zero). */
  holeBytes: number;
  /** How long the process stayed stopped during the wake (from the start of the wake to its SIGCONT). */
  stoppedMs: number;
  /** Lazy: from the SIGCONT to the first fault seen served (sampled between background copies); else 0. */
  firstFaultMs: number;
  /** Lazy: the fault server's counters at the end. */
  faults?: FaultServerStats;
  /** Lazy: bytes filled by the background copy (the rest was served on faults). */
  backgroundBytes: number;
  /** Lazy: whether an abort switched the loading to eager. */
  finishedEagerly: boolean;
  /** Whether this continued a lazy wake whose cryo had died (its userfaultfd taken back from the target). */
  resumed: boolean;
  /** `/proc/PID/status` at the end. */
  after: ProcessMemory;
  /** How long the whole wake took, in milliseconds. */
  totalMs: number;
}

function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The marker's state as far as waking goes: what {@link wake} does next. */
type Found = { abs: string; marker: HibernationMarker; resume: boolean };

/**
 * Every check before the wake: marker, image path and identity, stopped state. `resume` says that a lazy wake
 * whose cryo died left its userfaultfd in the target: the wake continues it.
 */
async function checkHibernated(pid: number, path: string): Promise<Found> {
  const marker = readHibernationMarker(pid);
  if (!marker) {
    throw new CryoError(
      `Cannot wake pid ${pid}: it is not hibernated (no hibernation of this process is recorded, or the pid ` +
        `now belongs to another process)`,
    );
  }
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  if (!sameFile(abs, marker.image)) {
    throw new CryoError(`Cannot wake pid ${pid} from ${abs}: it was hibernated into ${marker.image}`);
  }
  {
    // Its footer only (opening it checks every record: the wake opens it once, to verify it).
    if (imageIdentity(await MemoryLoader.head(abs)) !== marker.identity) {
      throw new CryoError(
        `Cannot wake pid ${pid} from ${abs}: the image is not the one it was hibernated into (it was replaced)`,
      );
    }
  }
  if (marker.state === "waking" && ownerAlive(marker)) {
    throw new CryoError(`Cannot wake pid ${pid}: cryo pid ${marker.owner!.pid} is waking it right now`);
  }
  const kept = marker.uffdFd !== undefined && isUserfaultfd(pid, marker.uffdFd);
  if (marker.state === "waking") {
    if (kept) return { abs, marker, resume: true };
    throw new CryoError(
      `Cannot wake pid ${pid}: a lazy wake resumed it and did not finish, and its userfaultfd is gone, so the ` +
        `pages it had not loaded read as zero since; if it is still alive, a restore from ${marker.image} ` +
        `rolls it back to the hibernation point (what it did since is lost), else restart it`,
    );
  }
  if (!(await settleStopped(pid, 500))) {
    const state = processState(pid);
    throw new CryoError(
      `Cannot wake pid ${pid}: it is not stopped (state ${state}): it was resumed since it was hibernated`,
    );
  }
  if (kept) closeTargetFd(pid, marker.uffdFd!); // left by a lazy wake killed before it resumed the process
  return { abs, marker, resume: false };
}

/** Close descriptor `fd` of `pid` if it is a userfaultfd (freeze, injected `close`, thaw). */
function closeTargetFd(pid: number, fd: number): void {
  if (fd < 0 || !isUserfaultfd(pid, fd)) return;
  using frozen = freeze(pid, { registers: true });
  using inj = inject(frozen);
  if (isUserfaultfd(pid, fd)) inj.closeFd(fd);
}

/**
 * Wake process `pid`, hibernated into `path`: write every page back and resume it (eager), or resume it at
 * once and serve its pages on demand (lazy). A lazy wake whose cryo was killed is continued (lazily, whatever
 * `lazy` says): its userfaultfd stayed in the target, and the threads that fault meanwhile wait for it.
 *
 * @param pid The hibernated process.
 * @param path Its image.
 * @param opts Lazy, key, progress, abort.
 * @returns What was loaded, the stop window, and for a lazy wake the fault server's counters.
 * @throws {CryoError} When the process is not hibernated into this image, or not stopped (nothing written).
 * @throws {ImageError} When the image does not verify (nothing written).
 * @throws {KeyError} When the key is missing, wrong, or given for a plaintext image (nothing written).
 * @throws {LayoutMismatchError} When the process's layout or threads changed (nothing written).
 */
export async function wake(pid: number, path: string, opts: WakeOptions = {}): Promise<WakeResult> {
  const started = performance.now();
  const found = await checkHibernated(pid, path);
  const abs = found.abs;
  if (found.resume) return await lazyWake(pid, abs, opts, started, found.marker.uffdFd);
  if (!opts.lazy) {
    opts.progress?.stopped?.(true, started); // hibernated: stopped since then
    const r = await restore(pid, abs, {
      key: opts.key,
      codecs: opts.codecs,
      freezeTimeoutMs: opts.freezeTimeoutMs,
      progress: opts.progress,
      signal: opts.signal,
      memoryBudget: opts.memoryBudget,
    });
    const stoppedMs = performance.now() - started;
    Deno.kill(pid, "SIGCONT"); // it is in group stop since the hibernation
    removeHibernationMarker(pid);
    return {
      pid,
      path: abs,
      lazy: false,
      dataBytes: r.dataBytes,
      holeBytes: r.holeBytes,
      stoppedMs,
      firstFaultMs: 0,
      backgroundBytes: 0,
      finishedEagerly: false,
      resumed: false,
      after: processMemory(pid),
      totalMs: performance.now() - started,
    };
  }
  return await lazyWake(pid, abs, opts, started);
}

/** Write the image's bytes (data, or zeros for holes) into every page of `regions` that is present. */
function writePresentPages(
  pid: number,
  loader: MemoryLoader,
  regions: readonly { start: bigint; end: bigint }[],
  sources: Map<bigint, Uint8Array>,
): number {
  using pm = Pagemap.open(pid);
  using remote = new RemoteWriter(pid);
  const zero = new Uint8Array(PAGE_SIZE);
  let pages = 0;
  for (const g of regions) {
    const st = pm.states(g.start, g.end);
    st.flags.forEach((f, i) => {
      if (!(f & (PAGE_STATE.PRESENT | PAGE_STATE.SWAPPED))) return;
      const addr = st.start + BigInt(i * st.pageSize);
      const r = loader.findRecord(addr);
      const src = r?.kind === KIND.DATA ? sources.get(r.address) : undefined;
      const at = src ? Number(addr - r!.address) : 0;
      remote.write(addr, src ? src.subarray(at, at + PAGE_SIZE) : zero);
      pages++;
    });
  }
  remote.flush();
  return pages;
}

/**
 * A lazy wake; with `adoptFd`, the continuation of one whose cryo died: its userfaultfd is taken back from the
 * target (where it stayed, ranges registered) and serving starts again; the process is resumed if it had not
 * been yet.
 */
async function lazyWake(
  pid: number,
  abs: string,
  opts: WakeOptions,
  started: number,
  adoptFd?: number,
): Promise<WakeResult> {
  const progress = opts.progress ?? silentProgress;
  using loader = await MemoryLoader.open(abs, { codecs: opts.codecs });
  progress.stopped?.(true, started); // hibernated: stopped since then
  await verifyWithProgress(loader, progress);
  requireSealed(loader.encrypted, opts.key, abs);
  if (loader.encrypted) {
    throw new CryoError(
      `Cannot wake pid ${pid} lazily from ${abs}: the image is encrypted, and a lazy wake serves pages from ` +
        `the image as they are touched; wake it eagerly`,
    );
  }
  opts.signal?.throwIfAborted();
  const identity = imageIdentity(loader);
  const threadsBytes = loader.section("threads");
  const recorded = threadsBytes ? decodeThreads(threadsBytes, abs) : [];
  const regions = loader.regions.filter((g) => !g.relocatable);
  const lazyRegion = regions.map((g) => !g.perms.shared && anonymousRange([g], g.start, g.end));
  const lazyRegions = regions.filter((_, i) => lazyRegion[i]);
  const regionOf = (addr: bigint) => regions.findIndex((g) => g.start <= addr && addr < g.end);
  const absolute = loader.records.filter((r) => r.segment === 0);
  const lazyData = absolute.filter((r) => r.kind === KIND.DATA && lazyRegion[regionOf(r.address)]);
  const eagerRecords = absolute.filter((r) => !lazyRegion[regionOf(r.address)]);
  // A compressed record is decoded into memory here, before anything is written (it is verified as it is).
  const sources = new Map<bigint, Uint8Array>();
  for (const r of lazyData) {
    sources.set(r.address, r.codec === 0 ? loader.storedBytes(r) : await loader.readRecord(r));
  }
  const dataBytes = absolute.reduce((n, r) => n + (r.kind === KIND.DATA ? r.length : 0), 0);
  const holeBytes = absolute.reduce((n, r) => n + (r.kind === KIND.HOLE ? r.length : 0), 0);
  const runs = lazyData.map((r) => ({
    start: r.address,
    length: BigInt(r.length),
    source: sources.get(r.address)!,
  }));
  const serverOpts = { maxPrefetch: opts.maxPrefetch ?? 1 << 20 };
  const eagerBytes = eagerRecords.reduce((n, r) => n + (r.kind === KIND.DATA ? r.length : 0), 0);

  let uffd: Userfaultfd | undefined;
  let server: FaultServer | undefined;
  if (adoptFd !== undefined) {
    // The process runs (or waits in faults) on the registered ranges since the killed wake: serve them again.
    uffd = Userfaultfd.adopt(pid, adoptFd);
    server = FaultServer.start(uffd, runs, serverOpts);
    if (processState(pid) === "T") Deno.kill(pid, "SIGCONT"); // killed after it was set up, before the resume
  } else {
    startPhase(progress, "freeze");
    const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
    startPhase(progress, "write", eagerBytes);
    try {
      loader.checkTarget(pidTarget(pid));
      if (threadsBytes) refuseThreadChanges(pid, threadChanges(recorded, frozen.tids));
      opts.signal?.throwIfAborted();
      // Private file regions: their copied-on-write pages are written now (a file mapping cannot be
      // registered in missing mode); writing is idempotent, so a failure here leaves it hibernated.
      {
        using remote = new RemoteWriter(pid);
        const holes: typeof eagerRecords = [];
        for (const r of eagerRecords) {
          if (r.kind === KIND.HOLE) holes.push(r);
          else remote.write(r.address, await loader.readRecord(r));
          if (r.kind === KIND.DATA) progress.advance(r.length);
        }
        remote.flush();
        remote.holes(holes, loader.regions);
      }
      {
        // The target keeps a copy of the userfaultfd: if cryo dies from here on, the faults wait for the next
        // cryo wake instead of being filled with zeros.
        using inj = inject(frozen);
        uffd = Userfaultfd.inTarget(inj, { features: 0n, keepInTarget: true });
      }
      writeHibernationMarker({ pid, image: abs, identity, state: "hibernated", uffdFd: uffd.targetFd });
      for (const g of lazyRegions) uffd.register(g.start, g.end - g.start, UFFDIO_REGISTER_MODE.MISSING);
      // Pages populated since the release are not missing, so no fault would bring their data back: the kernel
      // writes each thread's rseq area (in its TLS) when an injected call returns to user mode, and reading a
      // released page maps the zero page. Write the image's bytes into each of them (nothing runs meanwhile).
      writePresentPages(pid, loader, lazyRegions, sources);
      server = FaultServer.start(uffd, runs, serverOpts);
      // From here on the process runs on pages served from the image: record it, then resume.
      writeHibernationMarker({ pid, image: abs, identity, state: "waking", uffdFd: uffd.targetFd });
    } catch (e) {
      server?.stop({ complete: false });
      if (uffd) {
        try {
          using inj = inject(frozen);
          inj.closeFd(uffd.targetFd);
        } catch { /* the marker names it: the next wake closes it */ }
        uffd.close();
      }
      frozen.thaw(); // it was stopped before (group stop): it stays stopped, hibernated
      writeHibernationMarker({ pid, image: abs, identity, state: "hibernated" });
      progress.done();
      throw e;
    }
    frozen.thaw();
    Deno.kill(pid, "SIGCONT");
  }
  progress.stopped?.(false);
  startPhase(progress, "fill", dataBytes - eagerBytes);
  const resumedAt = performance.now();
  const stoppedMs = resumedAt - started;
  await opts.onResumed?.();
  let firstFaultMs = 0;
  let backgroundBytes = 0;
  let finishedEagerly = false;
  const chunk = BigInt(opts.chunkBytes ?? CHUNK);
  const page = BigInt(PAGE_SIZE);
  try {
    let lastYield = performance.now();
    outer: for (const r of lazyData) {
      const src = addrOf(Deno.UnsafePointer.of(sources.get(r.address)! as Uint8Array<ArrayBuffer>));
      const end = r.address + BigInt(r.length);
      for (let at = r.address; at < end;) {
        if (opts.signal?.aborted) {
          finishedEagerly = true;
          break outer;
        }
        const len = end - at < chunk ? end - at : chunk;
        const n = uffd.copy(at, src + (at - r.address), len);
        backgroundBytes += Number(n);
        const step = n < len ? n + page : n; // a page that exists already (served on a fault) is skipped
        at += step;
        progress.advance(Number(step));
        if (!firstFaultMs && server.stats().faults > 0) firstFaultMs = performance.now() - resumedAt;
        if (performance.now() - lastYield > 20) {
          await new Promise((resolve) => setTimeout(resolve, 0)); // progress, signals
          lastYield = performance.now();
        }
      }
    }
  } catch (e) {
    if (processState(pid) === undefined) {
      server.stop({ complete: false });
      uffd.close();
      removeHibernationMarker(pid);
      throw new CryoError(`Cannot finish waking pid ${pid}: it exited during the wake`, { cause: e });
    }
    finishedEagerly = true; // whatever failed, every page is still served below
  }
  const faults = server.stop({ complete: true });
  if (!firstFaultMs && faults.faults > 0) firstFaultMs = performance.now() - resumedAt;
  // Every page of data is back; unregistering wakes any thread still waiting in a hole (it then faults a zero
  // page in by itself), and keeps a copy of the descriptor that a fork may have taken from acting later.
  for (const g of lazyRegions) {
    try {
      uffd.unregister(g.start, g.end - g.start);
    } catch { /* a region unmapped meanwhile */ }
  }
  try {
    closeTargetFd(pid, uffd.targetFd);
  } catch { /* it exited: its descriptors are gone */ }
  uffd.close();
  removeHibernationMarker(pid);
  progress.done();
  return {
    pid,
    path: abs,
    lazy: true,
    dataBytes,
    holeBytes,
    stoppedMs,
    firstFaultMs,
    faults,
    backgroundBytes,
    finishedEagerly,
    resumed: adoptFd !== undefined,
    after: processMemory(pid),
    totalMs: performance.now() - started,
  };
}
