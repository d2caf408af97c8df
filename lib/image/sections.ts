/**
 * The section table of image format v1 (docs/FORMAT.md): named, checksummed blobs near the end of the file.
 *
 * @module
 */

import { Cursor, Writer } from "./cursor.ts";

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

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

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
 * @returns The entries (names unique, valid UTF-8).
 */
export function decodeSectionTable(path: string, b: Uint8Array, offset: number): SectionEntry[] {
  const c = new Cursor(path, b, offset);
  const count = c.u32();
  if (c.u32() !== 0) throw c.error("non-zero reserved section table field", 4);
  const out: SectionEntry[] = [];
  const names = new Set<string>();
  for (let i = 0; i < count; i++) {
    const at = c.pos;
    const s = { offset: c.size("section offset"), length: c.size("section length"), checksum: c.u64() };
    const n = c.u32();
    if (c.u32() !== 0 || n === 0 || n > 255) throw c.error(`bad section entry ${i}`, at);
    let name: string;
    try {
      name = dec.decode(c.bytesOf(n, "section name"));
    } catch (e) {
      if (e instanceof TypeError) throw c.error(`section entry ${i}: its name is not UTF-8`, at + 32);
      throw e;
    }
    if (names.has(name)) throw c.error(`section entry ${i}: a second section "${name}"`, at);
    names.add(name);
    out.push({ name, ...s });
    c.pad8();
  }
  if (c.pos !== b.length) throw c.error("section table length disagrees with its entries", c.pos);
  return out;
}
