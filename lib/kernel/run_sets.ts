/**
 * Set operations on sorted runs `[start0, end0, start1, end1, …]` (disjoint, ascending, as the page scans and
 * {@link RunBuilder} produce them): union, intersection and difference, each one merge of the two lists. Write
 * tracking and incremental images combine "written since", "present now" and "data in the image" with them.
 *
 * @module
 */

import { RunBuilder } from "./runs.ts";

/** Runs as `[start0, end0, start1, end1, …]`, sorted and disjoint. */
export type Runs = BigUint64Array;

/**
 * Runs from `{ start, end }` ranges in any order (they may overlap): sorted and merged.
 *
 * @param ranges The ranges.
 * @returns Sorted, merged runs.
 */
export function runsOf(ranges: readonly { start: bigint; end: bigint }[]): Runs {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) =>
    a.start < b.start ? -1 : a.start > b.start ? 1 : 0
  );
  const b = new RunBuilder();
  for (const r of sorted) b.add(Number(r.start), Number(r.end));
  return b.finish();
}

/**
 * Every address in `a` or in `b`.
 *
 * @param a Runs.
 * @param b Runs.
 * @returns Sorted, merged runs.
 */
export function unionRuns(a: Runs, b: Runs): Runs {
  const out = new RunBuilder();
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    const takeA = j >= b.length || (i < a.length && a[i] <= b[j]);
    if (takeA) {
      out.add(Number(a[i]), Number(a[i + 1]));
      i += 2;
    } else {
      out.add(Number(b[j]), Number(b[j + 1]));
      j += 2;
    }
  }
  return out.finish();
}

/**
 * Every address in both `a` and `b`.
 *
 * @param a Runs.
 * @param b Runs.
 * @returns Sorted runs.
 */
export function intersectRuns(a: Runs, b: Runs): Runs {
  const out = new RunBuilder();
  let i = 0, j = 0;
  while (i < a.length && j < b.length) {
    const s = a[i] > b[j] ? a[i] : b[j];
    const e = a[i + 1] < b[j + 1] ? a[i + 1] : b[j + 1];
    if (s < e) out.add(Number(s), Number(e));
    if (a[i + 1] < b[j + 1]) i += 2;
    else j += 2;
  }
  return out.finish();
}

/**
 * Every address in `a` and not in `b`.
 *
 * @param a Runs.
 * @param b Runs taken away.
 * @returns Sorted runs.
 */
export function subtractRuns(a: Runs, b: Runs): Runs {
  const out = new RunBuilder();
  let j = 0;
  for (let i = 0; i < a.length; i += 2) {
    let s = a[i];
    const e = a[i + 1];
    while (j < b.length && b[j + 1] <= s) j += 2;
    for (let k = j; k < b.length && b[k] < e; k += 2) {
      if (b[k] > s) out.add(Number(s), Number(b[k]));
      if (b[k + 1] > s) s = b[k + 1];
      if (s >= e) break;
    }
    if (s < e) out.add(Number(s), Number(e));
  }
  return out.finish();
}

/**
 * Lists of runs that follow each other (each list's runs lie before the next list's) as one list.
 *
 * @param lists The lists, in address order.
 * @returns Their runs, in order.
 */
export function concatRuns(lists: readonly Runs[]): Runs {
  const out = new BigUint64Array(lists.reduce((n, l) => n + l.length, 0));
  let at = 0;
  for (const l of lists) {
    out.set(l, at);
    at += l.length;
  }
  return out;
}

/**
 * Bytes the runs cover.
 *
 * @param runs Runs.
 * @returns The total length.
 */
export function runBytes(runs: Runs): number {
  let n = 0;
  for (let i = 0; i < runs.length; i += 2) n += Number(runs[i + 1] - runs[i]);
  return n;
}
