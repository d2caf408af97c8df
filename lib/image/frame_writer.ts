/**
 * Frame building for the image writer: data records and holes join the open frame while they continue its
 * range; a full frame, or one the next record does not continue, is laid out (header, table, page-aligned data)
 * and queued for writing. Keeps the totals of the records and the frame directory's entries.
 *
 * In an incremental image (uncovered bytes are the parent's, lib/image/format.ts `uncoveredMeaning`) a hole is
 * a table entry of kind HOLE, and a record joins the open frame across a gap (bytes the image leaves to its
 * parent) when the frame's range stays inside the image's regions: scattered runs share one frame, up to 1024
 * records and 16 MiB of data.
 *
 * @module
 */

import { addrOf, libc, PAGE_SIZE, ptrOf } from "../../ffi/libc.ts";
import { checksum } from "./checksum.ts";
import {
  encodeFrameHeader,
  encodeTable,
  type FrameInfo,
  layoutFrame,
  MAX_FRAME_DATA,
  MAX_FRAME_RECORDS,
} from "./frames.ts";
import { alignUp, holeRecord, type ImageRecord, KIND, MAX_RECORD_LENGTH } from "./format.ts";
import type { Spool } from "./spool.ts";
import type { WriteQueue } from "./write_queue.ts";

/** The frame being filled: its range so far, its records and where their stored bytes are. */
interface OpenFrame {
  segment: number;
  start: bigint;
  end: bigint;
  records: ImageRecord[];
  ptrs: bigint[];
  /** Per record: whether its bytes are in memory that is not ours and may change (`settle()` copies them). */
  borrowed: boolean[];
  keep: Uint8Array[];
  stored: number;
  /** Records (from the first) whose data was copied into `keep` by `settle()`. */
  owned: number;
}

/** Totals of the records stored so far. */
export interface RecordTotals {
  /** Index records (data records, and holes merged with the hole they continue). */
  records: number;
  /** Data records. */
  dataRecords: number;
  /** Decoded bytes of data records. */
  dataBytes: number;
  /** Bytes of holes. */
  holeBytes: number;
  /** Bytes of data as stored (after the codec). */
  storedBytes: number;
}

/** Builds the frames of one image and queues each for writing once it is complete. */
export class FrameWriter {
  readonly #queue: WriteQueue;
  #frame: OpenFrame | undefined;
  /** The directory entries of the frames queued so far. */
  readonly frames: FrameInfo[] = [];
  /** The tables of the frames queued so far, in file order (kept for a sealed image's metadata MAC). */
  readonly tables: Spool | undefined;
  /** Totals of the records stored so far. */
  readonly totals: RecordTotals = { records: 0, dataRecords: 0, dataBytes: 0, holeBytes: 0, storedBytes: 0 };
  /** The last record (a hole may extend it). */
  #lastKind = -1;
  #lastSegment = -1;
  #lastHoleEnd = -1n;
  /** For an incremental image: whether a frame of `segment` may cover `[from, to)` (inside the regions). */
  readonly #bridge?: (segment: number, from: bigint, to: bigint) => boolean;

  /**
   * Make the frame writer of one image.
   *
   * @param queue Where complete frames are queued.
   * @param tables Where to keep each frame's table (a sealed image's), if anywhere.
   * @param bridge For an incremental image (holes are entries, gaps are the parent's): whether the open frame
   *   of `segment` may grow over the gap `[from, to)` to reach the next record.
   */
  constructor(
    queue: WriteQueue,
    tables: Spool | undefined,
    bridge?: (segment: number, from: bigint, to: bigint) => boolean,
  ) {
    this.#queue = queue;
    this.tables = tables;
    this.#bridge = bridge;
  }

  /**
   * Add a data record whose stored bytes are at `ptr` (kept alive by `keep`) to the open frame.
   *
   * @param r The record (its file offset is set when the frame is laid out).
   * @param ptr Where its stored bytes are.
   * @param keep The buffer holding them, if ours.
   * @param stable Whether they stay readable and unchanged at `ptr` until the image is finalized, though not
   *   ours (a mapped image file): `settle()` need not copy them.
   */
  append(r: ImageRecord, ptr: bigint, keep?: Uint8Array, stable = false): void {
    const f = this.#room(r.segment, r.address, r.storedLength);
    f.records.push(r);
    f.ptrs.push(ptr);
    f.borrowed.push(!keep && !stable);
    if (keep) f.keep.push(keep);
    f.stored += r.storedLength;
    f.end = r.address + BigInt(r.length);
    const t = this.totals;
    t.records++;
    t.dataRecords++;
    t.dataBytes += r.length;
    t.storedBytes += r.storedLength;
    this.#lastKind = KIND.DATA;
  }

  /**
   * Record a hole: the open frame's range grows over it without data.
   *
   * @param addr First address (offset, for a segment).
   * @param len Bytes.
   * @param segment Its segment (0 for absolute addresses).
   */
  hole(addr: bigint, len: number, segment: number): void {
    if (this.#bridge) return this.#holeEntries(addr, len, segment);
    const f = this.#cover(segment, addr);
    f.end = addr + BigInt(len);
    this.totals.holeBytes += len;
    if (this.#lastKind !== KIND.HOLE || this.#lastSegment !== segment || this.#lastHoleEnd !== addr) {
      this.totals.records++;
    }
    this.#lastKind = KIND.HOLE;
    this.#lastSegment = segment;
    this.#lastHoleEnd = f.end;
  }

  /** An incremental image's hole: table entries of kind HOLE (one continuing the last is extended). */
  #holeEntries(addr: bigint, len: number, segment: number): void {
    this.totals.holeBytes += len;
    for (let off = 0; off < len;) {
      const f = this.#frame;
      const last = f?.records[f.records.length - 1];
      if (
        f && last && last.kind === KIND.HOLE && f.segment === segment && f.end === addr + BigInt(off) &&
        last.length < MAX_RECORD_LENGTH
      ) {
        const n = Math.min(len - off, MAX_RECORD_LENGTH - last.length);
        last.length += n;
        f.end += BigInt(n);
        off += n;
        continue;
      }
      const n = Math.min(len - off, MAX_RECORD_LENGTH);
      const a = addr + BigInt(off);
      const g = this.#room(segment, a, 0);
      g.records.push(holeRecord(a, n, segment));
      g.ptrs.push(0n);
      g.borrowed.push(false);
      g.end = a + BigInt(n);
      this.totals.records++;
      off += n;
    }
    this.#lastKind = KIND.HOLE;
  }

  /** The open frame with room for one more record of `stored` bytes at `addr`; else a new one. */
  #room(segment: number, addr: bigint, stored: number): OpenFrame {
    const f = this.#frame;
    if (
      f && (f.records.length >= MAX_FRAME_RECORDS ||
        (f.records.length && stored && f.stored + stored > MAX_FRAME_DATA))
    ) {
      this.flush();
    }
    return this.#cover(segment, addr);
  }

  /** Stored bytes of the records of the open frame (held in memory until it is queued and written). */
  get openBytes(): number {
    return this.#frame?.stored ?? 0;
  }

  /** Queue the open frame: zero padding, header, table, then each record's padding and data. */
  flush(): void {
    const f = this.#frame;
    if (!f) return;
    this.#frame = undefined;
    if (f.end === f.start) return;
    const q = this.#queue;
    const info: FrameInfo = {
      offset: alignUp(q.pos, 8),
      isEnd: false,
      count: f.records.length,
      segment: f.segment,
      start: f.start,
      end: f.end,
      dataLength: 0,
      tableChecksum: 0n,
      frameChecksum: 0n,
    };
    info.dataLength = layoutFrame(info, f.records, PAGE_SIZE).dataLength;
    const table = encodeTable(f.records);
    info.tableChecksum = checksum(table);
    const header = encodeFrameHeader(info);
    q.zerosTo(info.offset);
    q.bytes(header);
    q.bytes(table);
    f.records.forEach((r, i) => {
      if (r.kind === KIND.HOLE) return;
      q.zerosTo(r.fileOffset);
      q.at(f.ptrs[i], r.storedLength);
    });
    q.free(f.keep); // encoded chunks and copies: ours alone, freed once written
    this.frames.push(info);
    this.tables?.append(table);
  }

  /**
   * End of a store call: write what is queued, and copy the open frame's data into memory of our own (it may
   * point into the caller's memory or a bounce buffer), so the image holds the bytes as they were stored.
   */
  async settle(): Promise<void> {
    if (this.#queue.pending) {
      await this.#queue.writing;
      this.#queue.drain();
    }
    const f = this.#frame;
    if (!f || f.owned === f.records.length) return;
    const from = f.owned;
    f.owned = f.records.length;
    let total = 0;
    for (let i = from; i < f.records.length; i++) if (f.borrowed[i]) total += f.records[i].storedLength;
    if (total === 0) return; // every record's bytes are ours already, or stable
    const copy = new Uint8Array(total);
    let at = addrOf(Deno.UnsafePointer.of(copy));
    for (let i = from; i < f.records.length; i++) {
      if (!f.borrowed[i]) continue;
      f.borrowed[i] = false;
      const n = f.records[i].storedLength;
      libc.memcpy(ptrOf(at), ptrOf(f.ptrs[i]), BigInt(n));
      f.ptrs[i] = at;
      at += BigInt(n);
    }
    f.keep.push(copy);
  }

  /**
   * The open frame, if its range ends at `addr` in `segment` (or, in an incremental image, before `addr` and
   * may grow over the gap); else flush it and open one at `addr`.
   */
  #cover(segment: number, addr: bigint): OpenFrame {
    const f = this.#frame;
    if (f && f.segment === segment && f.end === addr) return f;
    if (f && f.segment === segment && f.end < addr && this.#bridge?.(segment, f.end, addr)) {
      f.end = addr;
      return f;
    }
    this.flush();
    this.#frame = {
      segment,
      start: addr,
      end: addr,
      records: [],
      ptrs: [],
      borrowed: [],
      keep: [],
      stored: 0,
      owned: 0,
    };
    return this.#frame;
  }
}

/**
 * A data record, its file offset to be laid out.
 *
 * @param address First address (offset, for a segment).
 * @param length Decoded bytes.
 * @param segment Its segment (0 for absolute addresses).
 * @param codec Codec id (0 raw).
 * @param storedLength Bytes in the file.
 * @param sum Checksum of the stored bytes.
 * @param decodedChecksum Checksum of the decoded bytes.
 * @returns The record.
 */
export function dataRecord(
  address: bigint,
  length: number,
  segment: number,
  codec: number,
  storedLength: number,
  sum: bigint,
  decodedChecksum: bigint,
): ImageRecord {
  return {
    address,
    length,
    kind: KIND.DATA,
    fileOffset: 0,
    storedLength,
    checksum: sum,
    decodedChecksum,
    codec,
    flags: 0,
    segment,
  };
}
