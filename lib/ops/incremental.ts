/**
 * What a tracked or incremental checkpoint persists (lib/ops/checkpoint.ts calls it while the target is
 * frozen):
 *
 * - `track`: arm write tracking (kept in the target, lib/ops/tracked.ts) at this checkpoint, under a new token
 *   recorded in the image's `tracking` section and the marker, so that a later rollback to this image, or an
 *   incremental checkpoint over it, can trust the written bits.
 * - `parent`: persist only what changed since the parent image: the pages the tracking reports written since
 *   the parent (when the process holds the arming recorded in the parent), else the pages whose contents
 *   differ from the parent's (read and compared: a correct fallback that costs a full read), plus, either way,
 *   the parent's data pages that are no longer populated (they become holes) and every region the parent does
 *   not cover. Each changed range is stored whole (data and holes); every other byte is the parent's.
 *
 * @module
 */

import { addrOf, libc, PAGE_SIZE, processVmRead, ptrOf } from "../../ffi/libc.ts";
import { CryoError } from "../errors.ts";
import type { Frozen } from "../kernel/freeze.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import type { Decision } from "../kernel/policy.ts";
import type { Region } from "../kernel/region.ts";
import {
  concatRuns,
  intersectRuns,
  runBytes,
  type Runs,
  runsOf,
  subtractRuns,
  unionRuns,
} from "../kernel/run_sets.ts";
import { RunBuilder } from "../kernel/runs.ts";
import type { ProcessTracking } from "../kernel/tracking.ts";
import { trackingUnavailable, trackProcess } from "../kernel/tracking.ts";
import type { Codec } from "../codecs/codec.ts";
import { encodeParentSection, ImageChain, type ParentLink, parentLink } from "../image/chain.ts";
import type { ChainRecord } from "../image/chain_records.ts";
import { KIND } from "../image/format.ts";
import {
  encodeTrackingSection,
  readTrackingMark,
  removeTrackingMark,
  trackedSince,
  TRACKING_SECTION,
  type TrackingMark,
  trackingSince,
  writeTrackingMark,
} from "./tracked.ts";
import { PARENT_SECTION } from "../image/chain.ts";
import { adoptTracking } from "../kernel/tracking.ts";
import { isUserfaultfd } from "../kernel/uffd.ts";

/**
 * What to persist of one region: the ranges it covers (`within`), each stored whole: its populated `runs` as data,
 * the rest as holes.
 */
export interface RegionPlan {
  /** The region. */
  region: Region;
  /** The ranges covered, as runs (empty: nothing of the region is stored). */
  within: Runs;
  /** The populated pages inside them, as runs. */
  runs: Runs;
  /** Bytes of runs. */
  bytes: number;
}

/** How an incremental or tracked checkpoint found what changed. */
export interface IncrementalInfo {
  /** The parent image, when incremental. */
  parent?: string;
  /** Images in the chain below this one (1 for a parent that is a full image). */
  chain?: number;
  /** Whether the changed pages came from write tracking (else from comparing with the parent). */
  tracked: boolean;
  /** Why tracking was not used, when it was not. */
  reason?: string;
  /** Whether tracking was armed at this checkpoint (the image records it). */
  armed: boolean;
  /** Bytes of the ranges stored (data and holes), against the regions' size. */
  changedBytes: number;
}

/** A plan in the making: opened before the freeze, used while frozen, closed after. */
export class IncrementalPlan implements Disposable {
  readonly #chain?: ImageChain;
  readonly #link?: ParentLink;
  readonly #track: boolean;
  #tracking?: ProcessTracking;
  #mark?: TrackingMark;
  /** What was found (filled by {@link plan}). */
  readonly info: IncrementalInfo;

  private constructor(track: boolean, chain?: ImageChain, link?: ParentLink, parent?: string) {
    this.#track = track;
    this.#chain = chain;
    this.#link = link;
    this.info = { parent, chain: chain?.images.length, tracked: false, armed: false, changedBytes: 0 };
  }

  /**
   * Open the parent's chain before the target is frozen: its index and sections (checksummed), and each
   * parent's content identity. Its data is verified in full only when the changed pages will be found by
   * comparing with it: with the tracking armed at the parent, not one byte of the parent's data is read (the
   * new image names the parent by digest, and a restore or flatten of the chain verifies every image of it).
   *
   * @param pid The target.
   * @param out Where the new image goes (the parent's link is recorded relative to it).
   * @param opts `parent` image, `track`, and codecs to read the parent with.
   * @returns The plan.
   */
  static async open(
    pid: number,
    out: string,
    opts: { parent?: string; track?: boolean; codecs?: readonly Codec[] },
  ): Promise<IncrementalPlan> {
    if (!opts.parent) return new IncrementalPlan(opts.track ?? false);
    const chain = await ImageChain.open(opts.parent, { codecs: opts.codecs, verify: false });
    try {
      if (chain.tip.encrypted) {
        throw new CryoError(`Cannot checkpoint over ${opts.parent}: encrypted parents are not supported`);
      }
      const since = trackedSince(pid, chain.tip.section(TRACKING_SECTION), opts.parent);
      if ("reason" in since) await chain.verify(); // its data will be read and compared
    } catch (e) {
      chain.close();
      throw e;
    }
    return new IncrementalPlan(opts.track ?? false, chain, parentLink(opts.parent, out), opts.parent);
  }

  /** Whether the image is incremental. */
  get incremental(): boolean {
    return this.#chain !== undefined;
  }

  /**
   * Decide what to persist of each kept region, the target frozen: read (and re-arm) the tracking, or compare
   * with the parent.
   *
   * @param pid The target.
   * @param kept The regions the policy keeps.
   * @param frozen The freeze.
   * @returns The plan per region.
   */
  async plan(pid: number, kept: readonly Decision<Region>[], frozen: Frozen): Promise<RegionPlan[]> {
    const present = new Map<Region, Runs>();
    {
      using pm = Pagemap.open(pid);
      for (const d of kept) {
        present.set(d.region, pm.runs(d.region.start, d.region.end, { anonOnly: d.pages === "anon" }));
      }
    }
    let changed: Runs | undefined;
    const regions = kept.map((d) => d.region);
    if (this.#chain) {
      const since = this.#trackingSinceParent(pid);
      if ("tracking" in since) {
        this.#tracking = since.tracking;
        // One walk reads the written bits and, when this checkpoint arms the tracking, arms them again: the new
        // token is recorded first, so that from then on no image's token matches bits that were reset.
        const rearm = this.#track && this.#newArming(pid);
        changed = this.#tracking.written({ rearm, regions }).all;
        this.info.armed = rearm;
        this.info.tracked = true;
      } else {
        this.info.reason = since.reason;
        await this.#chain.verify(); // done before the freeze unless the tracking was lost since (runs once)
        changed = await this.#differing(kept, present, pid);
      }
      const chainData = this.#chain.dataRuns();
      const populated = concatRuns([...present.values()]); // the regions are in address order, disjoint
      const parentRegions = runsOf(this.#chain.tip.regions.filter((g) => !g.relocatable));
      changed = unionRuns(changed, subtractRuns(chainData, populated)); // released since: holes now
      changed = unionRuns(changed, subtractRuns(runsOf(regions), parentRegions)); // new
    }
    if (this.#track && !this.info.armed) this.#arm(pid, frozen, regions);
    const plans: RegionPlan[] = [];
    for (const d of kept) {
      const g = d.region;
      const whole = BigUint64Array.of(g.start, g.end);
      const within = changed ? intersectRuns(changed, whole) : whole;
      const runs = intersectRuns(present.get(g)!, within);
      this.info.changedBytes += runBytes(within);
      plans.push({ region: g, within, runs, bytes: runBytes(runs) });
    }
    return plans;
  }

  /** The tracking whose bits are those since the parent was taken, or why there is none. */
  #trackingSinceParent(pid: number): { tracking: ProcessTracking } | { reason: string } {
    const section = this.#chain!.tip.section(TRACKING_SECTION);
    const found = trackingSince(pid, section, this.info.parent!);
    return found;
  }

  /** Record a new arming of the tracking held (its token in the marker, for the image's `tracking` section). */
  #newArming(pid: number): boolean {
    this.#mark = { fd: this.#tracking!.targetFd, token: crypto.randomUUID() };
    writeTrackingMark(pid, this.#mark);
    return true;
  }

  /**
   * Arm the tracking at this checkpoint under a new token: the one the process holds (the marker written
   * first, so a failure leaves no stale token), or a new one (any old marker removed first).
   */
  #arm(pid: number, frozen: Frozen, regions: readonly Region[]): void {
    const unavailable = trackingUnavailable();
    if (unavailable) {
      this.info.reason ??= unavailable;
      return;
    }
    if (!this.#tracking) {
      const mark = readTrackingMark(pid);
      if (mark && isUserfaultfd(pid, mark.fd)) this.#tracking = adoptTracking(pid, mark.fd);
      else {
        removeTrackingMark(pid); // its descriptor number may be the new userfaultfd's
        this.#tracking = trackProcess(pid, { keepInTarget: true, frozen });
      }
    }
    this.#newArming(pid);
    this.#tracking.arm(regions);
    this.info.armed = true;
  }

  /**
   * The pages of the kept regions whose contents differ from the parent chain's (read from the frozen target
   * a window at a time and compared page by page), and the parent's holes that are populated now with
   * something other than zeros.
   */
  async #differing(
    kept: readonly Decision<Region>[],
    present: Map<Region, Runs>,
    pid: number,
  ): Promise<Runs> {
    const chain = this.#chain!;
    const records = chain.records()[Symbol.iterator](); // walked once, forward, with the pages
    const next = () => {
      const n = records.next();
      return n.done ? undefined : n.value;
    };
    const page = PAGE_SIZE, P = BigInt(page);
    const window = new Uint8Array(4 << 20);
    const windowAt = addrOf(Deno.UnsafePointer.of(window));
    const zero = new Uint8Array(page);
    const zeroAt = ptrOf(addrOf(Deno.UnsafePointer.of(zero)));
    const out = new RunBuilder();
    let c = next();
    let decoded: { c: ChainRecord; bytes: Uint8Array } | undefined;
    const parentPage = async (a: bigint): Promise<Deno.PointerValue | undefined> => {
      while (c && c.address + BigInt(c.length) <= a) c = next();
      if (!c || c.address > a) return undefined; // not in the parent: counted as changed by the caller
      if (c.kind === KIND.HOLE) return zeroAt;
      const img = chain.images[c.image];
      if (c.record.codec === 0) {
        return ptrOf(addrOf(Deno.UnsafePointer.of(img.storedBytes(c.record))) + (a - c.record.address));
      }
      if (decoded?.c.record !== c.record) decoded = { c, bytes: await img.readRecord(c.record) };
      return ptrOf(addrOf(Deno.UnsafePointer.of(decoded.bytes)) + (a - c.record.address));
    };
    for (const d of kept) {
      const runs = present.get(d.region)!;
      for (let i = 0; i < runs.length; i += 2) {
        for (let at = runs[i]; at < runs[i + 1];) {
          const n = runs[i + 1] - at < BigInt(window.length) ? runs[i + 1] - at : BigInt(window.length);
          processVmRead(pid, windowAt, at, n);
          for (let off = 0n; off < n; off += P) {
            const a = at + off;
            const theirs = await parentPage(a);
            const mine = ptrOf(windowAt + off);
            if (theirs === undefined || libc.memcmp(mine, theirs, BigInt(page)) !== 0) {
              out.add(Number(a), Number(a + P));
            }
          }
          at += n;
        }
      }
    }
    return out.finish();
  }

  /** The sections this checkpoint adds: `parent` and `tracking`. */
  sections(): [string, Uint8Array][] {
    const s: [string, Uint8Array][] = [];
    if (this.#link) s.push([PARENT_SECTION, encodeParentSection(this.#link)]);
    if (this.#mark) s.push([TRACKING_SECTION, encodeTrackingSection(this.#mark)]);
    return s;
  }

  /** Close the parent's chain and the tracking handle (the target keeps its own). Idempotent. */
  close(): void {
    this.#chain?.close();
    this.#tracking?.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
