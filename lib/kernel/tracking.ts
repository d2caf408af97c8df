/**
 * Write tracking on a whole process: every persistable region registered for asynchronous write-protection
 * on one userfaultfd and armed, so that {@link ProcessTracking.written} reports the pages written since the
 * last arming, and re-arms them in the same `PAGEMAP_SCAN` walk (`PM_SCAN_WP_MATCHING`: a write between the
 * look and the re-arm is never lost). It is the base of rollbacks that cost what was written and of
 * incremental images.
 *
 * Which regions are tracked is found each time, not remembered: the scan is asked to check that each region
 * is registered for asynchronous write-protection (`PM_SCAN_CHECK_WPASYNC`, EPERM when not; `smaps` would say
 * it too, as `VmFlags` `uw`, but reading it walks every page table and took 30-60 ms for python3 here): a region mapped after arming, or moved by `mremap` (the kernel drops the
 * registration of a moved region unless the userfaultfd asked for remap events, which we do not), has no `uw`
 * and is reported whole in `untracked`; a region that grew (the heap, a stack) is scanned to its current end.
 * A re-arm registers such regions, so from then on they are tracked too.
 *
 * For another process the userfaultfd is created inside it by an injected `userfaultfd(2)`; with
 * `keepInTarget` its descriptor stays open there, so the tracking (its written bits live in the target's page
 * tables) outlives this process and a later cryo adopts it ({@link adoptTracking}).
 *
 * **A forked child** of a tracked process gets plain memory: the kernel clears the userfaultfd registration of
 * the child's copies of the regions (and the write-protect bits of its page table entries) when the
 * userfaultfd did not ask for fork events, which it does not. The child inherits the descriptor itself (until
 * it calls `exec`: it is close-on-exec), but it acts on the parent's memory; nothing in the child is tracked
 * or slowed down, and the parent's tracking is unaffected.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { close, open } from "../../ffi/libc.ts";
import { O } from "../../ffi/constants.ts";
import { capabilities, requireCapabilities, UFFD_FEATURE } from "./capabilities.ts";
import { freeze, type Frozen } from "./freeze.ts";
import { inject } from "./inject.ts";
import { readRegions } from "./maps.ts";
import { SystemError } from "../errors.ts";
import { classify, type PolicyOptions } from "./policy.ts";
import { PAGE_IS, PagemapScan, PM_SCAN } from "./pagescan.ts";
import type { Region } from "./region.ts";
import { markStacks, threadStacks } from "./stacks.ts";
import { isUserfaultfd, UFFDIO_REGISTER_MODE, Userfaultfd } from "./uffd.ts";
import { concatRuns, type Runs, runsOf, unionRuns } from "./run_sets.ts";

/**
 * The features a tracking userfaultfd asks for: `UFFD_FEATURE_WP_ASYNC` only. Not `WP_UNPOPULATED`: its
 * markers on never-populated pages read as swap entries in the pagemap, so a checkpoint would take them for
 * data and read them in (populating them); without it a first write to such a page installs a page that is not
 * write-protected, which the scan reports as written all the same (a first read is reported too: a page more,
 * never a miss).
 */
export const TRACKING_FEATURES: bigint = UFFD_FEATURE.WP_ASYNC;

/** Options of {@link trackProcess}. */
export interface TrackOptions extends PolicyOptions {
  /**
   * Another process only: leave the userfaultfd open in the target (its number is
   * {@link ProcessTracking.targetFd}), so the tracking outlives this process; a later one takes it back with
   * {@link adoptTracking}. Default false (the descriptor lives only here: tracking ends when it is closed).
   */
  keepInTarget?: boolean;
  /** Track only the persistable regions this accepts (default: all of them). */
  filter?: (r: Region) => boolean;
  /** The target, already frozen by the caller (else it is frozen briefly to create the userfaultfd). */
  frozen?: Frozen;
}

/** What {@link ProcessTracking.written} found. */
export interface WrittenPages {
  /** Runs of pages written since the last arming, in tracked regions (sorted, merged). */
  runs: Runs;
  /**
   * Persistable regions that were not tracked (mapped or moved since arming, or refused by the kernel): every
   * page of them counts as written.
   */
  untracked: Region[];
  /** `runs` and every untracked region together: what may differ from the memory at the last arming. */
  all: Runs;
}

/** Whether this kernel can track writes (`UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN`), and if not, why. */
export function trackingUnavailable(): string | undefined {
  const c = capabilities();
  if (!c.userfaultfd) return "userfaultfd is not allowed here";
  if (!c.wpAsync || !c.pagemapScan) {
    return "this kernel lacks UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN (Linux 6.7+)";
  }
  return undefined;
}

/**
 * Write tracking on every persistable region of a process. Disposable: `close()` closes this process's
 * descriptor (when the target keeps its own, the tracking goes on there; {@link ProcessTracking.release}
 * ends it).
 */
export class ProcessTracking implements Disposable {
  /** The process. */
  readonly pid: number | "self";
  /** The userfaultfd, held here. */
  readonly uffd: Userfaultfd;
  /** The descriptor's number in the target when it keeps one, else -1. */
  readonly targetFd: number;
  readonly #policy: PolicyOptions;
  readonly #filter: (r: Region) => boolean;
  readonly #pagemap: number;
  readonly #path: string;
  readonly #scan = new PagemapScan();
  #closed = false;

  /** @internal Use {@link trackProcess} or {@link adoptTracking}. */
  constructor(uffd: Userfaultfd, policy: PolicyOptions, filter: (r: Region) => boolean) {
    this.uffd = uffd;
    this.pid = uffd.pid;
    this.targetFd = uffd.targetFd;
    this.#policy = policy;
    this.#filter = filter;
    this.#path = `/proc/${this.pid}/pagemap`;
    this.#pagemap = open(this.#path, O.RDONLY | O.CLOEXEC);
  }

  /**
   * The persistable regions now (the policy's, after the filter), from `maps`: without the `smaps` facts the
   * policy keeps a few regions a checkpoint skips (a private file mapping with no private page, a
   * `MADV_DONTDUMP` one); they are tracked too, which costs nothing a rollback or a checkpoint would use.
   */
  regions(): Region[] {
    const regions = readRegions(this.pid);
    return classify(markStacks(regions, threadStacks(this.pid, regions)), this.#policy)
      .filter((d) => d.persist && this.#filter(d.region)).map((d) => d.region);
  }

  /**
   * The pages written since the last arming, and (by default) armed again: for each tracked region one
   * `PAGEMAP_SCAN` walk that reports `PAGE_IS_WRITTEN` pages and write-protects them in the same walk.
   * Persistable regions that are not tracked (mapped or moved since) are reported whole in `untracked`, and
   * with `rearm` registered and armed, so from now on they are tracked.
   *
   * @param opts `rearm: false` to look without re-arming (and without registering anything); `regions` to
   *   scan only these (sorted, disjoint: e.g. a checkpoint's kept regions or an image's, which the caller has
   *   read already) instead of reading the process's map again.
   * @returns The written runs and the untracked regions.
   * @throws {CryoError} When tracking is closed.
   */
  written(opts: { rearm?: boolean; regions?: readonly Region[] } = {}): WrittenPages {
    if (this.#closed) {
      throw new CryoError(`Cannot read the pages written in ${this.#who()}: tracking is closed`);
    }
    const rearm = opts.rearm ?? true;
    const written: Runs[] = [];
    const untracked: Region[] = [];
    for (const r of opts.regions ?? this.regions()) {
      try {
        written.push(this.#scanRegion(r.start, r.end, rearm));
      } catch (e) {
        // PM_SCAN_CHECK_WPASYNC: a region not registered for async write-protection is refused with EPERM.
        if (!(e instanceof SystemError && e.code === "EPERM")) throw e;
        untracked.push(r);
        if (rearm) this.#arm(r);
      }
    }
    const runs = concatRuns(written); // the regions are in address order, disjoint
    return { runs, untracked, all: unionRuns(runs, runsOf(untracked)) };
  }

  /**
   * Arm every persistable region (or only `regions`): forget what was written so far.
   *
   * @param regions Arm only these (sorted, disjoint), as {@link written} scans them.
   */
  arm(regions?: readonly Region[]): void {
    this.written({ rearm: true, regions });
  }

  #scanRegion(start: bigint, end: bigint, rearm: boolean): Runs {
    return this.#scan.runs(this.#pagemap, start, end, false, this.#path, this.pid, {
      flags: (rearm ? PM_SCAN.WP_MATCHING : 0n) | PM_SCAN.CHECK_WPASYNC,
      categoryInverted: 0n,
      categoryMask: PAGE_IS.WRITTEN,
      categoryAnyof: PAGE_IS.PRESENT | PAGE_IS.SWAPPED, // never a none pte: see TRACKING_FEATURES
      returnMask: PAGE_IS.WRITTEN,
    });
  }

  /** Register a region and write-protect it; a region the kernel refuses stays untracked (reported whole). */
  #arm(r: Region): void {
    try {
      this.uffd.register(r.start, r.end - r.start, UFFDIO_REGISTER_MODE.WP);
    } catch {
      return; // e.g. a region another userfaultfd of the process registered: counted as written each time
    }
    this.#scanRegion(r.start, r.end, true);
  }

  #who(): string {
    return this.pid === "self" ? "this process" : `pid ${this.pid}`;
  }

  /**
   * End the tracking in the target too: close its descriptor there by an injected `close` (the kernel then
   * unregisters every region). The target must be frozen by `frozen`.
   *
   * @param frozen The frozen target.
   */
  release(frozen: Frozen): void {
    if (this.targetFd >= 0 && isUserfaultfd(frozen.pid, this.targetFd)) {
      using inj = inject(frozen);
      inj.closeFd(this.targetFd);
    }
    this.close();
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Close this process's descriptor (and the pagemap). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#pagemap);
    this.uffd.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Track the writes of process `pid` (or of this process, `"self"`): create a userfaultfd with
 * {@link TRACKING_FEATURES} (inside the target, by injection, for another
 * process), register every persistable region for write-protection and arm it.
 *
 * @example Pages a child wrote since arming
 * ```ts ignore
 * using tracking = trackProcess(pid);
 * // … the child runs …
 * const { runs, untracked } = tracking.written(); // and armed again
 * ```
 *
 * @param pid The process, or `"self"`.
 * @param opts Keep the descriptor in the target, which regions, an existing freeze.
 * @returns The tracking, armed.
 * @throws {CryoError} Naming what the kernel lacks.
 */
export function trackProcess(pid: number | "self", opts: TrackOptions = {}): ProcessTracking {
  const who = pid === "self" ? "this process" : `pid ${pid}`;
  requireCapabilities(`track writes in ${who}`, ["wpAsync", "pagemapScan"]);
  let uffd: Userfaultfd;
  if (pid === "self") {
    uffd = Userfaultfd.create({ features: TRACKING_FEATURES });
  } else {
    const frozen = opts.frozen ?? freeze(pid, { registers: false });
    try {
      using inj = inject(frozen);
      uffd = Userfaultfd.inTarget(inj, { features: TRACKING_FEATURES, keepInTarget: opts.keepInTarget });
    } finally {
      if (!opts.frozen) frozen.thaw();
    }
  }
  return armed(uffd, opts);
}

/**
 * Take back the tracking a process keeps (a userfaultfd left open in it by an earlier `trackProcess` with
 * `keepInTarget`): its written bits are those since that tracking was last armed.
 *
 * @param pid The process.
 * @param targetFd The descriptor's number in it.
 * @param opts Which regions.
 * @returns The tracking (not re-armed).
 * @throws {CryoError} When that descriptor is not a userfaultfd.
 */
export function adoptTracking(
  pid: number,
  targetFd: number,
  opts: PolicyOptions & { filter?: (r: Region) => boolean } = {},
): ProcessTracking {
  const uffd = Userfaultfd.adopt(pid, targetFd);
  return new ProcessTracking(uffd, opts, opts.filter ?? (() => true));
}

function armed(uffd: Userfaultfd, opts: TrackOptions): ProcessTracking {
  let t: ProcessTracking | undefined;
  try {
    t = new ProcessTracking(uffd, opts, opts.filter ?? (() => true));
    t.arm();
    return t;
  } catch (e) {
    if (t) t.close();
    else uffd.close();
    throw new CryoError(
      `Cannot track writes in ${uffd.pid === "self" ? "this process" : `pid ${uffd.pid}`}: ${
        (e as Error).message
      }`,
      { cause: e },
    );
  }
}
