/**
 * The index: records sorted by `(segment, address)` with a comparator that returns a sign, binary search by
 * address, and rejection of out-of-order or overlapping records.
 *
 * @module
 */

import { compareAddress, type Region } from "../kernel/region.ts";
import { hex } from "../hex.ts";
import { type ImageRecord, KIND } from "./format.ts";

const U64_END = 1n << 64n;

/**
 * Compare two records by segment, then address: -1, 0 or 1 (never a difference).
 *
 * @param a A record.
 * @param b Another.
 * @returns The sign of `a - b`.
 */
export function compareRecord(
  a: Pick<ImageRecord, "segment" | "address">,
  b: Pick<ImageRecord, "segment" | "address">,
): -1 | 0 | 1 {
  if (a.segment !== b.segment) return a.segment < b.segment ? -1 : 1;
  return compareAddress(a.address, b.address);
}

/** One past the last address of a record (may be 2^64 for a record ending at the top of the space). */
export function recordEnd(r: Pick<ImageRecord, "address" | "length">): bigint {
  return r.address + BigInt(r.length);
}

/**
 * Why `records` is not a valid index (sorted by `(segment, address)`, non-empty records, no overlap, no
 * wrap past 2^64), or `undefined` when it is.
 *
 * @param records The records, in index order (an array, or lib/image/records.ts walking an image's frames).
 * @returns The index of the first bad record and what is wrong with it, or undefined.
 */
export function indexProblem(records: Iterable<ImageRecord>): { at: number; message: string } | undefined {
  return IndexCheck.of(records).problem;
}

/**
 * {@link indexProblem} a record at a time, for a reader that learns the records as it goes (the stream reader):
 * it keeps only the record before and the sum of the data records' lengths.
 */
export class IndexCheck {
  #i = 0;
  #p: ImageRecord | undefined;
  /** Where {@link #p} ends: computed once a record (the bigints per record were garbage of a long walk). */
  #pEnd = 0n;
  /** Bytes of the data records added. */
  dataBytes = 0;
  /** The first problem found (records added after it are not checked). */
  problem: { at: number; message: string } | undefined;

  /**
   * Check `records` in order, up to the first problem.
   *
   * @param records The records, in index order.
   * @returns The check: its `problem`, and the data bytes of the records before it.
   */
  static of(records: Iterable<ImageRecord>): IndexCheck {
    const check = new IndexCheck();
    for (const r of records) if (check.add(r)) break;
    return check;
  }

  /** Records added. */
  get count(): number {
    return this.#i;
  }

  /**
   * Check the next record against the one before.
   *
   * @param r The record.
   * @returns What is wrong with it (and its position), or undefined.
   */
  add(r: ImageRecord): { at: number; message: string } | undefined {
    if (this.problem) return this.problem;
    return (this.problem = this.#check(r));
  }

  #check(r: ImageRecord): { at: number; message: string } | undefined {
    const i = this.#i, p = this.#p;
    if (r.length <= 0) return { at: i, message: `record ${i} at ${hex(r.address)} is empty` };
    const end = recordEnd(r);
    if (end > U64_END) return { at: i, message: `record ${i} at ${hex(r.address)} wraps past 2^64` };
    if (p) {
      const c = compareRecord(p, r);
      if (c > 0) {
        return {
          at: i,
          message: `record ${i} at ${hex(r.address)} is out of order (after ${hex(p.address)})`,
        };
      }
      if (p.segment === r.segment && this.#pEnd > r.address) {
        return {
          at: i,
          message: `record ${i} at ${hex(r.address)} overlaps record ${i - 1} ` +
            `(${hex(p.address)}-${hex(this.#pEnd)})`,
        };
      }
    }
    if (r.kind === KIND.DATA) this.dataBytes += r.length;
    this.#p = r;
    this.#pEnd = end;
    this.#i++;
    return undefined;
  }
}

/**
 * Binary search: the position of the record containing `address` in `segment`, or `-(insertion point) - 1`.
 *
 * @param records A valid index.
 * @param address The address (or segment offset).
 * @param segment The segment (0 for absolute addresses).
 * @returns The record's position, or a negative value when no record contains the address.
 */
export function findRecord(records: readonly ImageRecord[], address: bigint, segment = 0): number {
  let lo = 0, hi = records.length - 1;
  const key = { segment, address };
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const r = records[mid];
    if (compareRecord(r, key) > 0) hi = mid - 1;
    else if (r.segment === segment && recordEnd(r) > address) return mid;
    else lo = mid + 1;
  }
  return -lo - 1;
}

/**
 * The records that intersect `[start, end)` in `segment`, in order.
 *
 * @param records A valid index.
 * @param start First address.
 * @param end One past the last.
 * @param segment The segment (0 for absolute addresses).
 * @returns The intersecting records.
 */
export function recordsIn(
  records: readonly ImageRecord[],
  start: bigint,
  end: bigint,
  segment = 0,
): ImageRecord[] {
  let i = findRecord(records, start, segment);
  if (i < 0) i = -i - 1;
  const out: ImageRecord[] = [];
  for (; i < records.length; i++) {
    const r = records[i];
    if (r.segment !== segment || r.address >= end) break;
    out.push(r);
  }
  return out;
}

/**
 * The region containing the whole of `[address, address + length)`, or undefined.
 *
 * @param regions Absolute regions.
 * @param r The record.
 * @returns The region.
 */
export function regionOf(
  regions: readonly Region[],
  r: Pick<ImageRecord, "address" | "length">,
): Region | undefined {
  const end = recordEnd(r);
  return regions.find((g) => g.start <= r.address && end <= g.end);
}

/** Total decoded bytes of data records. */
export function dataBytes(records: readonly ImageRecord[]): number {
  let n = 0;
  for (const r of records) if (r.kind === KIND.DATA) n += r.length;
  return n;
}
