/**
 * Batched frames of image format v1 (docs/FORMAT.md): the 64-byte frame header, the table of 40-byte data
 * record entries, where each record's data lies, the frame directory (the index), and the records (data and
 * holes) a list of frames describes.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { checksum } from "./checksum.ts";
import { Cursor } from "./cursor.ts";
import {
  alignUp,
  DIRECTORY_FIELD,
  END_MAGIC,
  ENTRY_FIELD,
  FRAME_FIELD,
  FRAME_LENGTH,
  FRAME_MAGIC,
  holeRecord,
  type ImageRecord,
  KIND,
  MAX_FRAME_RANGE,
  MAX_RECORD_LENGTH,
} from "./format.ts";

/** Bytes of one table entry. */
export const ENTRY_LENGTH = 40;
/** Bytes of one frame directory entry. */
export const DIRECTORY_ENTRY_LENGTH = 48;
/** Most records a frame holds. */
export const MAX_FRAME_RECORDS = 1024;
/** Most stored bytes of a frame with more than one record (a record alone holds at most `MAX_RECORD_LENGTH`). */
export const MAX_FRAME_DATA = 16 << 20;
/** XXH3 of no bytes (a constant of the algorithm): the table checksum of a frame without records. */
export const EMPTY_TABLE_CHECKSUM = 0x2d06800538d394c2n;

/** A frame header's fields (and, for the directory, where the frame lies). */
export interface FrameInfo {
  /** File offset of the frame header. */
  offset: number;
  /** Whether this is the END frame. */
  isEnd: boolean;
  /** Table entries (data records). */
  count: number;
  /** 0 for absolute addresses, else the 1-based region table entry of a relocatable segment. */
  segment: number;
  /** First covered address. */
  start: bigint;
  /** One past the last covered address. */
  end: bigint;
  /** Bytes from the data offset to the end of the last record's data (END: bytes of the tail). */
  dataLength: number;
  /** XXH3 of the table. */
  tableChecksum: bigint;
  /** XXH3 of the header's first 56 bytes. */
  frameChecksum: bigint;
}

/** Where a frame's table ends: right after its header. */
export function tableEnd(f: Pick<FrameInfo, "offset" | "count">): number {
  return f.offset + FRAME_LENGTH + ENTRY_LENGTH * f.count;
}

/**
 * Lay out a frame's records: set each one's `fileOffset` (page aligned for the first and for raw unencrypted
 * records, packed otherwise; 0 for a hole entry, which has no data).
 *
 * @param f The frame (offset and count).
 * @param records Its records, in table order.
 * @param pageSize The image's page size.
 * @returns The data offset and the data length.
 */
export function layoutFrame(
  f: Pick<FrameInfo, "offset" | "count">,
  records: readonly ImageRecord[],
  pageSize: number,
): { dataOffset: number; dataLength: number } {
  if (records.length === 0) return { dataOffset: tableEnd(f), dataLength: 0 };
  const dataOffset = alignUp(tableEnd(f), pageSize);
  let at = dataOffset;
  for (const r of records) {
    if (r.kind === KIND.HOLE) { // an incremental image's explicit hole: no data
      r.fileOffset = 0;
      continue;
    }
    if (r.codec === 0 && r.flags === 0) at = alignUp(at, pageSize);
    r.fileOffset = at;
    at += r.storedLength;
  }
  return { dataOffset, dataLength: at - dataOffset };
}

/**
 * Encode a frame header (the END frame when `f.isEnd`), setting `f.frameChecksum`.
 *
 * @param f The fields.
 * @returns 64 bytes.
 */
export function encodeFrameHeader(f: FrameInfo): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(FRAME_LENGTH);
  const v = new DataView(b.buffer);
  v.setUint32(FRAME_FIELD.MAGIC, f.isEnd ? END_MAGIC : FRAME_MAGIC, true);
  v.setUint32(FRAME_FIELD.COUNT, f.count, true);
  v.setUint32(FRAME_FIELD.SEGMENT, f.segment, true);
  v.setBigUint64(FRAME_FIELD.START, f.start, true);
  v.setBigUint64(FRAME_FIELD.END, f.end, true);
  v.setBigUint64(FRAME_FIELD.DATA_LENGTH, BigInt(f.dataLength), true);
  v.setBigUint64(FRAME_FIELD.TABLE_CHECKSUM, f.tableChecksum, true);
  f.frameChecksum = checksum(b.subarray(0, FRAME_FIELD.CHECKSUM));
  v.setBigUint64(FRAME_FIELD.CHECKSUM, f.frameChecksum, true);
  return b;
}

/**
 * Decode and check a frame header: magic, checksum, reserved fields, count bound, the END frame's zeros.
 *
 * @param path The image, for errors.
 * @param b The 64 bytes.
 * @param offset Where they lie in the file.
 * @returns The fields.
 */
export function decodeFrameHeader(path: string, b: Uint8Array, offset: number): FrameInfo {
  const c = new Cursor(path, b, offset);
  c.need(FRAME_LENGTH, "frame header");
  const magic = c.u32();
  if (magic !== FRAME_MAGIC && magic !== END_MAGIC) throw c.error("bad frame magic", FRAME_FIELD.MAGIC);
  const sum = c.view.getBigUint64(FRAME_FIELD.CHECKSUM, true);
  if (checksum(b.subarray(0, FRAME_FIELD.CHECKSUM)) !== sum) {
    throw c.error("frame header checksum mismatch", FRAME_FIELD.CHECKSUM);
  }
  const count = c.u32(), segment = c.u32();
  if (c.u32() !== 0 || c.view.getBigUint64(FRAME_FIELD.RESERVED_2, true) !== 0n) {
    throw c.error("non-zero reserved frame field", FRAME_FIELD.RESERVED);
  }
  const f: FrameInfo = {
    offset,
    isEnd: magic === END_MAGIC,
    count,
    segment,
    start: c.u64(),
    end: c.u64(),
    dataLength: c.size("frame data length"),
    tableChecksum: c.u64(),
    frameChecksum: sum,
  };
  if (f.isEnd) {
    if (f.count || f.segment || f.start || f.end || f.tableChecksum) {
      throw c.error("bad END frame", FRAME_FIELD.COUNT);
    }
    return f;
  }
  if (f.count > MAX_FRAME_RECORDS) {
    throw c.error(`frame of ${f.count} records (at most ${MAX_FRAME_RECORDS})`, FRAME_FIELD.COUNT);
  }
  if (f.end <= f.start) throw c.error("frame covers no bytes", FRAME_FIELD.START);
  if (f.count === 0 && (f.dataLength !== 0 || f.tableChecksum !== EMPTY_TABLE_CHECKSUM)) {
    throw c.error("frame without records has data or a table", FRAME_FIELD.DATA_LENGTH);
  }
  return f;
}

/**
 * Encode a frame's table.
 *
 * @param records The data records, in address order.
 * @returns `40 × records.length` bytes.
 */
export function encodeTable(records: readonly ImageRecord[]): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(records.length * ENTRY_LENGTH);
  const v = new DataView(b.buffer);
  for (let i = 0, o = 0; i < records.length; i++, o += ENTRY_LENGTH) {
    const r = records[i];
    v.setBigUint64(o + ENTRY_FIELD.ADDRESS, r.address, true);
    v.setUint32(o + ENTRY_FIELD.LENGTH, r.length, true);
    v.setUint32(o + ENTRY_FIELD.STORED_LENGTH, r.storedLength, true);
    v.setBigUint64(o + ENTRY_FIELD.CHECKSUM, r.checksum, true);
    v.setBigUint64(o + ENTRY_FIELD.DECODED_CHECKSUM, r.decodedChecksum, true);
    v.setUint8(o + ENTRY_FIELD.KIND, r.kind);
    v.setUint8(o + ENTRY_FIELD.CODEC, r.codec);
    v.setUint16(o + ENTRY_FIELD.FLAGS, r.flags, true);
  }
  return b;
}

/**
 * Decode a frame's table (its checksum already checked) and lay its records out: entries must be data (or, in
 * an incremental image, holes: no stored bytes, checksums, codec or flags, at most `MAX_RECORD_LENGTH` bytes),
 * in address order, not overlapping, inside the frame's covered range, with no reserved bit set; the data length
 * must be what the frame header says, and at most {@link MAX_FRAME_DATA} stored bytes unless there is one record.
 *
 * @param path The image, for errors.
 * @param f The frame.
 * @param b The table bytes.
 * @param pageSize The image's page size.
 * @param uncovered What the bytes no entry covers mean ({@link uncoveredMeaning}): hole entries are allowed
 *   only when they are the parent's.
 * @returns The table's records in table order (data with their file offsets, and hole entries).
 */
export function decodeTable(
  path: string,
  f: FrameInfo,
  b: Uint8Array,
  pageSize: number,
  uncovered: "hole" | "parent" = "hole",
): ImageRecord[] {
  const base = f.offset + FRAME_LENGTH;
  const c = new Cursor(path, b, base);
  if (b.length !== f.count * ENTRY_LENGTH) {
    throw c.error(`table of ${b.length} bytes for ${f.count} records`, 0);
  }
  const out: ImageRecord[] = [];
  let at = f.start, stored = 0;
  for (let i = 0; i < f.count; i++) {
    const o = i * ENTRY_LENGTH;
    c.pos = o;
    const r: ImageRecord = {
      address: c.u64(),
      length: c.u32(),
      storedLength: c.u32(),
      checksum: c.u64(),
      decodedChecksum: c.u64(),
      kind: c.u8(),
      codec: c.u8(),
      flags: c.u16(),
      segment: f.segment,
      fileOffset: 0,
    };
    const bad = (m: string, off = 0) => new ImageError(path, base + o + off, `table entry ${i}: ${m}`);
    if (c.u32() !== 0) throw bad("non-zero reserved field", ENTRY_FIELD.RESERVED);
    if (r.kind === KIND.HOLE && uncovered === "parent") {
      if (r.storedLength || r.checksum || r.decodedChecksum || r.codec || r.flags) {
        throw bad("a hole entry with stored bytes, checksums, codec or flags", ENTRY_FIELD.STORED_LENGTH);
      }
      if (r.length === 0 || r.length > MAX_RECORD_LENGTH) {
        throw bad(`hole entry of ${r.length} bytes (1 to ${MAX_RECORD_LENGTH})`, ENTRY_FIELD.LENGTH);
      }
    } else if (r.kind !== KIND.DATA) {
      throw bad(`kind ${r.kind} is not data`, ENTRY_FIELD.KIND);
    } else if (r.length === 0 || r.storedLength === 0) throw bad("empty record", ENTRY_FIELD.LENGTH);
    if (r.address < at) throw bad("out of order, overlapping or before the frame's range");
    at = r.address + BigInt(r.length);
    if (at > f.end) throw bad("runs past the frame's range", ENTRY_FIELD.LENGTH);
    stored += r.storedLength;
    out.push(r);
  }
  if (f.count > 1 && stored > MAX_FRAME_DATA) {
    throw new ImageError(
      path,
      f.offset + FRAME_FIELD.DATA_LENGTH,
      `frame of ${stored} stored bytes (at most ${MAX_FRAME_DATA})`,
    );
  }
  if (layoutFrame(f, out, pageSize).dataLength !== f.dataLength) {
    throw new ImageError(
      path,
      f.offset + FRAME_FIELD.DATA_LENGTH,
      `frame data length ${f.dataLength} disagrees with its table`,
    );
  }
  return out;
}

/**
 * Encode the frame directory.
 *
 * @param frames The frames, in file order.
 * @returns `48 × frames.length` bytes.
 */
export function encodeDirectory(frames: readonly FrameInfo[]): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(frames.length * DIRECTORY_ENTRY_LENGTH);
  const v = new DataView(b.buffer);
  frames.forEach((f, i) => {
    const o = i * DIRECTORY_ENTRY_LENGTH;
    v.setBigUint64(o + DIRECTORY_FIELD.FRAME_OFFSET, BigInt(f.offset), true);
    v.setBigUint64(o + DIRECTORY_FIELD.START, f.start, true);
    v.setBigUint64(o + DIRECTORY_FIELD.END, f.end, true);
    v.setBigUint64(o + DIRECTORY_FIELD.DATA_LENGTH, BigInt(f.dataLength), true);
    v.setBigUint64(o + DIRECTORY_FIELD.FRAME_CHECKSUM, f.frameChecksum, true);
    v.setUint32(o + DIRECTORY_FIELD.COUNT, f.count, true);
    v.setUint32(o + DIRECTORY_FIELD.SEGMENT, f.segment, true);
  });
  return b;
}

/**
 * Decode the frame directory (its checksum already checked).
 *
 * @param path The image, for errors.
 * @param b The directory bytes.
 * @param offset Where they lie in the file.
 * @returns The frames (tableChecksum unknown until the frame header is read: 0n).
 */
export function decodeDirectory(path: string, b: Uint8Array, offset: number): FrameInfo[] {
  const c = new Cursor(path, b, offset);
  if (b.length % DIRECTORY_ENTRY_LENGTH !== 0) {
    throw c.error(`directory length ${b.length} is not a multiple of ${DIRECTORY_ENTRY_LENGTH}`, 0);
  }
  const out: FrameInfo[] = [];
  while (c.pos < b.length) {
    out.push({
      offset: c.size("frame offset"),
      start: c.u64(),
      end: c.u64(),
      dataLength: c.size("frame data length"),
      frameChecksum: c.u64(),
      count: c.u32(),
      segment: c.u32(),
      isEnd: false,
      tableChecksum: 0n,
    });
  }
  return out;
}

/**
 * Whether two frame headers agree on every field the directory repeats.
 *
 * @param a One.
 * @param b The other.
 * @returns True when offset, range, data length, checksum, count and segment are equal.
 */
export function sameFrame(a: FrameInfo, b: FrameInfo): boolean {
  return a.offset === b.offset && a.start === b.start && a.end === b.end && a.dataLength === b.dataLength &&
    a.frameChecksum === b.frameChecksum && a.count === b.count && a.segment === b.segment && !a.isEnd &&
    !b.isEnd;
}

/**
 * Add a frame's records to `out`. The bytes of its covered range that no entry covers mean what
 * {@link uncoveredMeaning} says: holes (added between its data records; a hole that continues the last hole of
 * `out` extends it, up to `MAX_FRAME_RANGE` bytes, so a length stays exact), or, in an incremental image, its
 * parent's (not records of this image: only its entries are added, data and hole entries, a hole entry that
 * continues the last hole extending it the same way).
 *
 * @param out The records so far (in file order, which is index order).
 * @param f The frame.
 * @param entries Its table's records, in table order (data only, unless incremental).
 * @param uncovered What the uncovered bytes of its range mean.
 */
export function addFrameRecords(
  out: ImageRecord[],
  f: FrameInfo,
  entries: readonly ImageRecord[],
  uncovered: "hole" | "parent" = "hole",
): void {
  let at = f.start;
  const hole = (to: bigint) => {
    if (to <= at) return;
    const last = out[out.length - 1];
    if (
      last && last.kind === KIND.HOLE && last.segment === f.segment &&
      last.address + BigInt(last.length) === at && BigInt(last.length) + to - at <= MAX_FRAME_RANGE
    ) {
      last.length += Number(to - at);
    } else {
      out.push(holeRecord(at, Number(to - at), f.segment));
    }
  };
  for (const r of entries) {
    if (uncovered === "parent") at = r.address;
    if (r.kind === KIND.HOLE) {
      hole(r.address + BigInt(r.length));
    } else {
      hole(r.address);
      out.push(r);
    }
    at = r.address + BigInt(r.length);
  }
  if (uncovered === "hole") hole(f.end);
}
