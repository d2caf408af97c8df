/**
 * The verification pass: footer, header, bounds of every offset and length against the file size, index order
 * and overlap, every byte between records (zero padding and frame headers), and all checksums. It reads the
 * image through a read-only mapping and throws {@link ImageError} naming the file and offset.
 *
 * @module
 */

import { MADV } from "../../ffi/constants.ts";
import { addrOf, libc, madvise, PAGE_SIZE, ptrOf } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import type { Codec } from "../codecs/codec.ts";
import { defaultWindow, ordered } from "../codecs/pool.ts";
import { CryoError, ImageError } from "../errors.ts";
import { checksumAt, checksumAtAsync } from "./checksum.ts";
import { indexProblem } from "./index.ts";
import {
  alignUp,
  decodeHeaderBlock,
  type Footer,
  FOOTER_LENGTH,
  FRAME_LENGTH,
  type HeaderFields,
  type ImageRecord,
  type ImageRegion,
  KIND,
  type SectionEntry,
} from "./layout.ts";
import {
  decodeFrameHeader,
  decodeTable,
  DIRECTORY_ENTRY_LENGTH,
  ENTRY_LENGTH,
  type FrameInfo,
  sameFrame,
  tableEnd,
} from "./frames.ts";
import {
  checkDataBytes,
  checkFooterCopy,
  checkFrameRange,
  checkHost,
  checkRecord,
  checkSealSection,
  checkSectionBounds,
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
  /** The records (data and holes) the frames describe. */
  records: readonly ImageRecord[];
  /** The section table. */
  sections: readonly SectionEntry[];
  /** Address of a read-only mapping of the whole file. */
  base: bigint;
}

const ZERO_PAGE = new Uint8Array(1 << 16);
let zeroPtr_: Deno.PointerValue | undefined;
/** Its address, taken on first use (importing this module needs no `--allow-ffi`). */
const zeroPtr = (): Deno.PointerValue => (zeroPtr_ ??= Deno.UnsafePointer.of(ZERO_PAGE));

/**
 * Throw unless `[offset, offset + len)` of the mapped image is all zero.
 *
 * @param p The image.
 * @param offset File offset.
 * @param len Bytes.
 * @param what What the bytes are, for the error.
 */
function expectZero(p: ImageParts, offset: number, len: number, what: string): void {
  for (let at = offset; at < offset + len; at += ZERO_PAGE.length) {
    const n = Math.min(ZERO_PAGE.length, offset + len - at);
    if (libc.memcmp(ptrOf(p.base + BigInt(at)), zeroPtr(), BigInt(n)) !== 0) {
      const bytes = view(p, at, n);
      throw new ImageError(p.path, at + bytes.findIndex((b) => b !== 0), `non-zero byte in ${what}`);
    }
  }
}

function view(p: ImageParts, offset: number, len: number): Uint8Array {
  if (len === 0) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(p.base + BigInt(offset))!, len));
}

/**
 * Drop the whole pages of `[from, to)` of the mapped image from this process (they stay in the page cache and
 * are read again if touched), so that verifying a large image does not grow the process's RSS.
 */
function release(p: ImageParts, from: number, to: number): void {
  const a = alignUp(from, PAGE_SIZE), b = to - (to % PAGE_SIZE);
  if (b > a) madvise(p.base + BigInt(a), BigInt(b - a), MADV.DONTNEED);
}

/** Bytes of the mapped image verified between two {@link release} calls. */
const RELEASE_EVERY = 16 << 20;

function sumAt(p: ImageParts, offset: number, len: number): bigint {
  return checksumAt(p.base + BigInt(offset), BigInt(len));
}

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
  const footerAt = p.fileSize - FOOTER_LENGTH;
  if (f.fileSize !== p.fileSize) {
    throw new ImageError(p.path, footerAt + 104, `file size ${p.fileSize} != ${f.fileSize} in the footer`);
  }
  inFile(p, 0, f.headerLength, "header block", footerAt + 16);
  inFile(p, f.indexOffset, f.indexLength, "index", footerAt + 48);
  inFile(p, f.sectionsOffset, f.sectionsLength, "section table", footerAt + 72);
  if (f.indexLength !== f.frameCount * DIRECTORY_ENTRY_LENGTH || p.frames.length !== f.frameCount) {
    throw new ImageError(p.path, footerAt + 56, `index length ${f.indexLength} != ${f.frameCount} frames`);
  }
  const h = p.header;
  checkFooterCopy(p.path, footerAt, f, h);
  const indexAt = f.indexOffset;
  const dataEnd = indexAt - FRAME_LENGTH;
  p.frames.forEach((fr, i) => {
    const at = indexAt + i * DIRECTORY_ENTRY_LENGTH;
    if (fr.offset < h.headerLength || tableEnd(fr) + fr.dataLength > dataEnd) {
      throw new ImageError(p.path, at, `frame ${i} at ${fr.offset} lies outside the data area`);
    }
    checkFrameRange(p.path, at, fr, p.frames[i - 1], p.regions);
  });
  const problem = indexProblem(p.records);
  if (problem) throw new ImageError(p.path, indexAt, problem.message);
  checkTailLength(p.path, footerAt + 48, footerAt + FOOTER_LENGTH - indexAt, f.frameCount);
  checkSealSection(p.path, f.sectionsOffset, h, p.sections);
  checkSectionBounds(p.path, f, p.sections);
  checkDataBytes(p.path, footerAt, f.dataBytes, p.records);
  p.records.forEach((r, i) => {
    const bad = (m: string) =>
      new ImageError(p.path, r.fileOffset || indexAt, `record ${i} at ${hex(r.address)}: ${m}`);
    if (r.kind === KIND.HOLE) {
      if (r.fileOffset || r.storedLength || r.checksum || r.decodedChecksum || r.codec || r.flags) {
        throw bad("a hole with file data");
      }
      return;
    }
    checkRecord(p.path, r, h, p.regions);
    if (r.codec === 0 && r.flags === 0 && r.fileOffset % h.pageSize !== 0) {
      throw bad(`raw data offset ${r.fileOffset} not page aligned`);
    }
    if (r.fileOffset < h.headerLength + FRAME_LENGTH || r.fileOffset + r.storedLength > dataEnd) {
      throw bad(`data [${r.fileOffset}, ${r.fileOffset + r.storedLength}) outside the data area`);
    }
  });
}

/**
 * The full verification pass. Throws on the first problem.
 *
 * @param p The image (mapped).
 * @param onProgress Called as the walk goes with the file offset it has checked up to (`p.fileSize` at the end).
 */
export function verifyImage(p: ImageParts, onProgress?: (checkedBytes: number) => void): void {
  const f = p.footer;
  decodeHeaderBlock(p.path, view(p, 0, f.headerLength)); // header checksum and every byte of the block
  checkHost(p.path, p.header);
  checkStructure(p);
  if (sumAt(p, f.indexOffset, f.indexLength) !== f.indexChecksum) {
    throw new ImageError(p.path, f.indexOffset, "index checksum mismatch");
  }
  // Walk the data area in file order: zero padding, each frame (header equal to its directory entry, table,
  // each record's padding and data), the END frame.
  let pos = f.headerLength;
  let released = 0;
  for (const d of p.frames) {
    if (pos - released >= RELEASE_EVERY) {
      release(p, released, pos);
      released = pos;
    }
    const frameAt = alignUp(pos, 8);
    if (d.offset !== frameAt) {
      throw new ImageError(p.path, frameAt, `expected the frame of ${hex(d.start)} here`);
    }
    expectZero(p, pos, frameAt - pos, "padding");
    const fr = decodeFrameHeader(p.path, view(p, frameAt, FRAME_LENGTH), frameAt);
    if (!sameFrame(fr, d)) {
      throw new ImageError(
        p.path,
        frameAt,
        `frame header disagrees with its directory entry (${hex(d.start)})`,
      );
    }
    const tableAt = frameAt + FRAME_LENGTH;
    inFile(p, tableAt, fr.count * ENTRY_LENGTH, "frame table", frameAt);
    if (sumAt(p, tableAt, fr.count * ENTRY_LENGTH) !== fr.tableChecksum) {
      throw new ImageError(p.path, tableAt, "frame table checksum mismatch");
    }
    pos = tableEnd(fr);
    for (const r of decodeTable(p.path, fr, view(p, tableAt, fr.count * ENTRY_LENGTH), p.header.pageSize)) {
      expectZero(p, pos, r.fileOffset - pos, "padding");
      if (sumAt(p, r.fileOffset, r.storedLength) !== r.checksum) {
        throw new ImageError(
          p.path,
          r.fileOffset,
          `data checksum mismatch for the record at ${hex(r.address)}`,
        );
      }
      pos = r.fileOffset + r.storedLength;
    }
    onProgress?.(pos);
  }
  release(p, released, pos);
  const endAt = alignUp(pos, 8);
  if (endAt !== f.indexOffset - FRAME_LENGTH) {
    throw new ImageError(p.path, endAt, "expected the END frame here");
  }
  expectZero(p, pos, endAt - pos, "padding");
  const endFrame = decodeFrameHeader(p.path, view(p, endAt, FRAME_LENGTH), endAt);
  if (!endFrame.isEnd || endFrame.dataLength !== p.fileSize - f.indexOffset) {
    throw new ImageError(p.path, endAt, "bad END frame");
  }
  // The tail: index, section blobs (8 aligned), section table, footer; nothing else.
  for (const s of p.sections) {
    inFile(p, s.offset, s.length, `section "${s.name}"`);
    if (sumAt(p, s.offset, s.length) !== s.checksum) {
      throw new ImageError(p.path, s.offset, `section "${s.name}" checksum mismatch`);
    }
  }
  checkTailLayout(p.path, view(p, f.indexOffset, p.fileSize - f.indexOffset), f.indexOffset, f, p.sections);
  if (sumAt(p, f.sectionsOffset, f.sectionsLength) !== f.sectionsChecksum) {
    throw new ImageError(p.path, f.sectionsOffset, "section table checksum mismatch");
  }
  onProgress?.(p.fileSize);
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
 * @throws {ImageError} At the first record that does not decode to its length and decoded checksum.
 */
export async function verifyDecoded(
  p: ImageParts,
  codecOf: (id: number) => Codec | undefined,
  window: number = defaultWindow(),
  onProgress?: (decodedBytes: number) => void,
): Promise<void> {
  const todo = p.records.filter((r) => r.kind === KIND.DATA && r.codec !== 0 && r.flags === 0);
  if (todo.length === 0) return;
  const longest = todo.reduce((n, r) => Math.max(n, r.length), 1);
  const inFlight = Math.max(1, Math.min(window, Math.floor(DECODE_BUDGET / longest)));
  const free: Uint8Array<ArrayBuffer>[] = [];
  const decode = async (r: ImageRecord) => {
    const codec = codecOf(r.codec);
    if (!codec) {
      throw new ImageError(p.path, r.fileOffset, `record at ${hex(r.address)}: codec ${r.codec} not given`);
    }
    const buf = free.pop() ?? new Uint8Array(longest);
    try {
      const dst = buf.subarray(0, r.length);
      try {
        await codec.decode(view(p, r.fileOffset, r.storedLength), dst);
      } catch (e) {
        if (e instanceof CryoError || e instanceof RangeError) {
          throw new ImageError(
            p.path,
            r.fileOffset,
            `record at ${hex(r.address)} does not decode: ${e.message}`,
          );
        }
        throw e;
      }
      const sum = await checksumAtAsync(addrOf(Deno.UnsafePointer.of(dst)), BigInt(r.length));
      if (sum !== r.decodedChecksum) {
        throw new ImageError(
          p.path,
          r.fileOffset,
          `decoded bytes of the record at ${hex(r.address)} do not match`,
        );
      }
      return r;
    } finally {
      free.push(buf);
    }
  };
  let released = 0;
  let decoded = 0;
  for await (const r of ordered(todo, decode, inFlight)) { // in file order: the first failure is thrown
    decoded += r.length;
    onProgress?.(decoded);
    if (r.fileOffset - released >= RELEASE_EVERY) {
      release(p, released, r.fileOffset);
      released = r.fileOffset;
    }
  }
  release(p, released, p.fileSize);
}
