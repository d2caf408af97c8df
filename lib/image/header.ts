/**
 * The header block of image format v1 (docs/FORMAT.md): the fixed header, the source block and the region
 * table, with the block's checksum; encoded, and decoded with every length checked.
 *
 * @module
 */

import { REGION_KINDS, type RegionKind } from "../kernel/region.ts";
import { checksum } from "./checksum.ts";
import { Cursor, Writer } from "./cursor.ts";
import {
  FIXED_HEADER_LENGTH,
  FORMAT_VERSION,
  HEADER_FIELD,
  HEADER_MAGIC,
  type ImageRegion,
  KNOWN_REQUIRED,
  MAX_HEADER_LENGTH,
  REGION_FLAG,
  REQUIRED,
} from "./format.ts";

const KINDS: readonly RegionKind[] = REGION_KINDS;
const hexOf = (x: bigint) => `0x${x.toString(16)}`;

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

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: false });

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
  if (bytes.length > MAX_HEADER_LENGTH) {
    throw new RangeError(
      `Cannot encode a header block of ${bytes.length} bytes: at most ${MAX_HEADER_LENGTH}`,
    );
  }
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
  v.setBigUint64(HEADER_FIELD.MAGIC, HEADER_MAGIC, true);
  v.setUint32(HEADER_FIELD.VERSION, FORMAT_VERSION, true);
  v.setUint32(HEADER_FIELD.FIXED_LENGTH, FIXED_HEADER_LENGTH, true);
  v.setBigUint64(HEADER_FIELD.REQUIRED_FEATURES, f.requiredFeatures, true);
  v.setBigUint64(HEADER_FIELD.OPTIONAL_FEATURES, f.optionalFeatures, true);
  v.setUint32(HEADER_FIELD.PAGE_SIZE, f.pageSize, true);
  v.setUint32(HEADER_FIELD.ARCH, f.arch, true);
  v.setBigUint64(HEADER_FIELD.HEADER_LENGTH, BigInt(bytes.length), true);
  v.setBigUint64(HEADER_FIELD.SOURCE_OFFSET, BigInt(sourceOffset), true);
  v.setBigUint64(HEADER_FIELD.SOURCE_LENGTH, BigInt(sourceLength), true);
  v.setBigUint64(HEADER_FIELD.REGIONS_OFFSET, BigInt(regionsOffset), true);
  v.setBigUint64(HEADER_FIELD.REGIONS_LENGTH, BigInt(fields.regionsLength), true);
  v.setUint32(HEADER_FIELD.REGION_COUNT, regions.length, true);
  if (sealParams) {
    bytes.set(
      sealParams.subarray(0, HEADER_FIELD.RESERVED - HEADER_FIELD.SEAL_PARAMS),
      HEADER_FIELD.SEAL_PARAMS,
    );
  }
  fields.headerChecksum = checksum(bytes);
  v.setBigUint64(HEADER_FIELD.CHECKSUM, fields.headerChecksum, true);
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
  if (c.u64() !== HEADER_MAGIC) throw c.error("bad header magic (not a cryo image)", HEADER_FIELD.MAGIC);
  const version = c.u32();
  if (version !== FORMAT_VERSION) {
    throw c.error(`unsupported format version ${version} (expected ${FORMAT_VERSION})`, HEADER_FIELD.VERSION);
  }
  if (c.u32() !== FIXED_HEADER_LENGTH) {
    throw c.error(`fixed header length is not ${FIXED_HEADER_LENGTH}`, HEADER_FIELD.FIXED_LENGTH);
  }
  const requiredFeatures = c.u64();
  const optionalFeatures = c.u64();
  const pageSize = c.u32();
  const arch = c.u32();
  const headerLength = c.size("header length");
  if (headerLength < FIXED_HEADER_LENGTH || headerLength > MAX_HEADER_LENGTH) {
    throw c.error(
      `header length ${headerLength} (expected ${FIXED_HEADER_LENGTH} to ${MAX_HEADER_LENGTH})`,
      HEADER_FIELD.HEADER_LENGTH,
    );
  }
  const sourceOffset = c.size("source offset");
  const sourceLength = c.size("source length");
  const regionsOffset = c.size("regions offset");
  const regionsLength = c.size("regions length");
  const regionCount = c.u32();
  const sealed = (requiredFeatures & REQUIRED.ENCRYPTED) !== 0n; // then SEAL_PARAMS holds the seal parameters
  for (let i = sealed ? HEADER_FIELD.RESERVED : HEADER_FIELD.SEAL_PARAMS; i < HEADER_FIELD.CHECKSUM; i++) {
    if (bytes[i] !== 0) throw c.error("non-zero reserved header byte", i);
  }
  c.pos = HEADER_FIELD.CHECKSUM;
  const headerChecksum = c.u64();
  const unknown = requiredFeatures & ~KNOWN_REQUIRED;
  if (unknown !== 0n) {
    const bit = unknown.toString(2).length - 1;
    throw c.error(
      `unknown required feature bit ${bit} (this reader knows bits 0-1)`,
      HEADER_FIELD.REQUIRED_FEATURES,
    );
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
    throw c.error(`header length ${fields.headerLength} mismatch`, HEADER_FIELD.HEADER_LENGTH);
  }
  const copy = block.slice();
  new DataView(copy.buffer).setBigUint64(HEADER_FIELD.CHECKSUM, 0n, true);
  const sum = checksum(copy);
  if (sum !== fields.headerChecksum) {
    throw c.error(
      `header checksum ${sum.toString(16)} != ${fields.headerChecksum.toString(16)}`,
      HEADER_FIELD.CHECKSUM,
    );
  }
  if (fields.sourceOffset !== FIXED_HEADER_LENGTH) {
    throw c.error(`source block is not at ${FIXED_HEADER_LENGTH}`, HEADER_FIELD.SOURCE_OFFSET);
  }
  c.pos = fields.sourceOffset;
  const pid = c.u32();
  if (c.u32() !== 0) throw c.error("non-zero reserved source field", c.pos - 4);
  const timeMs = c.size("time");
  const strings: string[] = [];
  for (let i = 0; i < 3; i++) strings.push(dec.decode(c.bytesOf(c.u32(), "source string")));
  c.pad8();
  if (c.pos !== fields.sourceOffset + fields.sourceLength || c.pos !== fields.regionsOffset) {
    throw c.error("source block length disagrees with the header", HEADER_FIELD.SOURCE_LENGTH);
  }
  const regions: ImageRegion[] = [];
  const entries: number[] = []; // the offset of each entry
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
    if (flags === REGION_FLAG.RELOCATABLE ? start !== 0n : end === start) {
      throw c.error(
        `region entry ${i}: ${flags ? "a segment that does not start at 0" : "an empty region"}`,
        at,
      );
    }
    entries.push(at);
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
    throw c.error("region table length disagrees with the header", HEADER_FIELD.REGIONS_LENGTH);
  }
  // Absolute regions do not overlap (nor repeat): sorted by start, each ends at or before the next begins.
  const order = regions.map((_, i) => i).filter((i) => !regions[i].relocatable);
  order.sort((
    x,
    y,
  ) => (regions[x].start < regions[y].start ? -1 : regions[x].start > regions[y].start ? 1 : x - y));
  for (let k = 1; k < order.length; k++) {
    const a = regions[order[k - 1]], b = regions[order[k]];
    if (a.end > b.start) {
      const what = a.start === b.start && a.end === b.end ? "repeats" : "overlaps";
      const [i, j] = [order[k - 1], order[k]].sort((x, y) => x - y);
      throw c.error(`region entry ${j} ${what} entry ${i} (${hexOf(a.start)}-${hexOf(a.end)})`, entries[j]);
    }
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
