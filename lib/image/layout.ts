/**
 * The byte layout of image format v1 (docs/FORMAT.md): constants, the record type, and encoders/decoders of the
 * header block, section table and footer, over `DataView` with explicit little-endian (frames, their tables and
 * the frame directory: lib/image/frames.ts).
 * Decoders check every length against the bytes they were given and throw {@link ImageError} naming the file
 * and offset.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { type Region, REGION_KINDS, type RegionKind } from "../region.ts";
import { checksum } from "./checksum.ts";

/** Format version written and read. */
export const FORMAT_VERSION = 1;
/** Bytes of the fixed header at offset 0. */
export const FIXED_HEADER_LENGTH = 128;
/** Bytes of a frame header (lib/image/frames.ts). */
export const FRAME_LENGTH = 64;
/** Bytes of the footer at the end of the file. */
export const FOOTER_LENGTH = 128;
/** `CRYOIMG\0` as a little-endian u64. */
export const HEADER_MAGIC = 0x00474d494f595243n;
/** `CRYOFOOT` as a little-endian u64. */
export const FOOTER_MAGIC = 0x544f4f464f595243n;
/** `CRYR`: a frame header. */
export const FRAME_MAGIC = 0x52595243;
/** `CRYE`: the END frame. */
export const END_MAGIC = 0x45595243;
/** ELF e_machine of x86_64. */
export const ARCH_X86_64 = 62;

/** Required feature bits: a reader refuses an image with one it does not know. */
export const REQUIRED = { CODEC: 1n, ENCRYPTED: 2n } as const;
/** The required feature bits this reader knows. */
export const KNOWN_REQUIRED = REQUIRED.CODEC | REQUIRED.ENCRYPTED;
/** Optional feature bits: unknown ones are ignored. */
export const OPTIONAL = { ZERO_DETECTED: 1n } as const;
/** Record kinds. */
export const KIND = { DATA: 0, HOLE: 1 } as const;
/** Record flag bits. */
export const RECORD_FLAG = { ENCRYPTED: 1 } as const;
/** Region table flag bits. */
export const REGION_FLAG = { RELOCATABLE: 1 } as const;

const KINDS: readonly RegionKind[] = REGION_KINDS;

/** One record: a data run (a frame's table entry) or a hole (uncovered bytes of a frame's range). */
export interface ImageRecord {
  /** First address (or offset in a relocatable segment). */
  address: bigint;
  /** Decoded bytes. */
  length: number;
  /** {@link KIND}: 0 data, 1 hole. */
  kind: number;
  /** File offset of the data (page aligned); 0 for a hole. */
  fileOffset: number;
  /** Bytes in the file; 0 for a hole. */
  storedLength: number;
  /** XXH3-64 of the stored bytes; 0n for a hole. */
  checksum: bigint;
  /** XXH3-64 of the decoded bytes; 0n for a hole. */
  decodedChecksum: bigint;
  /** Codec id: 0 raw, 1 zstd, 2 lz4. */
  codec: number;
  /** {@link RECORD_FLAG} bits. */
  flags: number;
  /** 0 for an absolute address, else the 1-based region table entry of a relocatable segment. */
  segment: number;
}

/** A region of the image's region table: a {@link Region}, or a relocatable named segment. */
export interface ImageRegion extends Region {
  /** A named segment (start 0, end its length), not a place in memory. */
  relocatable: boolean;
}

/** Where the image came from. */
export interface SourceInfo {
  /** Process id (0 for none). */
  pid: number;
  /** When it was written, ms since the Unix epoch. */
  timeMs: number;
  /** The source's command line. */
  commandLine: string[];
  /** Kernel release (`uname -r`). */
  kernelRelease: string;
  /** `/proc/sys/kernel/random/boot_id`. */
  bootId: string;
}

/** The fixed header's fields. */
export interface HeaderFields {
  /** Format version. */
  version: number;
  /** Required feature bits. */
  requiredFeatures: bigint;
  /** Optional feature bits. */
  optionalFeatures: bigint;
  /** Page size. */
  pageSize: number;
  /** ELF e_machine. */
  arch: number;
  /** Bytes of the header block. */
  headerLength: number;
  /** Offset of the source block. */
  sourceOffset: number;
  /** Bytes of the source block. */
  sourceLength: number;
  /** Offset of the region table. */
  regionsOffset: number;
  /** Bytes of the region table. */
  regionsLength: number;
  /** Entries in the region table. */
  regionCount: number;
  /** XXH3-64 of the header block with this field zero. */
  headerChecksum: bigint;
}

/** The footer's fields. */
export interface Footer {
  /** Bytes of the header block. */
  headerLength: number;
  /** Its checksum (same as in the header). */
  headerChecksum: bigint;
  /** Offset of the region table. */
  regionsOffset: number;
  /** Bytes of the region table. */
  regionsLength: number;
  /** Offset of the index (the frame directory). */
  indexOffset: number;
  /** Bytes of the index. */
  indexLength: number;
  /** XXH3-64 of the index. */
  indexChecksum: bigint;
  /** Offset of the section table. */
  sectionsOffset: number;
  /** Bytes of the section table. */
  sectionsLength: number;
  /** XXH3-64 of the section table. */
  sectionsChecksum: bigint;
  /** Frames (directory entries). */
  frameCount: number;
  /** Bytes of the whole file. */
  fileSize: number;
  /** Sum of the lengths of data records. */
  dataBytes: number;
}

/** One entry of the section table. */
export interface SectionEntry {
  /** Unique name. */
  name: string;
  /** Offset of the blob. */
  offset: number;
  /** Bytes of the blob. */
  length: number;
  /** XXH3-64 of the blob. */
  checksum: bigint;
}

/** Round `x` up to a multiple of `a`. */
export function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

/** Where the data of a frame starting at `pos` begins: `align(pos + 64, pageSize)`. */
export function frameDataOffset(pos: number, pageSize: number): number {
  return alignUp(pos + FRAME_LENGTH, pageSize);
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: false });

/** A bounds-checked little-endian reader over bytes that start at file offset `base`. */
export class Cursor {
  /** A little-endian view of the bytes. */
  readonly view: DataView;
  /** The read position, relative to the bytes. */
  pos = 0;
  /** Make a cursor over `bytes`, which lie at `base` in the file `path`. */
  constructor(readonly path: string, readonly bytes: Uint8Array, readonly base = 0) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  /** Throw unless `n` more bytes are available. */
  need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length) {
      throw new ImageError(
        this.path,
        this.base + this.pos,
        `${what} runs past its block (${n} bytes needed)`,
      );
    }
  }
  /** An ImageError at the current position. */
  error(message: string, at = this.pos): ImageError {
    return new ImageError(this.path, this.base + at, message);
  }
  /** Read a u8. */
  u8(): number {
    this.need(1, "u8");
    return this.view.getUint8(this.pos++);
  }
  /** Read a little-endian u16. */
  u16(): number {
    this.need(2, "u16");
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  /** Read a little-endian u32. */
  u32(): number {
    this.need(4, "u32");
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** Read a little-endian u64. */
  u64(): bigint {
    this.need(8, "u64");
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A u64 that must fit a JS number (offsets and lengths). */
  size(what: string): number {
    const at = this.pos;
    const v = this.u64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.error(`${what} ${v} is too large`, at);
    return Number(v);
  }
  /** Read `n` bytes (a view, not a copy). */
  bytesOf(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  /** Skip zero padding up to a multiple of 8, checking it is zero. */
  pad8(): void {
    while (this.pos % 8 !== 0) {
      if (this.u8() !== 0) throw this.error("non-zero padding", this.pos - 1);
    }
  }
}

/** A little-endian writer into a growing buffer. */
export class Writer {
  #buf = new Uint8Array(256);
  #view = new DataView(this.#buf.buffer);
  /** The write position. */
  pos = 0;
  #grow(n: number): void {
    if (this.pos + n <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.pos + n));
    next.set(this.#buf);
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }
  /** Append a u8. */
  u8(v: number): void {
    this.#grow(1);
    this.#view.setUint8(this.pos++, v);
  }
  /** Append a little-endian u16. */
  u16(v: number): void {
    this.#grow(2);
    this.#view.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  /** Append a little-endian u32. */
  u32(v: number): void {
    this.#grow(4);
    this.#view.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  /** Append a little-endian u64. */
  u64(v: bigint | number): void {
    this.#grow(8);
    this.#view.setBigUint64(this.pos, BigInt(v), true);
    this.pos += 8;
  }
  /** Append bytes. */
  bytes(b: Uint8Array): void {
    this.#grow(b.length);
    this.#buf.set(b, this.pos);
    this.pos += b.length;
  }
  /** Append zeros up to a multiple of 8. */
  pad8(): void {
    while (this.pos % 8 !== 0) this.u8(0);
  }
  /** The bytes written so far (a copy). */
  done(): Uint8Array<ArrayBuffer> {
    return this.#buf.slice(0, this.pos);
  }
}

/**
 * Encode the header block: fixed header, source, region table, with its checksum.
 *
 * @param f Fields other than the computed offsets, lengths and checksum.
 * @param source Where the image comes from.
 * @param regions The region table.
 * @param sealParams For an ENCRYPTED image, the 32 seal parameters written at bytes 84..116 (lib/image/sealing.ts).
 * @returns The header block and its decoded fields.
 */
export function encodeHeaderBlock(
  f: Pick<HeaderFields, "requiredFeatures" | "optionalFeatures" | "pageSize" | "arch">,
  source: SourceInfo,
  regions: readonly ImageRegion[],
  sealParams?: Uint8Array,
): { bytes: Uint8Array<ArrayBuffer>; fields: HeaderFields } {
  const w = new Writer();
  for (let i = 0; i < FIXED_HEADER_LENGTH; i++) w.u8(0);
  const sourceOffset = w.pos;
  w.u32(source.pid);
  w.u32(0);
  w.u64(BigInt(Math.trunc(source.timeMs)));
  for (const s of [source.commandLine.join("\0"), source.kernelRelease, source.bootId]) {
    const b = enc.encode(s);
    w.u32(b.length);
    w.bytes(b);
  }
  w.pad8();
  const sourceLength = w.pos - sourceOffset;
  const regionsOffset = w.pos;
  for (const r of regions) {
    const device = enc.encode(r.device);
    const path = enc.encode(r.path);
    if (device.length > 255) throw new RangeError(`Cannot encode region: device "${r.device}" too long`);
    w.u64(r.start);
    w.u64(r.end);
    w.u64(r.offset);
    w.u64(r.inode);
    w.u8(
      (r.perms.read ? 1 : 0) | (r.perms.write ? 2 : 0) | (r.perms.exec ? 4 : 0) | (r.perms.shared ? 8 : 0),
    );
    w.u8(Math.max(0, KINDS.indexOf(r.kind)));
    w.u8(r.relocatable ? REGION_FLAG.RELOCATABLE : 0);
    w.u8(device.length);
    w.u32(path.length);
    w.bytes(device);
    w.bytes(path);
    w.pad8();
  }
  const bytes = w.done();
  const fields: HeaderFields = {
    version: FORMAT_VERSION,
    ...f,
    headerLength: bytes.length,
    sourceOffset,
    sourceLength,
    regionsOffset,
    regionsLength: bytes.length - regionsOffset,
    regionCount: regions.length,
    headerChecksum: 0n,
  };
  const v = new DataView(bytes.buffer);
  v.setBigUint64(0, HEADER_MAGIC, true);
  v.setUint32(8, FORMAT_VERSION, true);
  v.setUint32(12, FIXED_HEADER_LENGTH, true);
  v.setBigUint64(16, f.requiredFeatures, true);
  v.setBigUint64(24, f.optionalFeatures, true);
  v.setUint32(32, f.pageSize, true);
  v.setUint32(36, f.arch, true);
  v.setBigUint64(40, BigInt(bytes.length), true);
  v.setBigUint64(48, BigInt(sourceOffset), true);
  v.setBigUint64(56, BigInt(sourceLength), true);
  v.setBigUint64(64, BigInt(regionsOffset), true);
  v.setBigUint64(72, BigInt(fields.regionsLength), true);
  v.setUint32(80, regions.length, true);
  if (sealParams) bytes.set(sealParams.subarray(0, 32), 84);
  fields.headerChecksum = checksum(bytes);
  v.setBigUint64(120, fields.headerChecksum, true);
  return { bytes, fields };
}

/**
 * Decode the fixed header (magic, version and lengths checked; not the checksum).
 *
 * @param path The image, for errors.
 * @param bytes At least the first 128 bytes of the image.
 * @returns The fields.
 */
export function decodeFixedHeader(path: string, bytes: Uint8Array): HeaderFields {
  const c = new Cursor(path, bytes);
  c.need(FIXED_HEADER_LENGTH, "fixed header");
  if (c.u64() !== HEADER_MAGIC) throw c.error("bad header magic (not a cryo image)", 0);
  const version = c.u32();
  if (version !== FORMAT_VERSION) throw c.error(`unsupported format version ${version} (expected 1)`, 8);
  if (c.u32() !== FIXED_HEADER_LENGTH) throw c.error(`fixed header length is not ${FIXED_HEADER_LENGTH}`, 12);
  const requiredFeatures = c.u64();
  const optionalFeatures = c.u64();
  const pageSize = c.u32();
  const arch = c.u32();
  const headerLength = c.size("header length");
  const sourceOffset = c.size("source offset");
  const sourceLength = c.size("source length");
  const regionsOffset = c.size("regions offset");
  const regionsLength = c.size("regions length");
  const regionCount = c.u32();
  const sealed = (requiredFeatures & REQUIRED.ENCRYPTED) !== 0n; // bytes 84..116 hold the seal parameters
  for (let i = sealed ? 116 : 84; i < 120; i++) {
    if (bytes[i] !== 0) throw c.error("non-zero reserved header byte", i);
  }
  c.pos = 120;
  const headerChecksum = c.u64();
  const unknown = requiredFeatures & ~KNOWN_REQUIRED;
  if (unknown !== 0n) {
    const bit = unknown.toString(2).length - 1;
    throw c.error(`unknown required feature bit ${bit} (this reader knows bits 0-1)`, 16);
  }
  return {
    version,
    requiredFeatures,
    optionalFeatures,
    pageSize,
    arch,
    headerLength,
    sourceOffset,
    sourceLength,
    regionsOffset,
    regionsLength,
    regionCount,
    headerChecksum,
  };
}

/**
 * Check a whole header block: checksum, layout of source and region table, zero padding. Decodes both.
 *
 * @param path The image, for errors.
 * @param block The header block (`headerLength` bytes from offset 0).
 * @returns The fields, the source and the regions.
 */
export function decodeHeaderBlock(
  path: string,
  block: Uint8Array,
): { fields: HeaderFields; source: SourceInfo; regions: ImageRegion[] } {
  const fields = decodeFixedHeader(path, block);
  const c = new Cursor(path, block);
  if (fields.headerLength !== block.length) {
    throw c.error(`header length ${fields.headerLength} mismatch`, 40);
  }
  const copy = block.slice();
  new DataView(copy.buffer).setBigUint64(120, 0n, true);
  const sum = checksum(copy);
  if (sum !== fields.headerChecksum) {
    throw c.error(`header checksum ${sum.toString(16)} != ${fields.headerChecksum.toString(16)}`, 120);
  }
  if (fields.sourceOffset !== FIXED_HEADER_LENGTH) throw c.error("source block is not at 128", 48);
  c.pos = fields.sourceOffset;
  const pid = c.u32();
  if (c.u32() !== 0) throw c.error("non-zero reserved source field", c.pos - 4);
  const timeMs = c.size("time");
  const strings: string[] = [];
  for (let i = 0; i < 3; i++) strings.push(dec.decode(c.bytesOf(c.u32(), "source string")));
  c.pad8();
  if (c.pos !== fields.sourceOffset + fields.sourceLength || c.pos !== fields.regionsOffset) {
    throw c.error("source block length disagrees with the header", 56);
  }
  const regions: ImageRegion[] = [];
  for (let i = 0; i < fields.regionCount; i++) {
    const at = c.pos;
    const start = c.u64();
    const end = c.u64();
    const offset = c.u64();
    const inode = c.u64();
    const p = c.u8();
    const kind = c.u8();
    const flags = c.u8();
    const deviceLength = c.u8();
    const pathLength = c.u32();
    if (p > 15 || kind >= KINDS.length || flags > 1 || end < start) {
      throw c.error(`bad region entry ${i}`, at);
    }
    const device = dec.decode(c.bytesOf(deviceLength, "region device"));
    const rpath = dec.decode(c.bytesOf(pathLength, "region path"));
    c.pad8();
    regions.push({
      start,
      end,
      offset,
      inode,
      device,
      path: rpath,
      kind: KINDS[kind],
      perms: { read: (p & 1) !== 0, write: (p & 2) !== 0, exec: (p & 4) !== 0, shared: (p & 8) !== 0 },
      relocatable: flags === 1,
    });
  }
  if (c.pos !== block.length || c.pos - fields.regionsOffset !== fields.regionsLength) {
    throw c.error("region table length disagrees with the header", 72);
  }
  const source = {
    pid,
    timeMs,
    commandLine: strings[0].split("\0"),
    kernelRelease: strings[1],
    bootId: strings[2],
  };
  return { fields, source, regions };
}

/**
 * Encode the section table.
 *
 * @param sections The entries.
 * @returns The table bytes.
 */
export function encodeSectionTable(sections: readonly SectionEntry[]): Uint8Array<ArrayBuffer> {
  const w = new Writer();
  w.u32(sections.length);
  w.u32(0);
  for (const s of sections) {
    const name = enc.encode(s.name);
    w.u64(s.offset);
    w.u64(s.length);
    w.u64(s.checksum);
    w.u32(name.length);
    w.u32(0);
    w.bytes(name);
    w.pad8();
  }
  return w.done();
}

/**
 * Decode the section table.
 *
 * @param path The image, for errors.
 * @param b The table bytes.
 * @param offset Where they lie in the file.
 * @returns The entries.
 */
export function decodeSectionTable(path: string, b: Uint8Array, offset: number): SectionEntry[] {
  const c = new Cursor(path, b, offset);
  const count = c.u32();
  if (c.u32() !== 0) throw c.error("non-zero reserved section table field", 4);
  const out: SectionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = c.pos;
    const s = { offset: c.size("section offset"), length: c.size("section length"), checksum: c.u64() };
    const n = c.u32();
    if (c.u32() !== 0 || n === 0 || n > 255) throw c.error(`bad section entry ${i}`, at);
    out.push({ name: dec.decode(c.bytesOf(n, "section name")), ...s });
    c.pad8();
  }
  if (c.pos !== b.length) throw c.error("section table length disagrees with its entries", c.pos);
  return out;
}

/**
 * Encode the footer.
 *
 * @param f The fields.
 * @returns 128 bytes.
 */
export function encodeFooter(f: Footer): Uint8Array<ArrayBuffer> {
  const w = new Writer();
  w.u64(FOOTER_MAGIC);
  w.u32(FORMAT_VERSION);
  w.u32(FOOTER_LENGTH);
  for (
    const x of [
      f.headerLength,
      f.headerChecksum,
      f.regionsOffset,
      f.regionsLength,
      f.indexOffset,
      f.indexLength,
      f.indexChecksum,
      f.sectionsOffset,
      f.sectionsLength,
      f.sectionsChecksum,
      f.frameCount,
      f.fileSize,
      f.dataBytes,
    ]
  ) w.u64(x);
  w.u64(checksum(w.done()));
  return w.done();
}

/**
 * Decode and check the footer.
 *
 * @param path The image, for errors.
 * @param b The last 128 bytes of the file.
 * @param offset Where they lie.
 * @returns The fields.
 */
export function decodeFooter(path: string, b: Uint8Array, offset: number): Footer {
  const c = new Cursor(path, b, offset);
  c.need(FOOTER_LENGTH, "footer");
  if (c.u64() !== FOOTER_MAGIC) throw c.error("bad footer magic (not a cryo image, or truncated)", 0);
  if (c.u32() !== FORMAT_VERSION) throw c.error("unsupported footer version", 8);
  if (c.u32() !== FOOTER_LENGTH) throw c.error("footer length is not 128", 12);
  const sum = checksum(b.subarray(0, 120));
  if (sum !== c.view.getBigUint64(120, true)) throw c.error("footer checksum mismatch", 120);
  return {
    headerLength: c.size("header length"),
    headerChecksum: c.u64(),
    regionsOffset: c.size("regions offset"),
    regionsLength: c.size("regions length"),
    indexOffset: c.size("index offset"),
    indexLength: c.size("index length"),
    indexChecksum: c.u64(),
    sectionsOffset: c.size("sections offset"),
    sectionsLength: c.size("sections length"),
    sectionsChecksum: c.u64(),
    frameCount: c.size("frame count"),
    fileSize: c.size("file size"),
    dataBytes: c.size("data bytes"),
  };
}
