/**
 * The image reader: one frame reader over a {@link ByteSource} (lib/image/byte_source.ts), positional (`pread`,
 * a mapping, bytes in memory) or sequential (a stream). Every reader of an image goes through it:
 * - {@link readImageIndex}: `MemoryLoader.open()` reads the footer, the header block, the index and every
 *   frame's header and table at their offsets (positional);
 * - {@link walkFrames}: the verification pass (`verify()`, over the mapping) and the stream reader
 *   (`verifyStream()`/`loadStream()`, over the stream) walk the data area front to back: padding, each frame's
 *   header and table, each record's padding and stored bytes (checksum checked), the END frame;
 * - {@link readFrame}: one frame's header (equal to its directory entry, when there is one) and table.
 *
 * The rules that need more than one structure are in lib/image/rules.ts; those of one structure in its decoder
 * (header.ts, frames.ts, sections.ts, footer.ts).
 *
 * @module
 */

import { hex } from "../hex.ts";
import { ImageError } from "../errors.ts";
import type { ByteSource } from "./byte_source.ts";
import { checksum } from "./checksum.ts";
import { checkTable, frameEntries } from "./records.ts";
import {
  addFrameRecords,
  decodeDirectory,
  decodeFrameHeader,
  DIRECTORY_ENTRY_LENGTH,
  ENTRY_LENGTH,
  type FrameInfo,
  MAX_FRAME_RECORDS,
  sameFrame,
  tableEnd,
} from "./frames.ts";
import {
  alignUp,
  FIXED_HEADER_LENGTH,
  FOOTER_FIELD,
  FOOTER_LENGTH,
  FRAME_LENGTH,
  type ImageRecord,
  type ImageRegion,
  KIND,
  uncoveredMeaning,
} from "./format.ts";
import { decodeFooter, type Footer } from "./footer.ts";
import { decodeHeaderBlock, type HeaderFields, type SourceInfo } from "./header.ts";
import { decodeSectionTable, type SectionEntry } from "./sections.ts";
import { checkFrameRange, checkRecord } from "./rules.ts";

/** One frame as read: its header, its table's bytes and its data records (file offsets laid out). */
export interface FrameRead {
  /** The frame header. */
  frame: FrameInfo;
  /** The table's bytes (empty for the END frame). */
  table: Uint8Array;
  /** The data records of the table. */
  records: ImageRecord[];
  /** Every entry of the table, in table order: the data records and, in an incremental image, hole entries. */
  entries: ImageRecord[];
}

/**
 * Read one frame: its header (checked; equal to `entry`, its directory entry, when given), then, unless it is
 * the END frame, its table (checksum checked) and records.
 *
 * @param src The image.
 * @param at The frame header's offset.
 * @param pageSize The image's page size.
 * @param entry The frame's directory entry, when it is known.
 * @param uncovered What the bytes of its range no entry covers mean (lib/image/format.ts `uncoveredMeaning`).
 * @param decode Whether to decode the table's entries (else only its checksum is checked: no records).
 * @returns The frame.
 * @throws {ImageError} Naming the frame's offset.
 */
export async function readFrame(
  src: ByteSource,
  at: number,
  pageSize: number,
  entry?: FrameInfo,
  uncovered: "hole" | "parent" = "hole",
  decode = true,
): Promise<FrameRead> {
  const frame = decodeFrameHeader(src.path, await src.read(at, FRAME_LENGTH, "frame header"), at);
  if (entry && !sameFrame(frame, entry)) {
    throw new ImageError(
      src.path,
      at,
      `frame header disagrees with its directory entry (${hex(entry.start)})`,
    );
  }
  if (frame.isEnd) return { frame, table: new Uint8Array(0), records: [], entries: [] };
  const table = await src.read(at + FRAME_LENGTH, frame.count * ENTRY_LENGTH, "frame table");
  if (!decode) {
    checkTable(src.path, frame, table, frame.tableChecksum);
    return { frame, table, records: [], entries: [] };
  }
  const entries = frameEntries(src.path, frame, table, frame.tableChecksum, pageSize, uncovered);
  return { frame, table, records: entries.filter((r) => r.kind === KIND.DATA), entries };
}

/** What an image's tail says: the footer, the index and the section table. */
export interface ImageTail {
  /** The footer. */
  footer: Footer;
  /** Its offset. */
  footerAt: number;
  /** The index's bytes (checksum checked). */
  index: Uint8Array;
  /** The frame directory the index holds, in file order. */
  directory: FrameInfo[];
  /** The section table. */
  sections: SectionEntry[];
}

/**
 * Read an image's tail from a positional source: the footer first, then the bounds of the index and section
 * table it locates (between `from` and the footer), the index (checksum, directory) and the section table
 * (checksum). The section blobs are not read.
 *
 * @param src A positional source over the tail (or the whole file).
 * @param fileSize The image's size.
 * @param from Where the tail may begin: 0 for a file (the index is checked against the frames later), the END
 *   frame's data for a stream.
 * @returns The tail.
 * @throws {ImageError} Naming the footer field, or the offset, and what was expected.
 */
export async function readTail(src: ByteSource, fileSize: number, from = 0): Promise<ImageTail> {
  const path = src.path;
  if (fileSize < FIXED_HEADER_LENGTH + FOOTER_LENGTH) {
    throw new ImageError(path, fileSize, `file of ${fileSize} bytes is too small to be an image`);
  }
  const footerAt = fileSize - FOOTER_LENGTH;
  const footer = decodeFooter(path, await src.read(footerAt, FOOTER_LENGTH, "footer"), footerAt);
  const f = footer;
  for (
    const [what, at, len, field] of [
      ["header block", 0, from ? 0 : f.headerLength, FOOTER_FIELD.HEADER_LENGTH],
      ["index", f.indexOffset, f.indexLength, FOOTER_FIELD.INDEX_OFFSET],
      ["section table", f.sectionsOffset, f.sectionsLength, FOOTER_FIELD.SECTIONS_OFFSET],
    ] as const
  ) {
    if (len && (at < from || at + len > footerAt)) {
      const where = from ? "the tail" : "the file";
      throw new ImageError(path, footerAt + field, `${what} [${at}, ${at + len}) lies outside ${where}`);
    }
  }
  const index = await src.read(f.indexOffset, f.indexLength, "index");
  if (checksum(index) !== f.indexChecksum) {
    throw new ImageError(path, f.indexOffset, "index checksum mismatch");
  }
  const directory = decodeDirectory(path, index, f.indexOffset);
  const table = await src.read(f.sectionsOffset, f.sectionsLength, "section table");
  if (checksum(table) !== f.sectionsChecksum) {
    throw new ImageError(path, f.sectionsOffset, "section table checksum mismatch");
  }
  const sections = decodeSectionTable(path, table, f.sectionsOffset);
  return { footer, footerAt, index, directory, sections };
}

/** What an image's footer and header block say: what it is and which regions it holds. */
export interface ImageHead {
  /** The footer (its checksums and size make the image's identity). */
  footer: Footer;
  /** The fixed header's fields. */
  header: HeaderFields;
  /** The region table. */
  regions: ImageRegion[];
}

/**
 * Read an image's tail ({@link readTail}) and its header block (checksum checked), not its frames: cheap
 * whatever the image's count of records, where opening it (lib/image/loader.ts) checks every record.
 *
 * @param src A positional source over the whole file.
 * @param fileSize The file's size.
 * @returns The footer, the header's fields and the region table.
 * @throws {ImageError} Naming the file, the offset and what was expected.
 */
export async function readImageHead(src: ByteSource, fileSize: number): Promise<ImageHead> {
  const { footer } = await readTail(src, fileSize);
  const h = decodeHeaderBlock(src.path, await src.read(0, footer.headerLength, "header block"));
  return { footer, header: h.fields, regions: h.regions };
}

/** What the header block, the index and the footer of an image say (no data read). */
export interface ImageIndex {
  /** The footer. */
  footer: Footer;
  /** The fixed header's fields. */
  header: HeaderFields;
  /** Where the image came from. */
  source: SourceInfo;
  /** The region table. */
  regions: ImageRegion[];
  /** The frame directory, in file order. */
  frames: FrameInfo[];
  /** Each frame's table checksum (from its header), for reading its table again (lib/image/records.ts). */
  tableChecksums: BigUint64Array;
  /** The section table. */
  sections: SectionEntry[];
}

/**
 * Read an image's index from a positional source: its tail ({@link readTail}), the header block, each frame's
 * header and table at the offset its directory entry gives (the header and the table's checksum checked; the
 * table's entries are decoded and checked when lib/image/records.ts walks them). Data is not read.
 *
 * @param src A positional source over the whole file.
 * @param fileSize The file's size.
 * @returns The index.
 * @throws {ImageError} Naming the file, the offset and what was expected.
 */
export async function readImageIndex(src: ByteSource, fileSize: number): Promise<ImageIndex> {
  const path = src.path;
  const { footer, directory: frames, sections } = await readTail(src, fileSize);
  const h = decodeHeaderBlock(path, await src.read(0, footer.headerLength, "header block"));
  const tableChecksums = new BigUint64Array(frames.length);
  const limit = footer.indexOffset - FRAME_LENGTH; // the END frame's header
  for (let i = 0; i < frames.length; i++) {
    const d = frames[i];
    if (d.count > MAX_FRAME_RECORDS || tableEnd(d) > limit) {
      const at = footer.indexOffset + i * DIRECTORY_ENTRY_LENGTH;
      throw new ImageError(path, at, `frame ${i} at ${d.offset} lies outside the data area`);
    }
    // Its entries are decoded (and their rules checked) when the records are walked: lib/image/records.ts.
    const fr = await readFrame(src, d.offset, h.fields.pageSize, d, "hole", false);
    tableChecksums[i] = fr.frame.tableChecksum;
  }
  const { fields: header, source, regions } = h;
  return { footer, header, source, regions, frames, tableChecksums, sections };
}

/** What {@link walkFrames} checks against, and what it calls for each record. */
export interface WalkOptions {
  /** The image's header fields. */
  header: HeaderFields;
  /** Its region table. */
  regions: readonly ImageRegion[];
  /**
   * The frame directory, when it is known (a file): each frame must stand where its entry says and equal it,
   * and the END frame must follow the last one.
   */
  directory?: readonly FrameInfo[];
  /** Where the END frame must be, when it is known (a file). */
  endAt?: number;
  /**
   * Called before a record's stored bytes are read (its fields checked): where to read them (a copying
   * source), or undefined for a fresh buffer (a positional source gives a view anyway).
   */
  prepare?: (r: ImageRecord, ordinal: number) => Uint8Array | undefined;
  /**
   * Called with each data record and its stored bytes (checksum checked), in file order. Without it, the walk
   * only checksums the stored bytes (in place, for a mapping) and calls {@link WalkOptions.onChecked}.
   */
  onRecord?: (r: ImageRecord, stored: Uint8Array, ordinal: number) => void | Promise<void>;
  /** Called with each data record once its stored bytes passed their checksum, when there is no `onRecord`. */
  onChecked?: (r: ImageRecord) => void;
  /**
   * Called with each frame once its records have been read and checked (before the next frame is read): a reader
   * that keeps what it needs of each frame (lib/image/stream.ts keeps its header and table) with `collect: false`.
   */
  onFrame?: (fr: FrameRead) => void;
  /**
   * Whether to return the frames, tables and records read (default true). The verification of an opened file
   * has them from its index already: without them, each frame's decoded entries are garbage as soon as the
   * frame is checked (an image of half a million records otherwise held a second copy of its index).
   */
  collect?: boolean;
}

/** What {@link walkFrames} read. */
export interface FrameWalk {
  /** The frames, in file order (none with `collect: false`). */
  frames: FrameInfo[];
  /** Their tables' bytes (none with `collect: false`). */
  tables: Uint8Array[];
  /** The records (data and holes) the frames describe, in file order (none with `collect: false`). */
  records: ImageRecord[];
  /** Data records read. */
  dataRecords: number;
  /** The END frame's header. */
  end: FrameInfo;
  /** Where the END frame's data (the tail) begins. */
  tailAt: number;
}

/**
 * Walk the data area front to back, from the end of the header block to the END frame: the zero padding, each
 * frame (header, table, covered range after the one before), each data record (fields, padding, stored bytes
 * and their checksum), so that every byte before the tail has been checked. A positional source is walked
 * without yielding per record; a sequential one is read once.
 *
 * @param src The image.
 * @param opts The header and region table, the directory when known, per-record calls.
 * @returns The frames and records read.
 * @throws {ImageError} At the first problem, naming the offset.
 */
export async function walkFrames(src: ByteSource, opts: WalkOptions): Promise<FrameWalk> {
  const { path } = src;
  const { header, regions, directory } = opts;
  const frames: FrameInfo[] = [], tables: Uint8Array[] = [], records: ImageRecord[] = [];
  let pos = header.headerLength, ordinal = 0, count = 0;
  let last: FrameInfo | undefined;
  const uncovered = uncoveredMeaning(header.requiredFeatures);
  for (;;) {
    const frameAt = alignUp(pos, 8);
    const entry = directory?.[count];
    if (entry && entry.offset !== frameAt) {
      throw new ImageError(path, frameAt, `expected the frame of ${hex(entry.start)} here`);
    }
    const atEnd = directory !== undefined && !entry;
    if (atEnd && opts.endAt !== undefined && frameAt !== opts.endAt) {
      throw new ImageError(path, frameAt, "expected the END frame here");
    }
    const z = src.zeros(pos, frameAt - pos, "padding");
    if (z) await z;
    const fr = await readFrame(src, frameAt, header.pageSize, entry, uncovered);
    if (fr.frame.isEnd) {
      return { frames, tables, records, dataRecords: ordinal, end: fr.frame, tailAt: frameAt + FRAME_LENGTH };
    }
    if (atEnd) throw new ImageError(path, frameAt, "expected the END frame here");
    checkFrameRange(path, frameAt, fr.frame, last, regions);
    pos = tableEnd(fr.frame);
    for (const r of fr.records) {
      checkRecord(path, r, header, regions); // order: decodeTable (in a frame), checkFrameRange (frames)
      const pad = src.zeros(pos, r.fileOffset - pos, "padding");
      if (pad) await pad;
      const into = opts.prepare?.(r, ordinal);
      let sum: bigint | Promise<bigint>, stored: Uint8Array | undefined;
      if (opts.onRecord) {
        const read = src.read(r.fileOffset, r.storedLength, "chunk data", into);
        stored = read instanceof Uint8Array ? read : await read;
        sum = checksum(stored);
      } else {
        sum = src.checksum(r.fileOffset, r.storedLength, "chunk data"); // in place, for a mapping
      }
      if ((typeof sum === "bigint" ? sum : await sum) !== r.checksum) {
        throw new ImageError(
          path,
          r.fileOffset,
          `data checksum mismatch for the record at ${hex(r.address)}`,
        );
      }
      if (stored) {
        const done = opts.onRecord!(r, stored, ordinal);
        if (done) await done;
      } else {
        opts.onChecked?.(r);
      }
      ordinal++;
      pos = r.fileOffset + r.storedLength;
    }
    last = fr.frame;
    count++;
    opts.onFrame?.(fr);
    if (opts.collect === false) continue;
    frames.push(fr.frame);
    tables.push(fr.table);
    addFrameRecords(records, fr.frame, fr.entries, uncovered);
  }
}
