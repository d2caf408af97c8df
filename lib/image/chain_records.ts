/**
 * The records of a chain of images resolved as one image's, walked a frame at a time: one cursor per image
 * over its records of absolute addresses (lib/image/records.ts reads them a frame at a time), and for each
 * address the newest image whose record (data or hole) covers it. A chain over a full image of 524,288 records
 * held every image's records as objects and the pieces between them: `flatten` of a chain of two peaked at
 * 1.8 GiB of RSS, `diff` of it at 3 GiB. The walk holds one frame of each image.
 *
 * Addresses are compared as numbers (user addresses are below 2^47, exact in a double, as lib/kernel/run_sets.ts
 * takes them): no bigint is made per step, one per record yielded that starts inside another's.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { hex } from "../hex.ts";
import { runsOf } from "../kernel/run_sets.ts";
import type { ImageRecord } from "./format.ts";
import type { MemoryLoader } from "./loader.ts";

/** A record of the resolved chain: a piece of one image's record. */
export interface ChainRecord {
  /** First address. */
  address: bigint;
  /** Bytes. */
  length: number;
  /** Data or hole. */
  kind: number;
  /** The image holding it (index into the chain's images, 0 = the tip). */
  image: number;
  /** The record it is a piece of. */
  record: ImageRecord;
}

/** One image's records of absolute addresses, walked forward: the current one, and its bounds as numbers. */
class Cursor {
  readonly #it: Iterator<ImageRecord>;
  /** The first record not yet passed (undefined when all are). */
  record: ImageRecord | undefined;
  /** Its first address. */
  start = 0;
  /** One past its last. */
  end = 0;

  constructor(loader: MemoryLoader) {
    this.#it = loader.index.segment(0);
    this.#next();
  }

  /** Pass the records that end at or before `pos`. */
  skipTo(pos: number): void {
    while (this.record && this.end <= pos) this.#next();
  }

  #next(): void {
    const n = this.#it.next();
    this.record = n.done ? undefined : n.value;
    if (this.record) {
      this.start = Number(this.record.address);
      this.end = this.start + this.record.length;
    }
  }
}

/**
 * Walk a chain's records as one image's: for every byte of the tip's absolute regions, the newest image whose
 * records cover it; each record clipped to where it holds (a newer image's record, or the regions' end, cuts it).
 *
 * @param images The chain's images, tip first (lib/image/chain.ts `ImageChain`).
 * @returns The records, in address order, not overlapping.
 * @throws {ImageError} When some byte of the tip's regions is covered by no image of the chain (when the walk
 *   reaches it).
 */
export function* walkChain(images: readonly MemoryLoader[]): Generator<ChainRecord> {
  const runs = runsOf(images[0].regions.filter((g) => !g.relocatable));
  const cursors = images.map((img) => new Cursor(img));
  for (let k = 0; k < runs.length; k += 2) {
    const runEnd = Number(runs[k + 1]);
    for (let pos = Number(runs[k]); pos < runEnd;) {
      // The newest image covering `pos` holds it up to its record's end or the next record of a newer image.
      let end = runEnd, found = -1;
      for (let i = 0; i < cursors.length; i++) {
        const c = cursors[i];
        c.skipTo(pos);
        if (!c.record) continue;
        if (c.start <= pos) {
          found = i;
          if (c.end < end) end = c.end;
          break;
        }
        if (c.start < end) end = c.start;
      }
      if (found < 0) {
        throw new ImageError(images[0].path, 0, `${hex(pos)}-${hex(end)} is in no image of its chain`);
      }
      const c = cursors[found];
      const r = c.record!;
      yield {
        address: pos === c.start ? r.address : BigInt(pos),
        length: end - pos,
        kind: r.kind,
        image: found,
        record: r,
      };
      pos = end;
    }
  }
}
