/**
 * The constants and record types of image format v1 (docs/FORMAT.md): lengths, magics, feature and flag bits,
 * record kinds, the record and region types, and the alignment rules.
 *
 * @module
 */

import type { Region } from "../kernel/region.ts";

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
/**
 * Most decoded bytes of one record (`length`), whatever its codec: the writer splits raw runs at it, so a reader
 * never buffers more for one record.
 */
export const MAX_RECORD_LENGTH = 16 << 20;
/**
 * Most decoded bytes of a compressed or encrypted record: the writer's largest `chunkSize`, so a reader never
 * decodes (or authenticates) more than this at once for one record.
 */
export const MAX_CHUNK_LENGTH = 4 << 20;
/** Most bytes of the header block (fixed header, source, region table). */
export const MAX_HEADER_LENGTH = 16 << 20;
/** Most bytes of the section blobs and the section table together. */
export const MAX_SECTIONS_LENGTH = 16 << 20;
/** Most bytes a frame may cover (`end - start`): 4 PiB, so every length and hole is exact as a JS number. */
export const MAX_FRAME_RANGE: bigint = 1n << 52n;

/** Byte offsets of the fixed header's fields (docs/FORMAT.md, "Fixed header"). */
export const HEADER_FIELD = {
  MAGIC: 0,
  VERSION: 8,
  FIXED_LENGTH: 12,
  REQUIRED_FEATURES: 16,
  OPTIONAL_FEATURES: 24,
  PAGE_SIZE: 32,
  ARCH: 36,
  HEADER_LENGTH: 40,
  SOURCE_OFFSET: 48,
  SOURCE_LENGTH: 56,
  REGIONS_OFFSET: 64,
  REGIONS_LENGTH: 72,
  REGION_COUNT: 80,
  /** 32 bytes: an ENCRYPTED image's seal parameters (lib/image/sealing.ts), else reserved (zero). */
  SEAL_PARAMS: 84,
  /** Reserved (zero) up to the checksum. */
  RESERVED: 116,
  CHECKSUM: 120,
} as const;

/** Byte offsets of the footer's fields (docs/FORMAT.md, "Footer"). */
export const FOOTER_FIELD = {
  MAGIC: 0,
  VERSION: 8,
  LENGTH: 12,
  HEADER_LENGTH: 16,
  HEADER_CHECKSUM: 24,
  REGIONS_OFFSET: 32,
  REGIONS_LENGTH: 40,
  INDEX_OFFSET: 48,
  INDEX_LENGTH: 56,
  INDEX_CHECKSUM: 64,
  SECTIONS_OFFSET: 72,
  SECTIONS_LENGTH: 80,
  SECTIONS_CHECKSUM: 88,
  FRAME_COUNT: 96,
  FILE_SIZE: 104,
  DATA_BYTES: 112,
  /** XXH3 of the bytes before it. */
  CHECKSUM: 120,
} as const;

/** Byte offsets of a frame header's fields (docs/FORMAT.md, "Frame header"). */
export const FRAME_FIELD = {
  MAGIC: 0,
  COUNT: 4,
  SEGMENT: 8,
  RESERVED: 12,
  START: 16,
  END: 24,
  DATA_LENGTH: 32,
  TABLE_CHECKSUM: 40,
  RESERVED_2: 48,
  /** XXH3 of the bytes before it. */
  CHECKSUM: 56,
} as const;

/** Byte offsets of a table entry's fields (docs/FORMAT.md, "Table entry"). */
export const ENTRY_FIELD = {
  ADDRESS: 0,
  LENGTH: 8,
  STORED_LENGTH: 12,
  CHECKSUM: 16,
  DECODED_CHECKSUM: 24,
  KIND: 32,
  CODEC: 33,
  FLAGS: 34,
  RESERVED: 36,
} as const;

/** Byte offsets of a frame directory entry's fields (docs/FORMAT.md, "Index"). */
export const DIRECTORY_FIELD = {
  FRAME_OFFSET: 0,
  START: 8,
  END: 16,
  DATA_LENGTH: 24,
  FRAME_CHECKSUM: 32,
  COUNT: 40,
  SEGMENT: 44,
} as const;

/** Required feature bits: a reader refuses an image with one it does not know. */
export const REQUIRED = { CODEC: 1n, ENCRYPTED: 2n, PARENT: 4n } as const;
/** The required feature bits this reader knows. */
export const KNOWN_REQUIRED = REQUIRED.CODEC | REQUIRED.ENCRYPTED | REQUIRED.PARENT;
/** Optional feature bits: unknown ones are ignored. */
export const OPTIONAL = { ZERO_DETECTED: 1n } as const;
/** Record kinds (a table entry of kind HOLE exists only in an incremental image, see {@link uncoveredMeaning}). */
export const KIND = { DATA: 0, HOLE: 1 } as const;

/**
 * What a byte inside a frame's covered range that no table entry covers means (docs/FORMAT.md, "Incremental
 * images"): the one place this rule is said. In an image without the required feature PARENT it is a
 * **hole** (zero, or the file's contents; holes are never table entries there). In an incremental image it is
 * **its parent's**, as every byte outside every frame is, and a page released or zeroed since the parent is an
 * explicit table entry of kind HOLE.
 *
 * @param requiredFeatures The image's required feature bits.
 * @returns `"hole"` or `"parent"`.
 */
export function uncoveredMeaning(requiredFeatures: bigint): "hole" | "parent" {
  return requiredFeatures & REQUIRED.PARENT ? "parent" : "hole";
}
/** Record flag bits. */
export const RECORD_FLAG = { ENCRYPTED: 1 } as const;
/** Region table flag bits. */
export const REGION_FLAG = { RELOCATABLE: 1 } as const;

/**
 * One record: a data run (a frame's table entry) or a hole (uncovered bytes of a frame's range, or in an
 * incremental image a table entry of kind HOLE).
 */
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

/**
 * A hole record: `length` bytes at `address` of `segment` that the image holds no data for.
 *
 * @param address First address (or offset in a relocatable segment).
 * @param length Bytes.
 * @param segment 0, or the relocatable segment's 1-based region table entry.
 * @returns The record.
 */
export function holeRecord(address: bigint, length: number, segment: number): ImageRecord {
  return {
    address,
    length,
    kind: KIND.HOLE,
    fileOffset: 0,
    storedLength: 0,
    checksum: 0n,
    decodedChecksum: 0n,
    codec: 0,
    flags: 0,
    segment,
  };
}

/** A region of the image's region table: a {@link Region}, or a relocatable named segment. */
export interface ImageRegion extends Region {
  /** A named segment (start 0, end its length), not a place in memory. */
  relocatable: boolean;
}

/** Round `x` up to a multiple of `a`. */
export function alignUp(x: number, a: number): number {
  return Math.ceil(x / a) * a;
}

/** Where the data of a frame starting at `pos` begins: `align(pos + 64, pageSize)`. */
export function frameDataOffset(pos: number, pageSize: number): number {
  return alignUp(pos + FRAME_LENGTH, pageSize);
}
