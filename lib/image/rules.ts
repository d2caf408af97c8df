/**
 * The rules of image format v1 (docs/FORMAT.md) that need more than one decoded structure: the image against
 * this machine, a frame's covered range, a data record's fields, the tail's size and layout, the footer's totals. Both
 * readers call them, the file reader (`MemoryLoader.open()`/`verify()`, lib/image/verify.ts) and the stream
 * reader (`verifyStream()`/`loadStream()`, lib/image/stream.ts), so what one refuses the other refuses too.
 * Rules about one structure alone live in its decoder (header.ts, frames.ts, sections.ts, footer.ts), which
 * both readers call as well.
 *
 * @module
 */

import { PAGE_SIZE } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { ImageError } from "../errors.ts";
import { MAC_SIZE, SEAL_OVERHEAD } from "../codecs/seal.ts";
import { SEAL_SECTION } from "./sealing.ts";
import type { FrameInfo } from "./frames.ts";
import { DIRECTORY_ENTRY_LENGTH } from "./frames.ts";
import {
  alignUp,
  ARCH_X86_64,
  FOOTER_FIELD,
  FOOTER_LENGTH,
  HEADER_FIELD,
  type ImageRecord,
  type ImageRegion,
  KIND,
  MAX_CHUNK_LENGTH,
  MAX_FRAME_RANGE,
  MAX_RECORD_LENGTH,
  MAX_SECTIONS_LENGTH,
  RECORD_FLAG,
  REQUIRED,
} from "./format.ts";
import type { HeaderFields } from "./header.ts";
import type { Footer } from "./footer.ts";
import type { SectionEntry } from "./sections.ts";
import { IndexCheck } from "./index.ts";

/**
 * Refuse to load an incremental image (required feature PARENT) on its own: the bytes its frames do not cover
 * are its parent's. Its chain is loaded instead (lib/image/chain.ts flattens it).
 *
 * @param path The image.
 * @param h Its header.
 * @throws {ImageError} When the image is incremental.
 */
export function refuseIncremental(path: string, h: HeaderFields): void {
  if (h.requiredFeatures & REQUIRED.PARENT) {
    throw new ImageError(
      path,
      16,
      "an incremental image (required feature PARENT) cannot be loaded alone: load its chain (restore, flatten)",
    );
  }
}

/**
 * The image must have been written on a machine like this one: the same page size and architecture.
 *
 * @param path The image, for errors.
 * @param h The fixed header's fields.
 * @throws {ImageError} Naming the header field.
 */
export function checkHost(path: string, h: HeaderFields): void {
  if (h.pageSize !== PAGE_SIZE) {
    throw new ImageError(
      path,
      HEADER_FIELD.PAGE_SIZE,
      `page size ${h.pageSize}, this system's is ${PAGE_SIZE}`,
    );
  }
  if (h.arch !== ARCH_X86_64) {
    throw new ImageError(path, HEADER_FIELD.ARCH, `architecture ${h.arch} is not x86_64 (${ARCH_X86_64})`);
  }
}

const sortedAbsolute = new WeakMap<readonly ImageRegion[], ImageRegion[]>();

/**
 * Whether `[start, end)` lies inside the absolute regions of a decoded region table (it may span adjacent
 * ones). The table's absolute regions do not overlap (lib/image/header.ts checks it), so this is a binary
 * search and a walk over the regions it spans.
 *
 * @param regions The region table, as decoded (not changed afterwards).
 * @param start First address.
 * @param end One past the last address.
 * @returns True when every byte is inside a region.
 */
export function insideRegions(regions: readonly ImageRegion[], start: bigint, end: bigint): boolean {
  let sorted = sortedAbsolute.get(regions);
  if (!sorted) {
    sorted = regions.filter((r) => !r.relocatable).sort((
      a,
      b,
    ) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    sortedAbsolute.set(regions, sorted);
  }
  let lo = 0, hi = sorted.length; // first region whose end is past start
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid].end <= start) lo = mid + 1;
    else hi = mid;
  }
  let at = start;
  for (let i = lo; i < sorted.length && at < end && sorted[i].start <= at; i++) at = sorted[i].end;
  return at >= end;
}

/**
 * Check a frame's covered range before its table is used: at most {@link MAX_FRAME_RANGE} bytes, after the
 * previous frame in `(segment, start)` order without overlap, inside the image's regions (or its relocatable
 * segment).
 *
 * @param path The image, for errors.
 * @param at The frame's offset (or its directory entry's).
 * @param f The frame.
 * @param prev The previous frame.
 * @param regions The region table.
 * @throws {ImageError} Naming the frame.
 */
export function checkFrameRange(
  path: string,
  at: number,
  f: FrameInfo,
  prev: FrameInfo | undefined,
  regions: readonly ImageRegion[],
): void {
  const bad = (m: string) => new ImageError(path, at, `frame of ${hex(f.start)}-${hex(f.end)}: ${m}`);
  if (f.end <= f.start) throw bad("covers no bytes");
  if (f.end - f.start > MAX_FRAME_RANGE) throw bad(`covers more than ${MAX_FRAME_RANGE} bytes`);
  if (f.segment !== 0) {
    const g = regions[f.segment - 1];
    if (!g || !g.relocatable) throw bad(`segment ${f.segment} is not a relocatable region`);
    if (f.end > g.end) throw bad(`runs past the end of segment "${g.path}"`);
  } else if (!insideRegions(regions, f.start, f.end)) {
    throw bad("not inside the image's regions");
  }
  if (prev && (prev.segment > f.segment || (prev.segment === f.segment && prev.end > f.start))) {
    throw bad(`out of order or overlapping (after ${hex(prev.start)})`);
  }
}

/**
 * Check a data record's fields (a table entry, its file offset laid out): known kind, flags and codec, the
 * features they need, encrypted exactly when the image is, at most {@link MAX_RECORD_LENGTH} decoded bytes
 * ({@link MAX_CHUNK_LENGTH} when compressed or encrypted),
 * stored bytes consistent with the codec and encryption, inside its segment or the image's regions.
 *
 * @param path The image, for errors.
 * @param r The record.
 * @param h The image's header.
 * @param regions The region table.
 * @throws {ImageError} At the record's data offset.
 */
export function checkRecord(
  path: string,
  r: ImageRecord,
  h: HeaderFields,
  regions: readonly ImageRegion[],
): void {
  const bad = (m: string) => new ImageError(path, r.fileOffset, `record at ${hex(r.address)}: ${m}`);
  if (r.kind !== KIND.DATA) throw bad(`kind ${r.kind} is not data`);
  if (r.length <= 0 || r.storedLength <= 0) throw bad("empty");
  if (r.flags & ~RECORD_FLAG.ENCRYPTED) throw bad(`unknown flags 0x${r.flags.toString(16)}`);
  const encrypted = (r.flags & RECORD_FLAG.ENCRYPTED) !== 0;
  const sealed = (h.requiredFeatures & REQUIRED.ENCRYPTED) !== 0n;
  if (encrypted !== sealed) {
    throw bad(sealed ? "not encrypted in an encrypted image" : "encrypted, but the header lacks ENCRYPTED");
  }
  if (r.codec > 2) throw bad(`unknown codec ${r.codec}`);
  if (r.codec !== 0 && !(h.requiredFeatures & REQUIRED.CODEC)) {
    throw bad("compressed, but the header lacks CODEC");
  }
  if (r.length > MAX_RECORD_LENGTH) {
    throw bad(`${r.length} decoded bytes (a record holds at most ${MAX_RECORD_LENGTH})`);
  }
  if ((r.codec !== 0 || encrypted) && r.length > MAX_CHUNK_LENGTH) {
    throw bad(
      `${r.length} decoded bytes (a compressed or encrypted record holds at most ${MAX_CHUNK_LENGTH})`,
    );
  }
  if (encrypted) {
    if (r.storedLength < SEAL_OVERHEAD || r.storedLength > r.length + SEAL_OVERHEAD) {
      throw bad(`encrypted record stores ${r.storedLength} bytes for ${r.length}`);
    }
    if (r.decodedChecksum !== 0n) throw bad("encrypted record with a plaintext checksum");
  } else if (r.codec === 0) {
    if (r.storedLength !== r.length) throw bad(`raw record stores ${r.storedLength} of ${r.length} bytes`);
    if (r.checksum !== r.decodedChecksum) throw bad("raw record with two different checksums");
  } else if (r.storedLength > r.length) {
    throw bad(`compressed record stores ${r.storedLength} bytes for ${r.length}`);
  }
  const end = r.address + BigInt(r.length);
  if (r.segment !== 0) {
    const g = regions[r.segment - 1];
    if (!g || !g.relocatable) throw bad(`segment ${r.segment} is not a relocatable region`);
    if (end > g.end) throw bad(`runs past the end of segment "${g.path}"`);
  } else if (!insideRegions(regions, r.address, end)) {
    throw bad("not inside the image's regions");
  }
}

/**
 * The tail (directory, section blobs, section table, footer) of an image with `frameCount` frames holds at
 * most {@link MAX_SECTIONS_LENGTH} bytes besides the directory and the footer.
 *
 * @param path The image, for errors.
 * @param at Where the tail's length was read (the END frame's `dataLength`, or the footer).
 * @param tailLength Bytes of the tail.
 * @param frameCount Frames in the image.
 * @throws {ImageError} When the tail is too short or too long.
 */
export function checkTailLength(path: string, at: number, tailLength: number, frameCount: number): void {
  const sections = tailLength - frameCount * DIRECTORY_ENTRY_LENGTH - FOOTER_LENGTH;
  if (sections < 8 || sections > MAX_SECTIONS_LENGTH) {
    throw new ImageError(
      path,
      at,
      `tail of ${tailLength} bytes for ${frameCount} frames (sections must take 8 to ${MAX_SECTIONS_LENGTH})`,
    );
  }
}

/**
 * The tail holds exactly: index, section blobs (8 aligned, zero padded), section table, footer.
 *
 * @param path The input, for errors.
 * @param tail The tail's bytes.
 * @param tailAt Its offset.
 * @param footer The footer's offsets and lengths.
 * @param sections The section table.
 */
export function checkTailLayout(
  path: string,
  tail: Uint8Array,
  tailAt: number,
  footer: { indexOffset: number; indexLength: number; sectionsOffset: number; sectionsLength: number },
  sections: readonly SectionEntry[],
): void {
  let at = footer.indexOffset + footer.indexLength;
  for (const s of sections) {
    if (s.offset !== at) throw new ImageError(path, at, `expected section "${s.name}" here`);
    const next = alignUp(s.offset + s.length, 8);
    const pad = tail.subarray(s.offset + s.length - tailAt, next - tailAt);
    const i = pad.findIndex((b) => b !== 0);
    if (i >= 0) throw new ImageError(path, s.offset + s.length + i, "non-zero byte in section padding");
    at = next;
  }
  if (at !== footer.sectionsOffset) throw new ImageError(path, at, "expected the section table here");
  if (footer.sectionsOffset + footer.sectionsLength !== tailAt + tail.length - FOOTER_LENGTH) {
    throw new ImageError(
      path,
      footer.sectionsOffset + footer.sectionsLength,
      "unaccounted bytes before the footer",
    );
  }
}

/**
 * The footer repeats the header block's length and checksum and the region table's bounds: they must agree.
 *
 * @param path The image, for errors.
 * @param footerAt The footer's offset.
 * @param f The footer.
 * @param h The header's fields.
 * @throws {ImageError} Naming the footer field that differs.
 */
function checkFooterCopy(path: string, footerAt: number, f: Footer, h: HeaderFields): void {
  if (h.headerChecksum !== f.headerChecksum || h.headerLength !== f.headerLength) {
    throw new ImageError(
      path,
      footerAt + FOOTER_FIELD.HEADER_LENGTH,
      "header checksum or length differs from the footer's copy",
    );
  }
  if (h.regionsOffset !== f.regionsOffset || h.regionsLength !== f.regionsLength) {
    throw new ImageError(
      path,
      footerAt + FOOTER_FIELD.REGIONS_OFFSET,
      "region table bounds differ between header and footer",
    );
  }
}

/**
 * An ENCRYPTED image has its `seal` section (the MAC of the index and the other sections), of its exact size.
 *
 * @param path The image, for errors.
 * @param at The section table's offset.
 * @param h The header's fields.
 * @param sections The section table.
 * @throws {ImageError} When it is missing or of another size.
 */
function checkSealSection(
  path: string,
  at: number,
  h: HeaderFields,
  sections: readonly SectionEntry[],
): void {
  if (!(h.requiredFeatures & REQUIRED.ENCRYPTED)) return;
  const seal = sections.find((s) => s.name === SEAL_SECTION);
  if (!seal) throw new ImageError(path, at, `encrypted image without its "${SEAL_SECTION}" section`);
  if (seal.length !== MAC_SIZE) {
    throw new ImageError(
      path,
      seal.offset,
      `"${SEAL_SECTION}" section of ${seal.length} bytes (expected ${MAC_SIZE})`,
    );
  }
}

/**
 * Each section's blob lies between the directory and the section table.
 *
 * @param path The image, for errors.
 * @param footer Where the directory and the section table lie.
 * @param sections The section table.
 * @throws {ImageError} Naming the section.
 */
function checkSectionBounds(
  path: string,
  footer: { indexOffset: number; indexLength: number; sectionsOffset: number },
  sections: readonly SectionEntry[],
): void {
  const from = footer.indexOffset + footer.indexLength;
  for (const s of sections) {
    if (s.offset < from || s.offset + s.length > footer.sectionsOffset) {
      throw new ImageError(
        path,
        footer.sectionsOffset,
        `section "${s.name}" [${s.offset}, ${
          s.offset + s.length
        }) lies outside [${from}, ${footer.sectionsOffset})`,
      );
    }
  }
}

/**
 * The footer against the image it ends: the image's size, and the footer's copy of the header's fields. Both
 * readers check it once the footer is read (a file at open, a stream at its end).
 *
 * @param path The image, for errors.
 * @param footerAt The footer's offset.
 * @param f The footer.
 * @param h The header's fields.
 * @param size Bytes of the image.
 * @param what `"file"` or `"stream"`, for errors.
 * @throws {ImageError} Naming the footer field that differs.
 */
export function checkFooter(
  path: string,
  footerAt: number,
  f: Footer,
  h: HeaderFields,
  size: number,
  what: "file" | "stream",
): void {
  if (f.fileSize !== size) {
    throw new ImageError(
      path,
      footerAt + FOOTER_FIELD.FILE_SIZE,
      `${what} of ${size} bytes, the footer says ${f.fileSize}`,
    );
  }
  checkFooterCopy(path, footerAt, f, h);
}

/**
 * The tail's contents against the footer: the index in order and without overlaps, an encrypted image's seal
 * section, every section blob between the index and the section table, the footer's data total. Both readers
 * check it once the tail is decoded, before a byte is written.
 *
 * @param path The image, for errors.
 * @param footerAt The footer's offset.
 * @param f The footer.
 * @param h The header's fields.
 * @param sections The section table.
 * @param records The index, or the check of it a reader made as it read the records.
 * @throws {ImageError} On the first rule broken, naming where.
 */
export function checkTail(
  path: string,
  footerAt: number,
  f: Footer,
  h: HeaderFields,
  sections: readonly SectionEntry[],
  records: Iterable<ImageRecord> | IndexCheck,
): void {
  // One walk of the records: their order, and (as they go by) the sum of the data records' lengths, which the
  // footer's `dataBytes` must equal. A reader that checked them as it read them gives its check.
  const check = records instanceof IndexCheck ? records : IndexCheck.of(records);
  if (check.problem) throw new ImageError(path, f.indexOffset, check.problem.message);
  checkSealSection(path, f.sectionsOffset, h, sections);
  checkSectionBounds(path, f, sections);
  if (check.dataBytes !== f.dataBytes) {
    throw new ImageError(
      path,
      footerAt + FOOTER_FIELD.DATA_BYTES,
      `${check.dataBytes} data bytes, the footer says ${f.dataBytes}`,
    );
  }
}
