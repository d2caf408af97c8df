/**
 * Helpers for the fuzz tests: a seeded random source, a tolerant map of where every field of an image lies
 * (it never throws on a damaged image: what cannot be found is left out), mutators over those fields, and
 * `fixChecksums()`, which recomputes every checksum it can find so that a mutation reaches the deeper checks.
 *
 * @module
 */

import { checksum } from "../lib/image/checksum.ts";

/** A seeded pseudo-random source (mulberry32): the same seed gives the same mutations. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** A float in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** One of `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }
}

/** Where a field lies and how wide it is (bytes: 1, 2, 4 or 8). */
export interface Field {
  at: number;
  width: 1 | 2 | 4 | 8;
  name: string;
}

/** One frame as found in the file. */
export interface FrameMap {
  at: number;
  dir: number;
  count: number;
  entries: number[];
  data: { at: number; length: number; raw: boolean }[];
}

/** Where the parts of an image lie, as far as they can be found. */
export interface ImageMap {
  pageSize: number;
  headerLength: number;
  regions: number[];
  frames: FrameMap[];
  endFrame: number;
  indexOffset: number;
  indexLength: number;
  sections: { entry: number; at: number; length: number; nameLength: number }[];
  sectionsOffset: number;
  sectionsLength: number;
  footer: number;
}

const align = (x: number, a: number) => Math.ceil(x / a) * a;

/** The map of an image's fields; parts that cannot be found are left out (never throws). */
export function mapImage(b: Uint8Array): ImageMap {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const ok = (at: number, len: number) => at >= 0 && len >= 0 && at + len <= b.length;
  const u32 = (at: number) => (ok(at, 4) ? v.getUint32(at, true) : -1);
  const u64 = (at: number) => (ok(at, 8) ? Number(v.getBigUint64(at, true)) : -1);
  const m: ImageMap = {
    pageSize: ok(32, 4) ? u32(32) || 4096 : 4096,
    headerLength: Math.min(u64(40), b.length),
    regions: [],
    frames: [],
    endFrame: -1,
    indexOffset: -1,
    indexLength: 0,
    sections: [],
    sectionsOffset: -1,
    sectionsLength: 0,
    footer: b.length >= 128 ? b.length - 128 : -1,
  };
  if (!(m.pageSize > 0 && m.pageSize <= 1 << 16)) m.pageSize = 4096;
  let at = u64(64);
  for (let i = 0, n = u32(80); i < Math.min(n, 10_000) && ok(at, 40) && at + 40 <= m.headerLength; i++) {
    m.regions.push(at);
    at = align(at + 40 + b[at + 35] + u32(at + 36), 8);
  }
  if (m.footer < 0) return m;
  const f = m.footer;
  m.indexOffset = u64(f + 48);
  m.indexLength = u64(f + 56);
  m.sectionsOffset = u64(f + 72);
  m.sectionsLength = u64(f + 80);
  if (ok(m.indexOffset - 64, 64)) m.endFrame = m.indexOffset - 64;
  if (ok(m.indexOffset, m.indexLength)) {
    for (let i = 0; i < Math.min(m.indexLength / 48, 100_000); i++) {
      const dir = m.indexOffset + 48 * i;
      const fa = u64(dir);
      const count = u32(fa + 4);
      if (!ok(fa, 64) || count > 1024 || !ok(fa + 64, 40 * count)) continue;
      const fr: FrameMap = { at: fa, dir, count, entries: [], data: [] };
      let cursor = align(fa + 64 + 40 * count, m.pageSize);
      for (let k = 0; k < count; k++) {
        const e = fa + 64 + 40 * k;
        fr.entries.push(e);
        if (b[e + 32] === 1) { // a hole entry (incremental images): no data, no alignment
          fr.data.push({ at: cursor, length: 0, raw: false });
          continue;
        }
        const raw = b[e + 33] === 0 && v.getUint16(e + 34, true) === 0;
        if (raw || k === 0) cursor = align(cursor, m.pageSize);
        const length = u32(e + 12);
        fr.data.push({ at: cursor, length, raw });
        cursor += length;
      }
      m.frames.push(fr);
    }
  }
  if (ok(m.sectionsOffset, 8) && m.sectionsOffset + m.sectionsLength <= b.length) {
    let e = m.sectionsOffset + 8;
    for (let i = 0, n = u32(m.sectionsOffset); i < Math.min(n, 1000) && ok(e, 32); i++) {
      const nameLength = u32(e + 24);
      m.sections.push({ entry: e, at: u64(e), length: u64(e + 8), nameLength });
      e = align(e + 32 + Math.min(nameLength, 1 << 16), 8);
    }
  }
  return m;
}

/** Every field of the image's structure that a mutation may target. */
export function fieldsOf(m: ImageMap): Field[] {
  const out: Field[] = [];
  const add = (at: number, width: Field["width"], name: string) => at >= 0 && out.push({ at, width, name });
  for (
    const [o, w, n] of [
      [8, 4, "version"],
      [12, 4, "fixedLength"],
      [16, 8, "requiredFeatures"],
      [24, 8, "optionalFeatures"],
      [32, 4, "pageSize"],
      [36, 4, "arch"],
      [40, 8, "headerLength"],
      [48, 8, "sourceOffset"],
      [56, 8, "sourceLength"],
      [64, 8, "regionsOffset"],
      [72, 8, "regionsLength"],
      [80, 4, "regionCount"],
      [84, 4, "reserved/seal"],
    ] as const
  ) add(o, w, `header.${n}`);
  for (const r of m.regions) {
    for (
      const [o, w, n] of [
        [0, 8, "start"],
        [8, 8, "end"],
        [16, 8, "offset"],
        [32, 1, "perms"],
        [33, 1, "kind"],
        [34, 1, "flags"],
        [35, 1, "deviceLength"],
        [36, 4, "pathLength"],
      ] as const
    ) add(r + o, w, `region.${n}`);
  }
  for (const f of m.frames) {
    for (
      const [o, w, n] of [
        [0, 4, "magic"],
        [4, 4, "count"],
        [8, 4, "segment"],
        [12, 4, "reserved"],
        [16, 8, "start"],
        [24, 8, "end"],
        [32, 8, "dataLength"],
        [48, 8, "reserved2"],
      ] as const
    ) add(f.at + o, w, `frame.${n}`);
    for (
      const [o, w, n] of [
        [0, 8, "offset"],
        [8, 8, "start"],
        [16, 8, "end"],
        [24, 8, "dataLength"],
        [40, 4, "count"],
        [44, 4, "segment"],
      ] as const
    ) add(f.dir + o, w, `directory.${n}`);
    for (const e of f.entries) {
      for (
        const [o, w, n] of [
          [0, 8, "address"],
          [8, 4, "length"],
          [12, 4, "storedLength"],
          [24, 8, "decodedChecksum"],
          [32, 1, "kind"],
          [33, 1, "codec"],
          [34, 2, "flags"],
          [36, 4, "reserved"],
        ] as const
      ) add(e + o, w, `entry.${n}`);
    }
  }
  if (m.endFrame >= 0) add(m.endFrame + 32, 8, "end.dataLength");
  if (m.footer >= 0) {
    for (let o = 16; o < 120; o += 8) {
      if (o !== 24 && o !== 64 && o !== 88) add(m.footer + o, 8, `footer.${o}`);
    }
  }
  for (const s of m.sections) {
    add(s.entry, 8, "section.offset");
    add(s.entry + 8, 8, "section.length");
    add(s.entry + 24, 4, "section.nameLength");
  }
  if (m.sectionsOffset >= 0) add(m.sectionsOffset, 4, "sections.count");
  return out;
}

const MiB = 1 << 20;
const INTERESTING: readonly bigint[] = [
  0n,
  1n,
  2n,
  7n,
  8n,
  4095n,
  4096n,
  4097n,
  BigInt(16 * MiB),
  BigInt(16 * MiB + 1),
  0x7e000000n,
  0x7fffffffn,
  0x80000000n,
  0x80000001n,
  0xffffffffn,
  0x100000000n,
  1n << 52n,
  1n << 53n,
  (1n << 53n) + 1n,
  1n << 63n,
  (1n << 64n) - 1n,
];

/** Read a field. */
export function getField(b: Uint8Array, f: Field): bigint {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (f.at + f.width > b.length) return 0n;
  switch (f.width) {
    case 1:
      return BigInt(b[f.at]);
    case 2:
      return BigInt(v.getUint16(f.at, true));
    case 4:
      return BigInt(v.getUint32(f.at, true));
    default:
      return v.getBigUint64(f.at, true);
  }
}

/** Write a field (the value is truncated to its width). */
export function setField(b: Uint8Array, f: Field, x: bigint): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (f.at + f.width > b.length) return;
  const y = BigInt.asUintN(8 * f.width, x);
  switch (f.width) {
    case 1:
      b[f.at] = Number(y);
      break;
    case 2:
      v.setUint16(f.at, Number(y), true);
      break;
    case 4:
      v.setUint32(f.at, Number(y), true);
      break;
    default:
      v.setBigUint64(f.at, y, true);
  }
}

/** A value for a field: an interesting one, the old one nudged or scaled, or random. */
export function valueFor(rng: Rng, old: bigint): bigint {
  switch (rng.int(6)) {
    case 0:
    case 1:
      return rng.pick(INTERESTING);
    case 2:
      return old + BigInt(rng.int(17) - 8);
    case 3:
      return old * BigInt(rng.pick([2, 3, 256, 4096, 65536]));
    case 4: // a random value of a random bit length up to 53: large, yet a safe integer
      return BigInt(Math.floor(rng.next() * 2 ** rng.int(54)));
    default:
      return (BigInt(rng.int(2 ** 32)) << 32n) | BigInt(rng.int(2 ** 32));
  }
}

/**
 * Recompute every checksum that can be found, innermost first: each record's stored checksum (and the decoded
 * one of a raw record), each table, frame header and directory entry, the END frame, the index, each section,
 * the section table, the header (and the footer's copy), the footer.
 */
export function fixChecksums(b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const m = mapImage(b);
  const ok = (at: number, len: number) => at >= 0 && len >= 0 && at + len <= b.length;
  const put = (at: number, x: bigint) => ok(at, 8) && v.setBigUint64(at, x, true);
  for (const f of m.frames) {
    f.entries.forEach((e, k) => {
      const d = f.data[k];
      if (!ok(d.at, d.length)) return;
      const sum = checksum(b.subarray(d.at, d.at + d.length));
      put(e + 16, sum);
      if (d.raw) put(e + 24, sum);
    });
    if (ok(f.at + 64, 40 * f.count)) {
      put(f.at + 40, checksum(b.subarray(f.at + 64, f.at + 64 + 40 * f.count)));
    }
    put(f.at + 56, checksum(b.subarray(f.at, f.at + 56)));
    if (ok(f.dir, 48)) put(f.dir + 32, v.getBigUint64(f.at + 56, true));
  }
  if (m.endFrame >= 0) put(m.endFrame + 56, checksum(b.subarray(m.endFrame, m.endFrame + 56)));
  for (const s of m.sections) {
    if (ok(s.at, s.length)) put(s.entry + 16, checksum(b.subarray(s.at, s.at + s.length)));
  }
  if (m.footer < 0) return;
  const f = m.footer;
  if (ok(m.indexOffset, m.indexLength)) {
    put(f + 64, checksum(b.subarray(m.indexOffset, m.indexOffset + m.indexLength)));
  }
  if (ok(m.sectionsOffset, m.sectionsLength)) {
    put(f + 88, checksum(b.subarray(m.sectionsOffset, m.sectionsOffset + m.sectionsLength)));
  }
  if (m.headerLength >= 128 && ok(0, m.headerLength)) {
    put(120, 0n);
    const h = checksum(b.subarray(0, m.headerLength));
    put(120, h);
    put(f + 24, h);
  }
  put(f + 120, checksum(b.subarray(f, f + 120)));
}

/**
 * Make record `k` of frame `i` claim `length` decoded bytes, consistently: its table entry, the frame's range
 * and directory entry, its region (or segment) end and the footer's data bytes; checksums are left to
 * {@link fixChecksums}.
 */
export function claimLength(b: Uint8Array, i: number, k: number, length: bigint): void {
  const m = mapImage(b);
  const f = m.frames[i];
  if (!f || !f.entries[k]) return;
  const e = f.entries[k];
  const old = getField(b, { at: e + 8, width: 4, name: "" });
  setField(b, { at: e + 8, width: 4, name: "" }, length);
  const grow = BigInt.asUintN(32, length) - old;
  for (const at of [f.at + 24, f.dir + 16]) {
    setField(b, { at, width: 8, name: "" }, getField(b, { at, width: 8, name: "" }) + grow);
  }
  // Later records of the frame move up by the same amount.
  for (const later of f.entries.slice(k + 1)) {
    setField(b, { at: later, width: 8, name: "" }, getField(b, { at: later, width: 8, name: "" }) + grow);
  }
  const segment = Number(getField(b, { at: f.at + 8, width: 4, name: "" }));
  const end = getField(b, { at: f.at + 24, width: 8, name: "" });
  const regionEnds = segment > 0 ? [m.regions[segment - 1]] : m.regions.filter((r) => {
    const s = getField(b, { at: r, width: 8, name: "" }), x = getField(b, { at: r + 8, width: 8, name: "" });
    return b[r + 34] === 0 && s <= end - grow && end - grow <= x;
  });
  for (const r of regionEnds) if (r !== undefined) setField(b, { at: r + 8, width: 8, name: "" }, end);
  if (m.footer >= 0) {
    const at = m.footer + 112;
    setField(b, { at, width: 8, name: "" }, getField(b, { at, width: 8, name: "" }) + grow);
  }
}
