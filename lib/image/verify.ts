/**
 * The verification pass: footer, header, bounds of every offset and length against the file size, index order
 * and overlap, every byte between records (zero padding and frame headers), and all checksums. It reads the
 * image through a read-only mapping and throws {@link ImageError} naming the file and offset.
 *
 * @module
 */

import { hex, libc, ptrOf } from "../../ffi/libc.ts";
import { ImageError } from "../errors.ts";
import { checksumAt } from "./checksum.ts";
import { indexProblem, recordEnd } from "./index.ts";
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
  RECORD_FLAG,
  REQUIRED,
  type SectionEntry,
} from "./layout.ts";
import { covered } from "./persister.ts";
import {
  decodeFrameHeader,
  decodeTable,
  DIRECTORY_ENTRY_LENGTH,
  ENTRY_LENGTH,
  type FrameInfo,
  sameFrame,
  tableEnd,
} from "./frames.ts";
import { checkFrameRange } from "./stream_checks.ts";

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
const zeroPtr = Deno.UnsafePointer.of(ZERO_PAGE);

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
    if (libc.memcmp(ptrOf(p.base + BigInt(at)), zeroPtr, BigInt(n)) !== 0) {
      const bytes = view(p, at, n);
      throw new ImageError(p.path, at + bytes.findIndex((b) => b !== 0), `non-zero byte in ${what}`);
    }
  }
}

function view(p: ImageParts, offset: number, len: number): Uint8Array {
  if (len === 0) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(p.base + BigInt(offset))!, len));
}

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
  if (h.headerChecksum !== f.headerChecksum || h.headerLength !== f.headerLength) {
    throw new ImageError(p.path, footerAt + 24, "header checksum or length differs from the footer's copy");
  }
  if (h.regionsOffset !== f.regionsOffset || h.regionsLength !== f.regionsLength) {
    throw new ImageError(p.path, footerAt + 32, "region table bounds differ between header and footer");
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
  const problem = indexProblem(p.records);
  if (problem) throw new ImageError(p.path, indexAt, problem.message);
  p.records.forEach((r, i) => {
    const at = r.fileOffset || indexAt;
    const bad = (m: string) => new ImageError(p.path, at, `record ${i} at ${hex(r.address)}: ${m}`);
    if (r.kind !== KIND.DATA && r.kind !== KIND.HOLE) throw bad(`unknown kind ${r.kind}`);
    if (r.flags & ~RECORD_FLAG.ENCRYPTED) throw bad(`unknown flags 0x${r.flags.toString(16)}`);
    if ((r.flags & RECORD_FLAG.ENCRYPTED) && !(h.requiredFeatures & REQUIRED.ENCRYPTED)) {
      throw bad("encrypted, but the header lacks the ENCRYPTED feature");
    }
    if (r.codec > 2) throw bad(`unknown codec ${r.codec}`);
    if (r.codec !== 0 && !(h.requiredFeatures & REQUIRED.CODEC)) {
      throw bad("compressed, but the header lacks CODEC");
    }
    if (r.segment !== 0) {
      const g = p.regions[r.segment - 1];
      if (!g || !g.relocatable) throw bad(`segment ${r.segment} is not a relocatable region`);
      if (recordEnd(r) > g.end) throw bad(`runs past the end of segment "${g.path}"`);
    } else if (!covered(p.regions, r.address, recordEnd(r))) {
      throw bad("not inside the image's regions");
    }
    if (r.kind === KIND.HOLE) {
      if (r.fileOffset || r.storedLength || r.checksum || r.decodedChecksum || r.codec || r.flags) {
        throw bad("a hole with file data");
      }
      return;
    }
    if (r.codec === 0 && r.flags === 0 && r.fileOffset % h.pageSize !== 0) {
      throw bad(`raw data offset ${r.fileOffset} not page aligned`);
    }
    if (r.fileOffset < h.headerLength + FRAME_LENGTH || r.fileOffset + r.storedLength > dataEnd) {
      throw bad(`data [${r.fileOffset}, ${r.fileOffset + r.storedLength}) outside the data area`);
    }
    if (r.codec === 0 && !(r.flags & RECORD_FLAG.ENCRYPTED)) {
      if (r.storedLength !== r.length) throw bad(`raw record stores ${r.storedLength} of ${r.length} bytes`);
      if (r.checksum !== r.decodedChecksum) throw bad("raw record with two different checksums");
    }
  });
}

/**
 * The full verification pass. Throws on the first problem.
 *
 * @param p The image (mapped).
 */
export function verifyImage(p: ImageParts): void {
  const f = p.footer;
  const footerAt = p.fileSize - FOOTER_LENGTH;
  decodeHeaderBlock(p.path, view(p, 0, f.headerLength)); // header checksum and every byte of the block
  checkStructure(p);
  if (sumAt(p, f.indexOffset, f.indexLength) !== f.indexChecksum) {
    throw new ImageError(p.path, f.indexOffset, "index checksum mismatch");
  }
  // Walk the data area in file order: zero padding, each frame (header equal to its directory entry, table,
  // each record's padding and data), the END frame.
  let pos = f.headerLength;
  for (const d of p.frames) {
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
  }
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
  let at = f.indexOffset + f.indexLength;
  for (const s of p.sections) {
    if (s.offset !== at) throw new ImageError(p.path, at, `expected section "${s.name}" here`);
    inFile(p, s.offset, s.length, `section "${s.name}"`);
    if (sumAt(p, s.offset, s.length) !== s.checksum) {
      throw new ImageError(p.path, s.offset, `section "${s.name}" checksum mismatch`);
    }
    const next = alignUp(s.offset + s.length, 8);
    expectZero(p, s.offset + s.length, next - s.offset - s.length, "section padding");
    at = next;
  }
  if (at !== f.sectionsOffset) throw new ImageError(p.path, at, "expected the section table here");
  if (sumAt(p, f.sectionsOffset, f.sectionsLength) !== f.sectionsChecksum) {
    throw new ImageError(p.path, f.sectionsOffset, "section table checksum mismatch");
  }
  if (f.sectionsOffset + f.sectionsLength !== footerAt) {
    throw new ImageError(p.path, f.sectionsOffset + f.sectionsLength, "unaccounted bytes before the footer");
  }
}
