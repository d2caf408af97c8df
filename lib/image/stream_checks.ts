/**
 * The checks of the streaming reader that need no data: a frame header against the header and the previous
 * frame (order, bounds, flags), the tail's layout, and the index against the frames read.
 *
 * @module
 */

import { hex } from "../../ffi/libc.ts";
import { ImageError } from "../errors.ts";
import { compareRecord, recordEnd } from "./index.ts";
import type { FrameInfo } from "./frames.ts";
import {
  alignUp,
  FOOTER_LENGTH,
  type HeaderFields,
  type ImageRecord,
  type ImageRegion,
  KIND,
  RECORD_FLAG,
  REQUIRED,
  type SectionEntry,
} from "./layout.ts";
import { covered } from "./persister.ts";

/**
 * Check a frame header before its data is read.
 *
 * @param path The input, for errors.
 * @param at The frame's offset.
 * @param r The frame's record.
 * @param h The image's header.
 * @param regions The region table.
 * @param prev The previous frame's record.
 * @param encrypted Whether the image is encrypted.
 */
export function checkFrame(
  path: string,
  at: number,
  r: ImageRecord,
  h: HeaderFields,
  regions: readonly ImageRegion[],
  prev: ImageRecord | undefined,
  encrypted: boolean,
): void {
  const bad = (m: string) => new ImageError(path, at, `frame of the record at ${hex(r.address)}: ${m}`);
  if (r.kind !== KIND.DATA) throw bad(`kind ${r.kind} is not data`);
  if (r.length <= 0) throw bad("empty");
  if (r.flags & ~RECORD_FLAG.ENCRYPTED) throw bad(`unknown flags 0x${r.flags.toString(16)}`);
  if (encrypted !== ((r.flags & RECORD_FLAG.ENCRYPTED) !== 0)) {
    throw bad(
      encrypted ? "not encrypted in an encrypted image" : "encrypted, but the header lacks ENCRYPTED",
    );
  }
  if (r.codec > 2) throw bad(`unknown codec ${r.codec}`);
  if (r.codec !== 0 && !(h.requiredFeatures & REQUIRED.CODEC)) {
    throw bad("compressed, but the header lacks CODEC");
  }
  if (r.codec === 0 && !encrypted && (r.storedLength !== r.length || r.checksum !== r.decodedChecksum)) {
    throw bad("raw record with a stored length or checksum that differs");
  }
  if (r.segment !== 0) {
    const g = regions[r.segment - 1];
    if (!g || !g.relocatable) throw bad(`segment ${r.segment} is not a relocatable region`);
    if (recordEnd(r) > g.end) throw bad(`runs past the end of segment "${g.path}"`);
  } else if (!covered(regions, r.address, recordEnd(r))) {
    throw bad("not inside the image's regions");
  }
  if (prev && (compareRecord(prev, r) >= 0 || (prev.segment === r.segment && recordEnd(prev) > r.address))) {
    throw bad(`out of order or overlapping (after ${hex(prev.address)})`);
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
 * Check a frame's covered range before its table is read: after the previous frame in `(segment, start)` order
 * without overlap, inside the image's regions (or its relocatable segment).
 *
 * @param path The image, for errors.
 * @param at The frame's offset.
 * @param f The frame.
 * @param prev The previous frame.
 * @param regions The region table.
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
  if (f.segment !== 0) {
    const g = regions[f.segment - 1];
    if (!g || !g.relocatable) throw bad(`segment ${f.segment} is not a relocatable region`);
    if (f.end > g.end) throw bad(`runs past the end of segment "${g.path}"`);
  } else if (!covered(regions, f.start, f.end)) {
    throw bad("not inside the image's regions");
  }
  if (prev && (prev.segment > f.segment || (prev.segment === f.segment && prev.end > f.start))) {
    throw bad(`out of order or overlapping (after ${hex(prev.start)})`);
  }
}
