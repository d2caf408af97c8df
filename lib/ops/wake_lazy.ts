/**
 * The lazy wake of a hibernated process (`wake(pid, path, { lazy: true })`, lib/ops/wake.ts checks first):
 * frozen again, private file regions written at once, a userfaultfd created inside the target and the released
 * anonymous regions registered in missing mode; a fault server (lib/kernel/fault_server.ts) serves every page the
 * process touches from the image (lib/image/served.ts: read with `pread`, a compressed image decoded into a
 * scratch file first; an encrypted one is refused); the process resumes at once while the rest is filled in the
 * background (`UFFDIO_COPY`, skipping pages already served). An abort (Ctrl-C) finishes the loading eagerly.
 *
 * Memory: the records are walked a frame at a time (lib/image/records.ts), never collected; what is held for the
 * whole wake is the served runs' table (24 bytes a run) and two 1 MiB buffers, whatever the image's size.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { freeze } from "../kernel/freeze.ts";
import { refuseThreadChanges, threadChanges } from "./restore_commit.ts";
import { decodeThreads } from "../kernel/threads.ts";
import { MemoryLoader } from "../image/loader.ts";
import { type ImageRecord, type ImageRegion, KIND } from "../image/format.ts";
import { pidTarget } from "../image/targets.ts";
import { requireSealed } from "../image/sealing.ts";
import { anonymousRange, RemoteWriter } from "../image/remote.ts";
import { ServedData } from "../image/served.ts";
import { inject } from "../kernel/inject.ts";
import { isUserfaultfd, UFFDIO_REGISTER_MODE, Userfaultfd } from "../kernel/uffd.ts";
import { FaultServer } from "../kernel/fault_server.ts";
import { silentProgress, startPhase } from "./progress.ts";
import { verifyWithProgress } from "./inspect.ts";
import { imageIdentity, removeHibernationMarker, writeHibernationMarker } from "./hibernate.ts";
import { processMemory, processState } from "../kernel/process_status.ts";
import { PAGE_SIZE } from "../../ffi/libc.ts";
import { PAGE_STATE, Pagemap } from "../kernel/pagemap.ts";
import type { WakeOptions, WakeResult } from "./wake_options.ts";

const CHUNK = 256 << 10;
/** Bytes of the runs the background fill passes over per helper call (a few milliseconds). */
const SLICE = 4 << 20;
/** Bytes of eager records read through the mapped image between two releases of its pages. */
const RELEASE_EVERY = 16 << 20;

/**
 * Close descriptor `fd` of `pid` if it is a userfaultfd (freeze, injected `close`, thaw).
 *
 * @param pid The process.
 * @param fd Its descriptor.
 */
export function closeTargetFd(pid: number, fd: number): void {
  if (fd < 0 || !isUserfaultfd(pid, fd)) return;
  using frozen = freeze(pid, { registers: true });
  using inj = inject(frozen);
  if (isUserfaultfd(pid, fd)) inj.closeFd(fd);
}

/** Which absolute regions are served lazily (private anonymous), found by address. */
class LazyRegions {
  readonly all: readonly ImageRegion[];
  readonly lazy: readonly ImageRegion[];
  readonly #isLazy: boolean[];

  constructor(regions: readonly ImageRegion[]) {
    this.all = regions.filter((g) => !g.relocatable).sort((a, b) => (a.start < b.start ? -1 : 1));
    this.#isLazy = this.all.map((g) => !g.perms.shared && anonymousRange([g], g.start, g.end));
    this.lazy = this.all.filter((_, i) => this.#isLazy[i]);
  }

  /** Whether the record at `address` is served lazily (else it is written before the resume). */
  has(address: bigint): boolean {
    let lo = 0, hi = this.all.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.all[mid].end <= address) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.all.length && this.all[lo].start <= address && this.#isLazy[lo];
  }
}

/**
 * Write the records of the regions that are not served lazily (private file regions: their copied-on-write
 * pages; a file mapping cannot be registered in missing mode), data and holes.
 */
async function writeEager(
  pid: number,
  loader: MemoryLoader,
  regions: LazyRegions,
  advance: (bytes: number) => void,
): Promise<void> {
  using remote = new RemoteWriter(pid);
  const zeroHole = remote.holeZeroer(loader.regions);
  let buf = new Uint8Array(0), read = 0;
  for (const r of loader.index.segment(0)) {
    if (regions.has(r.address)) continue;
    if (r.kind === KIND.HOLE) {
      zeroHole(r);
      continue;
    }
    if (buf.length < r.length) buf = new Uint8Array(r.length);
    remote.write(r.address, await loader.readRecord(r, buf.subarray(0, r.length)));
    remote.flush(); // the buffer is used again
    advance(r.length);
    if ((read += r.storedLength) >= RELEASE_EVERY) {
      loader.releaseView();
      read = 0;
    }
  }
  remote.flush();
  loader.releaseView();
}

/** Write the image's bytes (data, or zeros for holes) into every page of `regions` that is present. */
function writePresentPages(pid: number, served: ServedData, regions: readonly ImageRegion[]): number {
  using pm = Pagemap.open(pid);
  using remote = new RemoteWriter(pid);
  let pages = 0;
  for (const g of regions) {
    const st = pm.states(g.start, g.end);
    st.flags.forEach((f, i) => {
      if (!(f & (PAGE_STATE.PRESENT | PAGE_STATE.SWAPPED))) return;
      const addr = st.start + BigInt(i * st.pageSize);
      remote.write(addr, served.page(addr, new Uint8Array(PAGE_SIZE)));
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
 *
 * @param pid The hibernated process (checked by the caller).
 * @param abs Its image, an absolute path (checked by the caller).
 * @param opts The wake's options.
 * @param started When the wake started (`performance.now()`).
 * @param adoptFd The userfaultfd a killed lazy wake left in the target.
 * @returns What was done.
 */
export async function lazyWake(
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
  const regions = new LazyRegions(loader.regions);
  // A compressed record is decoded here, before anything is written (it is verified as it is).
  let dataBytes = 0, holeBytes = 0;
  const counted = function* () { // one walk of the records: counted as they are taken
    for (const r of loader.index.segment(0)) {
      if (r.kind === KIND.DATA) dataBytes += r.length;
      else holeBytes += r.length;
      yield r;
    }
  };
  using served = await ServedData.open(loader, counted(), (r: ImageRecord) => regions.has(r.address));
  const eagerBytes = dataBytes - served.bytes;
  const serverOpts = { maxPrefetch: opts.maxPrefetch ?? 1 << 20 };

  let uffd: Userfaultfd | undefined;
  let server: FaultServer | undefined;
  if (adoptFd !== undefined) {
    // The process runs (or waits in faults) on the registered ranges since the killed wake: serve them again.
    uffd = Userfaultfd.adopt(pid, adoptFd);
    server = FaultServer.fromFile(uffd, served.fd, served.table, serverOpts);
    if (processState(pid) === "T") Deno.kill(pid, "SIGCONT"); // killed after it was set up, before the resume
  } else {
    startPhase(progress, "freeze");
    const frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
    startPhase(progress, "write", eagerBytes);
    try {
      loader.checkTarget(pidTarget(pid));
      if (threadsBytes) refuseThreadChanges(pid, threadChanges(recorded, frozen.tids));
      opts.signal?.throwIfAborted();
      // Writing is idempotent, so a failure here leaves it hibernated.
      await writeEager(pid, loader, regions, (n) => progress.advance(n));
      {
        // The target keeps a copy of the userfaultfd: if cryo dies from here on, the faults wait for the next
        // cryo wake instead of being filled with zeros.
        using inj = inject(frozen);
        uffd = Userfaultfd.inTarget(inj, { features: 0n, keepInTarget: true });
      }
      writeHibernationMarker({ pid, image: abs, identity, state: "hibernated", uffdFd: uffd.targetFd });
      for (const g of regions.lazy) uffd.register(g.start, g.end - g.start, UFFDIO_REGISTER_MODE.MISSING);
      // Pages populated since the release are not missing, so no fault would bring their data back: the kernel
      // writes each thread's rseq area (in its TLS) when an injected call returns to user mode, and reading a
      // released page maps the zero page. Write the image's bytes into each of them (nothing runs meanwhile).
      writePresentPages(pid, served, regions.lazy);
      server = FaultServer.fromFile(uffd, served.fd, served.table, serverOpts);
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
  startPhase(progress, "fill", served.bytes);
  const resumedAt = performance.now();
  const stoppedMs = resumedAt - started;
  await opts.onResumed?.();
  const fill = await fillInBackground(pid, server, resumedAt, opts);
  if (fill.exited) {
    server.stop({ complete: false });
    uffd.close();
    removeHibernationMarker(pid);
    throw new CryoError(`Cannot finish waking pid ${pid}: it exited during the wake`, { cause: fill.exited });
  }
  // Whatever stopped the fill (an abort, a failure), the server copies every page still missing past it.
  const faults = server.stop({ complete: true, from: fill.filledTo });
  const firstFaultMs = fill.firstFaultMs || (faults.faults > 0 ? performance.now() - resumedAt : 0);
  // Every page of data is back; unregistering wakes any thread still waiting in a hole (it then faults a zero
  // page in by itself), and keeps a copy of the descriptor that a fork may have taken from acting later.
  for (const g of regions.lazy) {
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
    backgroundBytes: fill.bytes,
    finishedEagerly: fill.eagerly,
    resumed: adoptFd !== undefined,
    after: processMemory(pid),
    totalMs: performance.now() - started,
  };
}

/** What the background fill did. */
interface Fill {
  /** Bytes it copied (the rest was served on faults). */
  bytes: number;
  /** Every page of the runs below this address is in place. */
  filledTo: bigint;
  /** From the resume to the first fault seen served (0: none seen). */
  firstFaultMs: number;
  /** Whether an abort or a failure stopped it (the server's completion finishes the loading). */
  eagerly: boolean;
  /** The failure, when the process exited meanwhile. */
  exited?: unknown;
}

/**
 * Copy every run's pages that are still missing, in address order, a slice of {@link SLICE} bytes per helper call
 * (lib/kernel/fault_server.ts `fill`: a chunk per `UFFDIO_COPY`, a page that exists, served on a fault, stepped
 * over), yielding to the event loop every 20 ms.
 */
async function fillInBackground(
  pid: number,
  server: FaultServer,
  resumedAt: number,
  opts: WakeOptions,
): Promise<Fill> {
  const progress = opts.progress ?? silentProgress;
  const chunk = opts.chunkBytes ?? CHUNK;
  const fill: Fill = { bytes: 0, filledTo: 0n, firstFaultMs: 0, eagerly: false };
  try {
    let lastYield = performance.now();
    for (;;) {
      if (opts.signal?.aborted) {
        fill.eagerly = true;
        return fill;
      }
      const step = server.fill(fill.filledTo, SLICE, chunk);
      fill.bytes += step.copied;
      fill.filledTo = step.next;
      progress.advance(step.passed);
      if (!fill.firstFaultMs && server.stats().faults > 0) fill.firstFaultMs = performance.now() - resumedAt;
      if (step.done) return fill;
      if (performance.now() - lastYield > 20) {
        await new Promise((resolve) => setTimeout(resolve, 0)); // progress, signals
        lastYield = performance.now();
      }
    }
  } catch (e) {
    if (processState(pid) === undefined) fill.exited = e;
    fill.eagerly = true;
  }
  return fill;
}
