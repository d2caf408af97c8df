/**
 * The checks a restore makes of its target before the write phase, shared by `restore()` and
 * `restoreStream()`: is it the process the image was taken from (identity), and what must change in its layout
 * for the image to fit (a plan, or a refusal naming what cannot be recreated).
 *
 * @module
 */

import { IdentityMismatchError, LayoutMismatchError } from "../errors.ts";
import { decodeIdentity, identityDifferences, processIdentity } from "../kernel/identity.ts";
import { freeGap, type LayoutPlan, parkingBytes, planLayout } from "../kernel/layout_fix.ts";
import { decodeLayout, type RecordedRegion } from "../kernel/layout_section.ts";
import { readRegions } from "../kernel/maps.ts";
import { permsString, type Region } from "../kernel/region.ts";
import { threadStacks } from "../kernel/stacks.ts";
import type { ImageRegion } from "../image/format.ts";
import type { SourceInfo } from "../image/header.ts";

/**
 * Refuse a target that is not the image's process, unless forced. The image's `identity` section (pid, start
 * time, boot, executable) is compared when it has one; an older image's source block gives pid and boot id.
 *
 * @param pid The target.
 * @param path The image, for messages.
 * @param source The image's source block.
 * @param identity The image's `identity` section, if any.
 * @param force Go ahead anyway (a fresh process of the same program).
 * @returns The differences (empty when it is the same process; non-empty only when forced).
 * @throws {IdentityMismatchError} When it differs and `force` is not set (nothing written).
 */
export function checkIdentity(
  pid: number,
  path: string,
  source: SourceInfo,
  identity: Uint8Array | undefined,
  force = false,
): string[] {
  const image = identity ? decodeIdentity(identity, path) : {
    pid: source.pid,
    startTicks: 0n,
    bootId: source.bootId,
    exePath: "",
    exeDevice: 0n,
    exeInode: 0n,
  };
  const differences = identityDifferences(image, processIdentity(pid));
  if (differences.length && !force) throw new IdentityMismatchError(pid, path, differences);
  return differences;
}

/** A layout plan with the place for the injector's scratch page. */
export interface RestoreLayout extends LayoutPlan {
  /** Where the scratch page goes: out of the way of every change. */
  scratchAt: bigint;
  /**
   * The image regions whose old pages a full restore moves aside whole before writing ({@link asideRegions}),
   * and where (a free range for all of them, each followed by a free page; 0n: nowhere, they are journaled).
   */
  aside: { start: bigint; end: bigint }[];
  /** Where {@link aside} goes (0n for nowhere). */
  asideAt: bigint;
}

/** Regions smaller than this are journaled page by page (moving one aside saves less than it costs). */
const ASIDE_MIN = 1n << 20n;

/**
 * The image regions a full restore may empty before writing, their old pages moved aside whole (`mremap` with
 * `MREMAP_DONTUNMAP`, undone by moving them back): private anonymous memory, the heap and private file
 * mappings, writable, of at least 1 MiB. Emptied, such a region reads as a hole does (zero, or its file's
 * contents), so only the image's data is written, and nothing is read, compared or saved.
 *
 * @param image The image's regions.
 * @returns The ranges.
 */
export function asideRegions(image: readonly ImageRegion[]): { start: bigint; end: bigint }[] {
  return image
    .filter((g) =>
      !g.relocatable && !g.perms.shared && g.perms.write && g.end - g.start >= ASIDE_MIN &&
      (g.kind === "anonymous" || g.kind === "heap" || g.kind === "named" || g.kind === "file")
    )
    .map((g) => ({ start: g.start, end: g.end }));
}

/**
 * Plan the layout changes that make the frozen target `pid` fit the image.
 *
 * @param pid The frozen target.
 * @param path The image, for messages.
 * @param regions The image's region table.
 * @param layout The image's `layout` section (the source's whole map), if any.
 * @param ending Threads the restore ends first: their stacks are not kept.
 * @returns The plan.
 * @throws {LayoutMismatchError} When something cannot be recreated (nothing written).
 */
export function planRestoreLayout(
  pid: number,
  path: string,
  regions: readonly ImageRegion[],
  layout: Uint8Array | undefined,
  ending: readonly number[] = [],
): RestoreLayout {
  const current = joinHeap(readRegions(pid));
  const recorded: RecordedRegion[] | undefined = layout ? decodeLayout(layout, path) : undefined;
  const image = joinHeap(regions.filter((g) => !g.relocatable));
  const keep = threadStacks(pid, current).filter((s) => !ending.includes(s.tid)).map((s) => s.region);
  const plan = planLayout(image, current, { recorded, keep });
  if (plan.refusals.length) throw new LayoutMismatchError(`pid ${pid}`, plan.refusals);
  const occupied = [...current, ...image, ...(recorded ?? [])];
  const scratchAt = freeGap(occupied, 1n << 16n);
  const parking = parkingBytes(plan.changes);
  const parkAt = parking && scratchAt
    ? freeGap([...occupied, { start: scratchAt, end: scratchAt + (1n << 16n) }], parking)
    : 0n;
  const aside = asideRegions(image);
  const asideBytes = aside.reduce((n, r) => n + r.end - r.start + 4096n, 0n);
  const asideAt = asideBytes && scratchAt
    ? freeGap([
      ...occupied,
      { start: scratchAt, end: scratchAt + (1n << 16n) },
      ...(parkAt ? [{ start: parkAt, end: parkAt + parking }] : []),
    ], asideBytes)
    : 0n;
  return { ...plan, scratchAt, parkAt, aside, asideAt };
}

/**
 * The heap as one region: adjacent `[heap]` regions of the same protection joined. The kernel keeps the part
 * of the heap that `brk` added since a userfaultfd registered it (write tracking) as a region of its own, until
 * the next arming registers it too; the heap is put back with `brk` as a whole all the same.
 *
 * @param regions Regions in address order.
 * @returns The regions, the heap's joined.
 */
export function joinHeap<R extends Region>(regions: readonly R[]): R[] {
  const out: R[] = [];
  for (const r of regions) {
    const last = out[out.length - 1];
    if (
      last && last.kind === "heap" && r.kind === "heap" && last.end === r.start &&
      permsString(last.perms) === permsString(r.perms)
    ) {
      out[out.length - 1] = { ...last, end: r.end };
    } else out.push(r);
  }
  return out;
}
