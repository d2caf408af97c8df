/**
 * The policy's smaps facts read before the freeze, for checkpoints whose stop window should cost what changed
 * (tracked and incremental ones): `/proc/<pid>/smaps` walks every page table of the process (10-20 ms for
 * 1 GiB here), so it is read while the target still runs, and only `maps` is read once it is frozen. Each
 * region of the frozen map takes the `VmFlags` its identical line had before (same range, protection, offset,
 * device, inode and path); if any region has no such line (mapped, moved or changed in between), smaps is read
 * again, frozen, as a full checkpoint does. The private dirty sizes, which any write may change, are not taken
 * from before: a private file mapping is kept when the pagemap shows it private pages at the freeze (what its
 * smaps `Anonymous` and `Swap` would say then). What can still be a moment old is a `MADV_DONTDUMP` (`dd`) set
 * or cleared in between without changing the region's line: the region is persisted or left out as the
 * program had asked just before the freeze.
 *
 * @module
 */

import { readRegions, type SmapsRegion } from "../kernel/maps.ts";
import { classify, type Decision, type PolicyOptions } from "../kernel/policy.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import { permsString, type Region } from "../kernel/region.ts";
import { markStacks, markStacksAt, threadStacks } from "../kernel/stacks.ts";

/** The policy's reason for a private file mapping kept by default (lib/kernel/policy.ts). */
const FILE_KEPT = "private file mapping: its private dirty pages";

const lineOf = (r: Region) =>
  `${r.start}-${r.end} ${permsString(r.perms)} ${r.offset} ${r.device} ${r.inode} ${r.path}`;

/**
 * Read the smaps facts of `pid` now, before it is frozen.
 *
 * @param pid The process.
 * @returns Its regions with their smaps facts.
 */
export function readEarlyFacts(pid: number): SmapsRegion[] {
  return readRegions(pid, { smaps: true });
}

/**
 * The policy's decisions for the frozen `pid`, with the `VmFlags` read before the freeze (see the module doc).
 *
 * @param pid The frozen process.
 * @param early Its regions from {@link readEarlyFacts}.
 * @param opts The policy's options.
 * @param sps The threads' stack pointers, when the freeze read their registers: the stacks are found from them
 *   rather than from `/proc/<pid>/task` (two reads per thread).
 * @returns One decision per region, as `regionDecisions` gives them.
 */
export function decisionsWithEarlyFacts(
  pid: number,
  early: readonly SmapsRegion[],
  opts: PolicyOptions = {},
  sps?: readonly bigint[],
): Decision<Region>[] {
  const before = new Map(early.map((r) => [lineOf(r), r]));
  const now = readRegions(pid);
  if (now.some((r) => !before.has(lineOf(r)))) {
    const regions = readRegions(pid, { smaps: true }); // the layout changed in between: read it frozen
    return classify(sps ? markStacksAt(regions, sps) : markStacks(regions, threadStacks(pid, regions)), opts);
  }
  // VmFlags only: with them the policy applies its flag rules, and keeps every private file mapping.
  const regions = now.map((r) => ({ ...r, vmFlags: before.get(lineOf(r))!.vmFlags }));
  const marked = sps ? markStacksAt(regions, sps) : markStacks(regions, threadStacks(pid, regions));
  const decisions: Decision<Region>[] = classify(marked, opts);
  using pm = Pagemap.open(pid);
  return decisions.map((d) => {
    if (!d.persist || d.reason !== FILE_KEPT) return d;
    if (pm.runs(d.region.start, d.region.end, { anonOnly: true }).length) return d;
    return { ...d, persist: false, reason: "private file mapping with no private dirty pages" };
  });
}
