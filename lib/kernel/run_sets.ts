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
 * Runs as numbers (user addresses are below 2^47, exact in a double), read through a `Uint32Array` view so that
 * no bigint is made per bound: the set operations below run on these.
 */
function numbers(runs: Runs): Float64Array {
  const w = new Uint32Array(runs.buffer, runs.byteOffset, runs.length * 2);
  const out = new Float64Array(runs.length);
  for (let k = 0; k < runs.length; k++) out[k] = w[2 * k] + w[2 * k + 1] * 4294967296;
  return out;
}

/**
 * Every address in `a` or in `b`.
 *
 * @param a Runs.
 * @param b Runs.
 * @returns Sorted, merged runs.
 */
export function unionRuns(a: Runs, b: Runs): Runs {
  const x = numbers(a), y = numbers(b);
  const out = new RunBuilder();
  let i = 0, j = 0;
  while (i < x.length || j < y.length) {
    const takeA = j >= y.length || (i < x.length && x[i] <= y[j]);
    if (takeA) {
      out.add(x[i], x[i + 1]);
      i += 2;
    } else {
      out.add(y[j], y[j + 1]);
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
  const x = numbers(a), y = numbers(b);
  const out = new RunBuilder();
  let i = 0, j = 0;
  while (i < x.length && j < y.length) {
    const s = x[i] > y[j] ? x[i] : y[j];
    const e = x[i + 1] < y[j + 1] ? x[i + 1] : y[j + 1];
    if (s < e) out.add(s, e);
    if (x[i + 1] < y[j + 1]) i += 2;
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
  const x = numbers(a), y = numbers(b);
  const out = new RunBuilder();
  let j = 0;
  for (let i = 0; i < x.length; i += 2) {
    let s = x[i];
    const e = x[i + 1];
    while (j < y.length && y[j + 1] <= s) j += 2;
    for (let k = j; k < y.length && y[k] < e; k += 2) {
      if (y[k] > s) out.add(s, y[k]);
      if (y[k + 1] > s) s = y[k + 1];
      if (s >= e) break;
    }
    if (s < e) out.add(s, e);
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
