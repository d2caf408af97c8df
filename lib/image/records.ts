/**
 * The records of an opened image, read a frame at a time: {@link IndexRecords} keeps only the frame directory
 * and each frame's table checksum, and reads a frame's table again (one `pread`, its checksum checked) when its
 * records are asked for. An image of half a million records held them all as objects (address, checksums as
 * bigints), about 160 bytes each on V8's heap: a fragmented image's `inspect` peaked at 223 MiB, its restore at
 * 309 MiB. Walking the records this way holds one frame's (at most 1024 entries and the holes between) at once.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import type { ByteSource } from "./byte_source.ts";
import { checksum } from "./checksum.ts";
import { addFrameRecords, decodeTable, ENTRY_LENGTH, type FrameInfo } from "./frames.ts";
import { FRAME_LENGTH, type ImageRecord, KIND } from "./format.ts";
import { compareAddress } from "../kernel/region.ts";

/**
 * A frame's table entries (data records with their file offsets, and an incremental image's hole entries): its
 * table's checksum checked against `tableChecksum`, then decoded (lib/image/frames.ts `decodeTable`).
 *
 * @param path The image, for errors.
 * @param frame The frame (from the directory or its header).
 * @param table The table's bytes.
 * @param tableChecksum What the frame header says the table's checksum is.
 * @param pageSize The image's page size.
 * @param uncovered What the bytes of its range no entry covers mean (lib/image/format.ts `uncoveredMeaning`).
 * @returns The entries, in table order.
 * @throws {ImageError} On a checksum mismatch or a bad entry, naming the offset.
 */
export function frameEntries(
  path: string,
  frame: FrameInfo,
  table: Uint8Array,
  tableChecksum: bigint,
  pageSize: number,
  uncovered: "hole" | "parent",
): ImageRecord[] {
  checkTable(path, frame, table, tableChecksum);
  return decodeTable(path, frame, table, pageSize, uncovered);
}

/**
 * A frame's table bytes have the checksum its header says.
 *
 * @param path The image, for errors.
 * @param frame The frame.
 * @param table The table's bytes.
 * @param tableChecksum What the frame header says.
 * @throws {ImageError} Naming the table's offset.
 */
export function checkTable(path: string, frame: FrameInfo, table: Uint8Array, tableChecksum: bigint): void {
  if (checksum(table) !== tableChecksum) {
    throw new ImageError(path, frame.offset + FRAME_LENGTH, "frame table checksum mismatch");
  }
}

/**
 * Add a frame's records to `out` (lib/image/frames.ts `addFrameRecords`), which holds at most the last hole of
 * the frames before: how many of `out` are complete (all but a last hole, which the next frame may continue).
 *
 * @param out The held hole, if any; the frame's records are added.
 * @param f The frame.
 * @param entries Its table's entries.
 * @param uncovered What the bytes of its range no entry covers mean.
 * @returns How many records at the front of `out` no later frame changes.
 */
export function addHeld(
  out: ImageRecord[],
  f: FrameInfo,
  entries: readonly ImageRecord[],
  uncovered: "hole" | "parent",
): number {
  addFrameRecords(out, f, entries, uncovered);
  return out.length > 0 && out[out.length - 1].kind === KIND.HOLE ? out.length - 1 : out.length;
}

/** The records of an opened image's index (data and holes, sorted by `(segment, address)`), a frame at a time. */
export class IndexRecords implements Iterable<ImageRecord> {
  readonly #src: ByteSource;
  readonly #frames: readonly FrameInfo[];
  readonly #sums: BigUint64Array;
  readonly #pageSize: number;
  readonly #uncovered: "hole" | "parent";
  #counts?: { length: number; absolute: { dataBytes: number; holeBytes: number } };

  /**
   * The records of an image whose frame headers and table checksums were read (lib/image/reader.ts
   * `readImageIndex`); nothing is read until they are walked.
   *
   * @param src A positional source over the image whose reads return at once (a file, a mapping).
   * @param frames The frame directory, checked against the frame headers.
   * @param tableChecksums Each frame's table checksum, from its header.
   * @param pageSize The image's page size.
   * @param uncovered What the bytes of a frame's range no entry covers mean.
   */
  constructor(
    src: ByteSource,
    frames: readonly FrameInfo[],
    tableChecksums: BigUint64Array,
    pageSize: number,
    uncovered: "hole" | "parent",
  ) {
    this.#src = src;
    this.#frames = frames;
    this.#sums = tableChecksums;
    this.#pageSize = pageSize;
    this.#uncovered = uncovered;
  }

  /** How many records there are (data and holes): counted by the first walk of them all. */
  get length(): number {
    return this.#counted().length;
  }

  /** Bytes of the data and hole records at absolute addresses (segment 0): counted by the first complete walk. */
  get absolute(): { readonly dataBytes: number; readonly holeBytes: number } {
    return this.#counted().absolute;
  }

  #counted(): { length: number; absolute: { dataBytes: number; holeBytes: number } } {
    if (!this.#counts) { for (const _ of this) { /* the walk counts */ } }
    return this.#counts!;
  }

  /** Every record, in index order. */
  *[Symbol.iterator](): Iterator<ImageRecord> {
    if (this.#counts) return yield* this.#from(0, -1);
    const absolute = { dataBytes: 0, holeBytes: 0 };
    let length = 0;
    for (const r of this.#from(0, -1)) {
      length++;
      if (r.segment === 0) {
        if (r.kind === KIND.DATA) absolute.dataBytes += r.length;
        else absolute.holeBytes += r.length;
      }
      yield r;
    }
    this.#counts = { length, absolute };
  }

  /**
   * The records of one segment, in address order (the frames of other segments are not read).
   *
   * @param segment 0 for absolute addresses, else a relocatable segment's 1-based region table entry.
   * @returns An iterator over them.
   */
  segment(segment: number): IterableIterator<ImageRecord> {
    const i = this.#firstFrame(segment, 0n);
    return this.#from(i, segment);
  }

  /**
   * The record containing `address` in `segment`, or undefined: a binary search of the frames, then the records
   * of the frames that make it (a hole may span frames that touch).
   *
   * @param address The address (or segment offset).
   * @param segment The segment.
   * @returns The record.
   */
  find(address: bigint, segment = 0): ImageRecord | undefined {
    let i = this.#firstFrame(segment, address);
    const f = this.#frames;
    if (i >= f.length || f[i].segment !== segment || f[i].start > address) return undefined;
    // Back to the first frame of a run of touching frames whose joints are holes: holes merge across them.
    while (i > 0 && f[i - 1].segment === segment && f[i - 1].end === f[i].start && this.#holeJoint(i)) i--;
    for (const r of this.#from(i, segment)) {
      if (r.address > address) return undefined;
      if (r.address + BigInt(r.length) > address) return r;
    }
    return undefined;
  }

  /**
   * Every record in an array: as much memory as the index (about 160 bytes a record); for small images and
   * tests. Operations walk the records instead.
   *
   * @returns The records, in index order.
   */
  toArray(): ImageRecord[] {
    return [...this];
  }

  /**
   * A frame's table entries, read again from the image (its checksum checked).
   *
   * @param i The frame's position in the directory.
   * @returns Its data records (and an incremental image's hole entries), in table order.
   */
  entries(i: number): ImageRecord[] {
    const fr = this.#frames[i];
    if (fr.count === 0) return [];
    const table = this.#src.read(fr.offset + FRAME_LENGTH, fr.count * ENTRY_LENGTH, "frame table");
    if (table instanceof Promise) throw new TypeError(`Cannot read ${this.#src.path}'s index from a stream`);
    return frameEntries(this.#src.path, fr, table, this.#sums[i], this.#pageSize, this.#uncovered);
  }

  /** Whether the bytes where frame `i - 1` ends and frame `i` starts are both holes. */
  #holeJoint(i: number): boolean {
    const before: ImageRecord[] = [];
    addFrameRecords(before, this.#frames[i - 1], this.entries(i - 1), this.#uncovered);
    const after: ImageRecord[] = [];
    addFrameRecords(after, this.#frames[i], this.entries(i), this.#uncovered);
    return before.at(-1)?.kind === KIND.HOLE && after[0]?.kind === KIND.HOLE &&
      after[0].address === this.#frames[i].start;
  }

  /** The first frame of `segment` whose range ends after `address` (or the frames' count). */
  #firstFrame(segment: number, address: bigint): number {
    const f = this.#frames;
    let lo = 0, hi = f.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const m = f[mid];
      const before = m.segment !== segment ? m.segment < segment : compareAddress(m.end, address) <= 0;
      if (before) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * The records from frame `i` on (of `segment` only, when it is not -1), adjacent holes merged as
   * lib/image/frames.ts `addFrameRecords` merges them: a frame's last hole is held until the next frame shows
   * whether it continues.
   */
  *#from(i: number, segment: number): IterableIterator<ImageRecord> {
    const out: ImageRecord[] = [];
    for (; i < this.#frames.length; i++) {
      const fr = this.#frames[i];
      if (segment >= 0 && fr.segment !== segment) break;
      const done = addHeld(out, fr, this.entries(i), this.#uncovered);
      for (let k = 0; k < done; k++) yield out[k];
      out.splice(0, done);
    }
    yield* out;
  }
}
