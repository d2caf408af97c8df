/**
 * The arm of a live checkpoint (lib/ops/checkpoint_live.ts), before its freeze: a short stop to create the
 * userfaultfd inside the target, then, while the target runs, every persisted region that can be is registered
 * in synchronous write-protect mode and protected, chunk by chunk, with the write-fault server already serving
 * in arm mode (no runs: a write fault lifts the protection of its page at once). At the freeze,
 * {@link rearm} registers what was born since and protects again only what the page tables say was written
 * since: the pages the server lifted, and the pages populated after their chunk was protected (those never
 * fault: a none pte carries no write-protect bit). The page tables are the dirty log: complete, and bounded by
 * nothing.
 *
 * @module
 */

import { freeze } from "../kernel/freeze.ts";
import type { Decision, PolicyOptions } from "../kernel/policy.ts";
import type { SmapsRegion } from "../kernel/maps.ts";
import { inject } from "../kernel/inject.ts";
import { UFFDIO_REGISTER_MODE, Userfaultfd } from "../kernel/uffd.ts";
import { WriteProtectServer } from "../kernel/wp_server.ts";
import type { Pagemap } from "../kernel/pagemap.ts";
import { PAGE_IS } from "../kernel/pagescan.ts";
import type { Region } from "../kernel/region.ts";
import type { Progress } from "./progress.ts";
import { PAGE_SIZE } from "../../ffi/libc.ts";

/** Bytes write-protected per `UFFDIO_WRITEPROTECT` while the target runs: a write never waits behind more. */
export const ARM_CHUNK = 64n << 20n;

/**
 * A region with no more than this resident (smaps `Rss`, read at the arm) is registered but not protected at the
 * arm while the arm's small regions fit in half of {@link HOT_PAGES}: the threads' stacks and the variables the
 * target updates in a loop live in such regions, and each write there after the arm's protection would wait for
 * the arm server (a wake-up, a few milliseconds on a loaded machine: a gap in the target's running that is not
 * cryo's stop). Unprotected, its populated pages carry no write-protect bit at the freeze, which reads them as
 * written: {@link rearm} copies them aside (hot pages) or protects them, as for a page written after the arm.
 */
export const ARM_SMALL = 64 * 1024;

/** Re-protected runs closer than this are protected with one call (the pages between are no-ops to it). */
const REARM_GAP = 2n << 20n;

/**
 * Pages written since the arm that the freeze copies aside instead of protecting again, across all regions (1
 * MiB): the target's hot pages (its threads' stacks, the variables it updates in a loop), which it writes again
 * the moment it is thawed. Protected again, each would cost a write fault right after the thaw, the writer
 * waiting for the copy's server to be scheduled: a stop in all but name. Copied aside while the target is
 * stopped (one `process_vm_readv` per run), they are exact and never fault. Past the budget (a target that
 * rewrote everything since the arm), the rest is protected again, as the copy would otherwise be the stop.
 */
export const HOT_PAGES = 256;

/** What is left of the freeze's {@link HOT_PAGES} budget, shared by every region's {@link rearm}. */
export interface HotBudget {
  /** Pages that may still be copied aside rather than protected again. */
  pages: number;
}

/**
 * Whether a region can be write-protected synchronously: private anonymous memory (the kernel refuses
 * synchronous write-protection of file mappings, and a shared mapping's pages are also other processes').
 *
 * @param r The region.
 * @returns True when it can.
 */
export function protectable(r: Region): boolean {
  return !r.perms.shared && r.inode === 0n;
}

/** What {@link arm} did. */
export interface Armed {
  /** The userfaultfd (cryo holds its only descriptor). */
  uffd: Userfaultfd;
  /** The write-fault server in arm mode: stop it at the freeze, before {@link rearm}. */
  server: WriteProtectServer;
  /** How long the target was stopped to create the userfaultfd, in milliseconds. */
  stoppedMs: number;
  /** How long registering and protecting took while the target ran, in milliseconds. */
  protectMs: number;
  /** Bytes of the regions protected (address space, not only populated pages). */
  protectedBytes: number;
  /** Regions the kernel refused to register or protect (gone or changed since the layout was read). */
  skipped: number;
  /**
   * The regions as the arm read them, with their smaps facts (the policy's `regionDecisions` reads smaps), for
   * the freeze's decisions (lib/ops/early_facts.ts: `smaps` is not read again in the stop).
   */
  regions: SmapsRegion[];
  /** The ranges registered (for {@link disarm}). */
  registered: { start: bigint; end: bigint }[];
}

/** Options of {@link arm}. */
export interface ArmOptions extends PolicyOptions {
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Told about the stop. */
  progress: Progress;
  /** Aborts between chunks. */
  signal?: AbortSignal;
}

/**
 * Stop `pid` just long enough to create its userfaultfd (an injected `userfaultfd(2)`, copied here, closed in
 * the target), thaw it, start the write-fault server in arm mode, and register and protect every persisted
 * protectable region while it runs, {@link ARM_CHUNK} at a time. A region that changed meanwhile is skipped:
 * the freeze's layout wins ({@link rearm}).
 *
 * @param pid The process.
 * @param opts The policy, the freeze's timeout, progress and abort.
 * @param decide The policy's decisions (read while the target runs).
 * @returns The userfaultfd, the server and the figures; on error nothing is left protected.
 * @throws {SystemError} When the freeze, the injection or the server fails.
 */
export function arm(
  pid: number,
  opts: ArmOptions,
  decide: (pid: number, opts: PolicyOptions) => Decision<Region>[],
): Armed {
  let uffd: Userfaultfd | undefined;
  let server: WriteProtectServer | undefined;
  try {
    let stoppedMs: number;
    {
      using frozen = freeze(pid, { registers: false, timeoutMs: opts.freezeTimeoutMs });
      const frozenAt = performance.now() - frozen.freezeMs;
      opts.progress.stopped?.(true, frozenAt);
      {
        using inj = inject(frozen);
        uffd = Userfaultfd.inTarget(inj, { features: 0n }); // the target's copy is closed: cryo's is the only one
      }
      frozen.thaw();
      stoppedMs = performance.now() - frozenAt;
      opts.progress.stopped?.(false);
    }
    // The target runs. Every write fault from here on lifts its page's protection at once; the freeze finds
    // those pages in the page tables (not write-protected) and protects them again.
    server = WriteProtectServer.start(uffd, pid, []);
    const started = performance.now();
    let protectedBytes = 0, skipped = 0, small = HOT_PAGES * PAGE_SIZE / 2;
    const registered: { start: bigint; end: bigint }[] = [];
    const decisions = decide(pid, opts);
    for (const d of decisions) {
      if (!d.persist || !protectable(d.region)) continue;
      const { start, end } = d.region;
      const rss = (d.region as Partial<SmapsRegion>).rss;
      try {
        uffd.register(start, end - start, UFFDIO_REGISTER_MODE.WP);
        registered.push({ start, end });
        if (rss !== undefined && rss <= ARM_SMALL && rss <= small) {
          small -= rss; // left unprotected: the freeze takes its pages as written since the arm
          continue;
        }
        for (let at = start; at < end; at += ARM_CHUNK) {
          opts.signal?.throwIfAborted();
          uffd.writeProtect(at, end - at < ARM_CHUNK ? end - at : ARM_CHUNK, true);
        }
        protectedBytes += Number(end - start);
      } catch (e) {
        if (opts.signal?.aborted) throw e;
        skipped++; // unmapped or changed since the layout was read: the freeze registers what is there then
      }
    }
    const regions = decisions.map((d) => d.region as SmapsRegion);
    return {
      uffd,
      server,
      stoppedMs,
      protectMs: performance.now() - started,
      protectedBytes,
      skipped,
      regions,
      registered,
    };
  } catch (e) {
    server?.stop();
    uffd?.close(); // lifts every protection, wakes every waiter
    throw e;
  }
}

/** What {@link rearm} did for one region. */
export interface Rearmed {
  /** The runs of pages to persist (present or swapped at the freeze), split where {@link hot} runs begin and end. */
  runs: BigUint64Array;
  /** The region cannot be protected (or registering it failed): copy its pages while the target is stopped. */
  preload: boolean;
  /** Per run of {@link runs}, 1 for a run of hot pages, copied aside while the target is stopped (unprotected). */
  hot?: Uint8Array;
  /** Pages written since the arm and copied aside at the freeze instead of protected again. */
  hotPages: number;
  /** Pages protected again because they were written (or populated) since the arm. */
  rearmedPages: number;
  /** `UFFDIO_WRITEPROTECT` calls it took. */
  calls: number;
}

/**
 * At the freeze (the target stopped, the arm server stopped): register region `r` (again: a region registered
 * at the arm is left as it is; one born since is registered now), read its pages to persist and those written
 * since they were protected in one `PAGEMAP_SCAN`; a written run that fits what is left of `budget` is hot (left
 * unprotected, to be copied aside before the thaw: {@link HOT_PAGES}), the others are protected again (runs
 * closer than 2 MiB in one call). After it, every page to persist of `r` is write-protected or hot.
 *
 * @param uffd The armed userfaultfd.
 * @param pm The target's pagemap.
 * @param d The policy's decision for the region (persisted).
 * @param budget Hot pages left (shared by the regions; decreased here). Default: none.
 * @returns Its runs and what was done.
 * @throws {SystemError} When the page tables cannot be read or a re-protect fails.
 */
export function rearm(
  uffd: Userfaultfd,
  pm: Pagemap,
  d: Decision<Region>,
  budget: HotBudget = { pages: 0 },
): Rearmed {
  const { start, end } = d.region;
  if (protectable(d.region)) {
    let registered = true;
    try {
      uffd.register(start, end - start, UFFDIO_REGISTER_MODE.WP);
    } catch {
      registered = false; // e.g. a hugetlb or VM_DROPPABLE region: copied now instead
    }
    if (registered) {
      const { all, marked: written } = pm.runsSplit(start, end, PAGE_IS.WRITTEN);
      // Whole written runs that fit what is left of the budget are hot (copied aside before the thaw); a run too
      // big for it (a region rewritten whole since the arm) is protected again.
      const hot: bigint[] = [], again: bigint[] = [];
      let hotPages = 0;
      for (let i = 0; i < written.length; i += 2) {
        const pages = Number(written[i + 1] - written[i]) / PAGE_SIZE;
        const to = pages <= budget.pages ? hot : again;
        if (to === hot) budget.pages -= pages, hotPages += pages;
        to.push(written[i], written[i + 1]);
      }
      const marked = hot.length ? BigUint64Array.from(again) : written;
      let rearmedPages = 0, calls = 0, h = 0;
      for (let i = 0; i < marked.length;) {
        const from = marked[i];
        let to = marked[i + 1];
        rearmedPages += Number(to - from) / PAGE_SIZE;
        i += 2;
        while (h < hot.length && hot[h] < to) h += 2; // the next hot run: one call must not protect it
        while (i < marked.length && marked[i] - to <= REARM_GAP && !(h < hot.length && hot[h] < marked[i])) {
          rearmedPages += Number(marked[i + 1] - marked[i]) / PAGE_SIZE;
          to = marked[i + 1];
          i += 2;
        }
        uffd.writeProtect(from, to - from, true);
        calls++;
      }
      if (!hot.length) return { runs: all, preload: false, hotPages, rearmedPages, calls };
      return { ...splitRuns(all, BigUint64Array.from(hot)), preload: false, hotPages, rearmedPages, calls };
    }
  }
  return {
    runs: pm.runs(start, end, { anonOnly: d.pages === "anon" }),
    preload: true,
    hotPages: 0,
    rearmedPages: 0,
    calls: 0,
  };
}

/**
 * Split runs `all` where the runs `hot` (each inside one run of `all`; sorted) begin and end.
 *
 * @param all Runs `[start0, end0, …]`, sorted, disjoint.
 * @param hot Runs within them, sorted, disjoint, few.
 * @returns The runs and, per run, 1 when it is one of `hot`.
 */
export function splitRuns(
  all: BigUint64Array,
  hot: BigUint64Array,
): { runs: BigUint64Array; hot: Uint8Array } {
  const out: bigint[] = [], flags: number[] = [];
  const push = (from: bigint, to: bigint, flag: number) => {
    if (from < to) out.push(from, to), flags.push(flag);
  };
  let i = 0; // the run of `all` being cut
  let at = all.length ? all[0] : 0n; // where its uncut part begins
  for (let k = 0; k < hot.length; k += 2) {
    const from = hot[k], to = hot[k + 1];
    while (i < all.length && all[i + 1] <= from) { // runs wholly before this hot run
      push(at, all[i + 1], 0);
      i += 2;
      at = i < all.length ? all[i] : 0n;
    }
    if (i >= all.length || from < at) {
      throw new RangeError(`Cannot split runs: hot run 0x${from.toString(16)} is outside them`);
    }
    push(at, from, 0);
    push(from, to, 1);
    at = to;
    if (at === all[i + 1]) {
      i += 2;
      at = i < all.length ? all[i] : 0n;
    }
  }
  if (i < all.length) {
    push(at, all[i + 1], 0);
    i += 2;
  }
  const runs = new BigUint64Array(out.length + (all.length - i));
  runs.set(out);
  runs.set(all.subarray(i), out.length);
  const hotFlags = new Uint8Array(runs.length / 2);
  hotFlags.set(flags);
  return { runs, hot: hotFlags };
}

/**
 * Unregister `ranges` {@link ARM_CHUNK} at a time, the write-fault server still serving: each call lifts the
 * protection left in its chunk and wakes its waiters. Closing the userfaultfd does the same for every range at
 * once, but under the target's mmap write lock for the whole walk of its page tables, during which no thread of
 * the target can take a page fault: hundreds of milliseconds for gigabytes, a stop in all but name. Chunk by
 * chunk, a fault waits for one chunk at most. A range gone since is skipped (the close releases whatever is
 * left).
 *
 * @param uffd The userfaultfd.
 * @param ranges The ranges registered, in any order (overlaps allowed).
 * @returns The calls that failed (a range unmapped or changed since).
 */
export function disarm(uffd: Userfaultfd, ranges: readonly { start: bigint; end: bigint }[]): number {
  let failed = 0;
  const sorted = [...ranges].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let done = 0n; // ranges overlap when a region was registered at the arm and at the freeze
  for (const { start, end } of sorted) {
    for (let at = start > done ? start : done; at < end; at += ARM_CHUNK) {
      const len = end - at < ARM_CHUNK ? end - at : ARM_CHUNK;
      try {
        uffd.unregister(at, len);
      } catch {
        failed++;
      }
    }
    if (end > done) done = end;
  }
  return failed;
}
