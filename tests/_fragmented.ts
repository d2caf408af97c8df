/**
 * The child memory of the tests that bound cryo's peak RSS on an image of very many records (issue 19): a region
 * with every other page written (`fill … stride:2`), which a checkpoint makes into one-page data records with a
 * hole between each (524,288 records for 2 GiB).
 *
 * @module
 */

import type { Target } from "./_target.ts";

/** The child fills and sums 2 GiB: a minute or more when the suite runs in parallel on a loaded machine. */
export const SUM_MS = 600_000;

/** A fragmented region of a test's child. */
export interface Fragmented {
  /** Its first address. */
  address: bigint;
  /** Write every `stride`-th page (default 2) of its first `bytes` (default all) with data from `seed`. */
  fill(seed: number, bytes?: number, stride?: number): Promise<string>;
  /** The child's FNV-1a of the whole region. */
  sum(): Promise<string>;
}

/**
 * Map `bytes` in `target` and write every other page of it (seed 1).
 *
 * @param target The test's child.
 * @param bytes The region's size.
 * @returns The region, to fill again and sum.
 */
export async function fragmented(target: Target, bytes: number): Promise<Fragmented> {
  const address = await target.map(bytes);
  const at = `0x${address.toString(16)}`;
  const region: Fragmented = {
    address,
    fill: (seed, n = bytes, stride = 2) => target.cmd(`fill ${at} ${n} stride:${stride} ${seed}`, SUM_MS),
    sum: () => target.cmd(`sum ${at} ${bytes}`, SUM_MS),
  };
  await region.fill(1);
  return region;
}
