/**
 * The image's `layout` section: the source's whole map at the checkpoint, persisted regions and left out ones,
 * so that a restore knows which address space was free then (lib/kernel/layout_fix.ts) and `cryo map` can show
 * what was left out.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { type Perms, type Region, REGION_KINDS, type RegionKind } from "./region.ts";

/** One region of the source's whole map at the checkpoint (the image's `layout` section). */
export interface RecordedRegion {
  /** First address. */
  start: bigint;
  /** One past the last. */
  end: bigint;
  /** Protection and sharing. */
  perms: Perms;
  /** What it was. */
  kind: RegionKind;
}

const LAYOUT_MAGIC = 0x5459414c43595243n; // "CRYCLAYT"

/**
 * Encode the `layout` section: the source's whole map at the checkpoint. Magic `CRYCLAYT` (u64), u32 version
 * (1), u32 count, then per region start u64, end u64, perms u8 (bit0 r, bit1 w, bit2 x, bit3 shared), kind u8
 * (as in the region table), 6 zero bytes.
 *
 * @param regions The regions.
 * @returns The section's bytes.
 */
export function encodeLayout(regions: readonly Region[]): Uint8Array {
  const out = new Uint8Array(16 + 24 * regions.length);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, LAYOUT_MAGIC, true);
  v.setUint32(8, 1, true);
  v.setUint32(12, regions.length, true);
  regions.forEach((r, i) => {
    const at = 16 + 24 * i;
    v.setBigUint64(at, r.start, true);
    v.setBigUint64(at + 8, r.end, true);
    const p = r.perms;
    v.setUint8(at + 16, (p.read ? 1 : 0) | (p.write ? 2 : 0) | (p.exec ? 4 : 0) | (p.shared ? 8 : 0));
    v.setUint8(at + 17, REGION_KINDS.indexOf(r.kind));
  });
  return out;
}

/**
 * Decode the `layout` section, every length checked.
 *
 * @param bytes The section.
 * @param path The image, for errors.
 * @returns The regions.
 * @throws {ImageError} When it is malformed.
 */
export function decodeLayout(bytes: Uint8Array, path: string): RecordedRegion[] {
  const bad = (what: string) => new ImageError(path, undefined, `layout section: ${what}`);
  if (bytes.length < 16) throw bad(`${bytes.length} bytes (at least 16)`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getBigUint64(0, true) !== LAYOUT_MAGIC) throw bad("bad magic");
  if (v.getUint32(8, true) !== 1) throw bad(`version ${v.getUint32(8, true)} (this reader knows 1)`);
  const n = v.getUint32(12, true);
  if (bytes.length !== 16 + 24 * n) throw bad(`${bytes.length} bytes for ${n} regions`);
  const out: RecordedRegion[] = [];
  for (let i = 0; i < n; i++) {
    const at = 16 + 24 * i;
    const start = v.getBigUint64(at, true), end = v.getBigUint64(at + 8, true);
    const p = v.getUint8(at + 16), k = v.getUint8(at + 17);
    if (end <= start || p > 15 || k >= REGION_KINDS.length) throw bad(`bad entry ${i}`);
    out.push({
      start,
      end,
      perms: { read: (p & 1) !== 0, write: (p & 2) !== 0, exec: (p & 4) !== 0, shared: (p & 8) !== 0 },
      kind: REGION_KINDS[k],
    });
  }
  return out;
}
