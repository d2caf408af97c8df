/**
 * The footer of image format v1 (docs/FORMAT.md): the last 128 bytes, locating the header block, region table,
 * index and section table, with its own checksum.
 *
 * @module
 */

import { checksum } from "./checksum.ts";
import { Cursor, Writer } from "./cursor.ts";
import { FOOTER_FIELD, FOOTER_LENGTH, FOOTER_MAGIC, FORMAT_VERSION } from "./format.ts";

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
  if (c.u64() !== FOOTER_MAGIC) {
    throw c.error("bad footer magic (not a cryo image, or truncated)", FOOTER_FIELD.MAGIC);
  }
  if (c.u32() !== FORMAT_VERSION) throw c.error("unsupported footer version", FOOTER_FIELD.VERSION);
  if (c.u32() !== FOOTER_LENGTH) throw c.error(`footer length is not ${FOOTER_LENGTH}`, FOOTER_FIELD.LENGTH);
  const sum = checksum(b.subarray(0, FOOTER_FIELD.CHECKSUM));
  if (sum !== c.view.getBigUint64(FOOTER_FIELD.CHECKSUM, true)) {
    throw c.error("footer checksum mismatch", FOOTER_FIELD.CHECKSUM);
  }
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
