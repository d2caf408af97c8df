/**
 * The verification pass: footer, header, bounds of every offset and length against the file size, index order
 * and overlap, every byte between records (zero padding and frame headers), and all checksums. It reads the
 * image with `pread` through a window (lib/image/byte_source.ts), the frames with the frame reader
 * (lib/image/reader.ts); compressed records are decoded from a read-only mapping. It throws {@link ImageError}
 * naming the file and offset.
 *
 * @module
 */

import { MADV } from "../../ffi/constants.ts";
import { addressOf, madvise, PAGE_SIZE } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { type Codec, INLINE_BYTES } from "../codecs/codec.ts";
import { defaultWindow, forEachOrdered } from "../codecs/pool.ts";
import { CryoError, ImageError } from "../errors.ts";
import { checksum, checksumAtAsync } from "./checksum.ts";
import { FileSource, MappedSource } from "./byte_source.ts";
import { walkFrames } from "./reader.ts";
import {
  alignUp,
  FOOTER_FIELD,
  FOOTER_LENGTH,
  FRAME_LENGTH,
  type ImageRecord,
  type ImageRegion,
  KIND,
  REQUIRED,
} from "./format.ts";
import type { Footer } from "./footer.ts";
import { decodeHeaderBlock, type HeaderFields } from "./header.ts";
import type { SectionEntry } from "./sections.ts";
import { DIRECTORY_ENTRY_LENGTH, type FrameInfo, tableEnd } from "./frames.ts";
import {
  checkFooter,
  checkFrameRange,
  checkHost,
  checkRecord,
  checkTail,
  checkTailLayout,
  checkTailLength,
} from "./rules.ts";

/** What the verifier needs of an opened image. */
export interface ImageParts {
  /** The file. */
  path: string;
  /** Its size in bytes. */
  fileSize: number;
  /** The footer. */
  footer: Footer;
  /** The header's fields. */
  header: HeaderFields;
  /** The region table. */
  regions: readonly ImageRegion[];
  /** The frame directory (the index). */
  frames: readonly FrameInfo[];
  /** The records (data and holes) the frames describe, in index order (walked, not held: lib/image/records.ts). */
  records: Iterable<ImageRecord>;
  /** The section table. */
  sections: readonly SectionEntry[];
  /**
   * Whether {@link checkStructure} has passed on these very records (the loader checks them at open; each frame's
   * table is read again against its checksum): the full pass does not walk them again.
   */
  structureChecked?: boolean;
  /** An open descriptor of the file. */
  fd: number;
  /** Address of a read-only mapping of the whole file, made on first use. */
  mapped(): bigint;
}

/**
 * Drop the whole pages of `[from, to)` of the mapped image from this process (they stay in the page cache and
 * are read again if touched), so that verifying a large image does not grow the process's RSS.
 */
function release(p: ImageParts, from: number, to: number): void {
  const a = alignUp(from, PAGE_SIZE), b = to - (to % PAGE_SIZE);
  if (b > a) madvise(p.mapped() + BigInt(a), BigInt(b - a), MADV.DONTNEED);
}

/** Bytes of the mapped image decoded between two {@link release} calls. */
const RELEASE_EVERY = 16 << 20;

function inFile(p: ImageParts, offset: number, len: number, what: string, at = offset): void {
  if (offset < 0 || len < 0 || offset + len > p.fileSize) {
    throw new ImageError(
      p.path,
      at,
      `${what} [${offset}, ${offset + len}) lies outside the file (${p.fileSize} bytes)`,
    );
  }
}

/**
 * Check the structure the loader relies on: bounds, index order and overlap, record fields. Cheap (no data
 * is read); the loader runs it at open.
 *
 * @param p The image.
 */
export function checkStructure(p: ImageParts): void {
  const f = p.footer;
  const h = p.header;
  const footerAt = p.fileSize - FOOTER_LENGTH;
  checkFooter(p.path, footerAt, f, h, p.fileSize, "file");
  inFile(p, 0, f.headerLength, "header block", footerAt + FOOTER_FIELD.HEADER_LENGTH);
  inFile(p, f.indexOffset, f.indexLength, "index", footerAt + FOOTER_FIELD.INDEX_OFFSET);
  inFile(p, f.sectionsOffset, f.sectionsLength, "section table", footerAt + FOOTER_FIELD.SECTIONS_OFFSET);
  if (f.indexLength !== f.frameCount * DIRECTORY_ENTRY_LENGTH || p.frames.length !== f.frameCount) {
    throw new ImageError(
      p.path,
      footerAt + FOOTER_FIELD.INDEX_LENGTH,
      `index length ${f.indexLength} != ${f.frameCount} frames`,
    );
  }
  const indexAt = f.indexOffset;
  const dataEnd = indexAt - FRAME_LENGTH;
  p.frames.forEach((fr, i) => {
    const at = indexAt + i * DIRECTORY_ENTRY_LENGTH;
    if (fr.offset < h.headerLength || tableEnd(fr) + fr.dataLength > dataEnd) {
      throw new ImageError(p.path, at, `frame ${i} at ${fr.offset} lies outside the data area`);
    }
    checkFrameRange(p.path, at, fr, p.frames[i - 1], p.regions);
  });
  checkTail(p.path, footerAt, f, h, p.sections, eachChecked(p, dataEnd));
  checkTailLength(
    p.path,
    footerAt + FOOTER_FIELD.INDEX_OFFSET,
    footerAt + FOOTER_LENGTH - indexAt,
    f.frameCount,
  );
}

function badRecord(path: string, r: ImageRecord, i: number, indexAt: number, m: string): ImageError {
  return new ImageError(path, r.fileOffset || indexAt, `record ${i} at ${hex(r.address)}: ${m}`);
}

/** The records, each one's own fields checked as it goes by (so that the records are walked once). */
function* eachChecked(p: ImageParts, dataEnd: number): Generator<ImageRecord> {
  const h = p.header, indexAt = p.footer.indexOffset;
  let n = 0;
  for (const r of p.records) {
    const i = n++; // no closure per record: its garbage grew V8's young generation on a walk of many
    if (r.kind === KIND.HOLE) {
      if (r.fileOffset || r.storedLength || r.checksum || r.decodedChecksum || r.codec || r.flags) {
        throw badRecord(p.path, r, i, indexAt, "a hole with file data");
      }
      yield r;
      continue;
    }
    checkRecord(p.path, r, h, p.regions);
    if (r.codec === 0 && r.flags === 0 && r.fileOffset % h.pageSize !== 0) {
      throw badRecord(p.path, r, i, indexAt, `raw data offset ${r.fileOffset} not page aligned`);
    }
    if (r.fileOffset < h.headerLength + FRAME_LENGTH || r.fileOffset + r.storedLength > dataEnd) {
      const m = `data [${r.fileOffset}, ${r.fileOffset + r.storedLength}) outside the data area`;
      throw badRecord(p.path, r, i, indexAt, m);
    }
    yield r;
  }
}

/**
 * The full verification pass, read with `pread` through a window: header block, this machine, structure, index
 * checksum, then the frame reader's walk of the data area (lib/image/reader.ts: every padding byte, frame and
 * record checksum), the END frame, and the tail (sections, section table, nothing else). Throws on the first
 * problem.
 *
 * @param p The image.
 * @param onProgress Called as the walk goes with the file offset it has checked up to (`p.fileSize` at the end).
 * @returns The longest decoded length of a record {@link verifyDecoded} decodes (0 when there is none), seen on
 *   the way: it need not walk the records to size its buffers.
 */
export async function verifyImage(
  p: ImageParts,
  onProgress?: (checkedBytes: number) => void,
): Promise<number> {
  const f = p.footer;
  const src = new FileSource(p.path, p.fd, p.fileSize);
  decodeHeaderBlock(p.path, src.read(0, f.headerLength, "header block")); // its checksum and every byte
  checkHost(p.path, p.header);
  if (!p.structureChecked) checkStructure(p);
  if (checksum(src.read(f.indexOffset, f.indexLength, "index")) !== f.indexChecksum) {
    throw new ImageError(p.path, f.indexOffset, "index checksum mismatch");
  }
  let longest = 0;
  const walk = await walkFrames(src, {
    header: p.header,
    regions: p.regions,
    directory: p.frames,
    endAt: f.indexOffset - FRAME_LENGTH,
    onChecked: (r) => {
      if (decodable(r) && r.length > longest) longest = r.length;
      onProgress?.(r.fileOffset + r.storedLength);
    },
    collect: false,
  });
  if (walk.end.dataLength !== p.fileSize - f.indexOffset) {
    throw new ImageError(p.path, walk.tailAt - FRAME_LENGTH, "bad END frame");
  }
  // The tail: index, section blobs (8 aligned), section table, footer; nothing else.
  for (const s of p.sections) {
    if (checksum(src.read(s.offset, s.length, `section "${s.name}"`)) !== s.checksum) {
      throw new ImageError(p.path, s.offset, `section "${s.name}" checksum mismatch`);
    }
  }
  const tail = src.read(f.indexOffset, p.fileSize - f.indexOffset, "tail");
  checkTailLayout(p.path, tail, f.indexOffset, f, p.sections);
  if (checksum(src.read(f.sectionsOffset, f.sectionsLength, "section table")) !== f.sectionsChecksum) {
    throw new ImageError(p.path, f.sectionsOffset, "section table checksum mismatch");
  }
  onProgress?.(p.fileSize);
  return longest;
}

/** Whether {@link verifyDecoded} decodes `r`: a compressed, unencrypted data record. */
function decodable(r: ImageRecord): boolean {
  return r.kind === KIND.DATA && r.codec !== 0 && r.flags === 0;
}

/** Most bytes of decode buffers {@link verifyDecoded} holds at once (a window of records in flight). */
export const DECODE_BUDGET = 32 << 20;

/**
 * Decode every compressed, unencrypted data record and check its `decodedChecksum`, so that a record whose
 * stored bytes pass their checksum but do not decode is refused before anything is written. Records are
 * decoded on the codec pool (lib/codecs/pool.ts), a window at a time, into at most {@link DECODE_BUDGET} bytes
 * of buffers (each at most `MAX_CHUNK_LENGTH`); the first bad record in file order is reported.
 *
 * @param p The image (mapped; {@link checkStructure} has passed, so every length is bounded).
 * @param codecOf The codec of a codec id.
 * @param window Records decoded at once (default {@link defaultWindow}, fewer when records are large).
 * @param onProgress Called with the decoded bytes checked so far, in file order.
 * @param longest The longest decoded length of a record to decode, when known ({@link verifyImage} returns
 *   it); else the records are walked to find it.
 * @throws {ImageError} At the first record that does not decode to its length and decoded checksum.
 */
export async function verifyDecoded(
  p: ImageParts,
  codecOf: (id: number) => Codec | undefined,
  window: number = defaultWindow(),
  onProgress?: (decodedBytes: number) => void,
  longest?: number,
): Promise<void> {
  if (!(p.header.requiredFeatures & REQUIRED.CODEC)) return; // no record is compressed (a rule checked at open)
  if (longest === undefined) {
    longest = 0;
    for (const r of p.records) if (decodable(r)) longest = Math.max(longest, r.length);
  }
  if (longest === 0) return;
  function* todo() { // walked again, not held
    for (const r of p.records) if (decodable(r)) yield r;
  }
  const inFlight = Math.max(1, Math.min(window, Math.floor(DECODE_BUDGET / longest)));
  const mapped = new MappedSource(p.path, p.mapped(), p.fileSize);
  const codec = (r: ImageRecord) => {
    const c = codecOf(r.codec);
    if (!c) {
      throw new ImageError(p.path, r.fileOffset, `record at ${hex(r.address)}: codec ${r.codec} not given`);
    }
    return c;
  };
  const undecodable = (r: ImageRecord, e: unknown) =>
    e instanceof CryoError || e instanceof RangeError
      ? new ImageError(p.path, r.fileOffset, `record at ${hex(r.address)} does not decode: ${e.message}`)
      : e;
  const mismatch = (r: ImageRecord) =>
    new ImageError(p.path, r.fileOffset, `decoded bytes of the record at ${hex(r.address)} do not match`);
  const free: Uint8Array<ArrayBuffer>[] = [];
  const decode = async (r: ImageRecord) => {
    const c = codec(r);
    const buf = free.pop() ?? new Uint8Array(longest);
    try {
      const dst = buf.subarray(0, r.length);
      try {
        await c.decode(mapped.read(r.fileOffset, r.storedLength, "bytes"), dst);
      } catch (e) {
        throw undecodable(r, e);
      }
      if (await checksumAtAsync(addressOf(dst), BigInt(r.length)) !== r.decodedChecksum) throw mismatch(r);
      return r;
    } finally {
      free.push(buf);
    }
  };
  let scratch: Uint8Array | undefined; // for the records decoded on this thread
  let released = 0;
  let decoded = 0;
  const checked = (r: ImageRecord) => {
    decoded += r.length;
    onProgress?.(decoded);
    if (r.fileOffset - released >= RELEASE_EVERY) {
      release(p, released, r.fileOffset);
      released = r.fileOffset;
    }
  };
  // In file order, small records without a promise (lib/codecs/pool.ts): the first failure is thrown.
  await forEachOrdered(todo(), {
    small: (r) => r.length < INLINE_BYTES,
    now: (r) => {
      scratch ??= new Uint8Array(INLINE_BYTES);
      const dst = scratch.subarray(0, r.length);
      let done: boolean;
      try {
        done = codec(r).decodeNow?.(mapped.read(r.fileOffset, r.storedLength, "bytes"), dst) ?? false;
      } catch (e) {
        throw undecodable(r, e);
      }
      if (!done) return false;
      if (checksum(dst) !== r.decodedChecksum) throw mismatch(r);
      checked(r);
      return true;
    },
    work: decode,
    use: checked,
  }, inFlight);
  release(p, released, p.fileSize);
}
