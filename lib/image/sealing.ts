/**
 * Image-level encryption (the ENCRYPTED required feature, issue 8): where the seal parameters live in the
 * header, the header digest every chunk's additional data carries, and the `seal` section that authenticates
 * the index and the other sections. Chunks themselves are sealed by {@link Sealer} (lib/codecs/seal.ts).
 *
 * - Fixed header bytes 84..116 (reserved otherwise): the seal parameters, salt(16) | key check(16).
 * - Every data record is ENCRYPTED; its stored bytes are `nonce | ciphertext | tag` of the encoded chunk, its
 *   `decodedChecksum` is 0 (a plaintext checksum would let anyone confirm a guess of the memory), and its
 *   additional data is {@link chunkAad}(ordinal, address, length, codec, segment, SHA-256(header block)), so the
 *   header, region table and each chunk's place are authenticated before any byte of the chunk is used.
 * - Section `seal`: HMAC-SHA256 over the header digest, the index and every other section, so holes, the index
 *   and sections (e.g. thread registers) cannot be changed either. It is computed a piece at a time, the frame
 *   tables read back from where the writer or reader keeps them (a {@link PieceSource}), so an image of many
 *   records is sealed and checked in bounded memory.
 *
 * @module
 */

import { HEADER_FIELD } from "./format.ts";
import { ImageError, KeyError } from "../errors.ts";
import { MAC_SIZE, sameTag, SEAL_PARAMS_SIZE, type Sealer } from "../codecs/seal.ts";
import type { MacStream } from "../codecs/hmac.ts";

/** Name of the section holding the metadata MAC. */
export const SEAL_SECTION = "seal";
/** Where the seal parameters lie in the fixed header. */
export const SEAL_PARAMS_OFFSET: number = HEADER_FIELD.SEAL_PARAMS;

/**
 * The seal parameters in a header block.
 *
 * @param block The header block (at least 128 bytes).
 * @returns A copy of the 32 bytes at 84.
 */
export function sealParamsOf(block: Uint8Array): Uint8Array {
  return block.slice(SEAL_PARAMS_OFFSET, SEAL_PARAMS_OFFSET + SEAL_PARAMS_SIZE);
}

/**
 * The SHA-256 of a header block, as every chunk's additional data carries it.
 *
 * @param block The header block as written.
 * @returns 32 bytes.
 */
export async function headerDigest(block: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", block as Uint8Array<ArrayBuffer>));
}

/**
 * Bytes read back a piece at a time (a `Spool` of frame tables, or bytes in memory): the metadata MAC is
 * computed over them without holding them at once.
 */
export interface PieceSource {
  /** How many bytes. */
  readonly length: number;
  /**
   * The bytes `[at, at + len)`.
   *
   * @param at Where they start.
   * @param len How many.
   * @param into A buffer of at least `len` bytes to read them into.
   * @returns Them (a view of `into`).
   */
  read(at: number, len: number, into: Uint8Array): Uint8Array;
}

/** Bytes of the tables read back at once while the MAC is computed. */
const MAC_PIECE = 1 << 20;

/**
 * Feed the metadata to a MAC, a piece at a time: `"cryometa" | digest | u64(n) | directory | tables` (the
 * index, `n` bytes: the directory followed by every frame's table), then `u64(name length) | name |
 * u64(length) | bytes` of each section but the `seal` one, in table order. The same bytes the one-shot MAC was
 * computed over, so images sealed before verify.
 */
function feedMetadata(
  mac: MacStream,
  digest: Uint8Array,
  directory: Uint8Array,
  tables: PieceSource,
  sections: readonly { name: string; data: Uint8Array }[],
): void {
  const enc = new TextEncoder();
  mac.update(enc.encode("cryometa"));
  mac.update(digest);
  mac.update(u64(directory.length + tables.length));
  mac.update(directory);
  const piece = new Uint8Array(Math.min(MAC_PIECE, tables.length));
  for (let at = 0; at < tables.length; at += piece.length) {
    mac.update(tables.read(at, Math.min(piece.length, tables.length - at), piece));
  }
  for (const s of sections) {
    if (s.name === SEAL_SECTION) continue;
    const name = enc.encode(s.name);
    mac.update(u64(name.length));
    mac.update(name);
    mac.update(u64(s.data.length));
    mac.update(s.data);
  }
}

function u64(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/**
 * Bytes in memory as a {@link PieceSource}.
 *
 * @param bytes The bytes.
 * @returns A source that copies them out a piece at a time.
 */
export function bytesPieces(bytes: Uint8Array): PieceSource {
  return {
    length: bytes.length,
    read: (at, len, into) => {
      const b = into.subarray(0, len);
      b.set(bytes.subarray(at, at + len));
      return b;
    },
  };
}

/**
 * The `seal` section's bytes: HMAC-SHA256 over the header digest, the index (the frame directory and every
 * frame's table) and the other sections, computed a piece at a time ({@link Sealer.macStream}).
 *
 * @param sealer The image's sealer.
 * @param digest {@link headerDigest} of the header block.
 * @param directory The frame directory's bytes.
 * @param tables Every frame's table, in file order, read back a piece at a time.
 * @param sections The other sections, in the order of the section table.
 * @returns 32 bytes.
 */
export async function metadataMac(
  sealer: Sealer,
  digest: Uint8Array,
  directory: Uint8Array,
  tables: PieceSource,
  sections: readonly { name: string; data: Uint8Array }[],
): Promise<Uint8Array> {
  using mac = sealer.macStream();
  feedMetadata(mac, digest, directory, tables, sections);
  return await mac.digest();
}

/**
 * Check the `seal` section; throw {@link ImageError} unless it authenticates the index and sections.
 *
 * @param sealer The image's sealer (its key already checked).
 * @param path The image, for the error.
 * @param digest {@link headerDigest} of the header block.
 * @param directory The frame directory's bytes.
 * @param tables Every frame's table, in file order, read back a piece at a time.
 * @param sections All sections (the `seal` one included), in table order, with their offsets.
 */
export async function checkMetadataMac(
  sealer: Sealer,
  path: string,
  digest: Uint8Array,
  directory: Uint8Array,
  tables: PieceSource,
  sections: readonly { name: string; data: Uint8Array; offset: number }[],
): Promise<void> {
  const seal = sections.find((s) => s.name === SEAL_SECTION);
  if (!seal) throw new ImageError(path, undefined, `encrypted image without its "${SEAL_SECTION}" section`);
  if (
    seal.data.length !== MAC_SIZE ||
    !sameTag(await metadataMac(sealer, digest, directory, tables, sections), seal.data)
  ) {
    throw new ImageError(path, seal.offset, "index or sections fail authentication: they were modified");
  }
}

/**
 * A key means the image must be sealed: refuse a downgrade (an image replaced by a plaintext one would
 * otherwise be written into the target, or called sound, with nobody noticing). A sealed image without its key
 * is refused where its contents are needed (the stream reader). Whether an
 * image is sealed is its header's ENCRYPTED bit, which the header digest binds into every chunk's additional
 * data and the metadata MAC, so it cannot be stripped from a sealed image.
 *
 * @param encrypted Whether the image's header says ENCRYPTED.
 * @param key The key the caller gave.
 * @param path The image, for the message.
 * @throws {KeyError} When a key is given and the image is not sealed.
 */
export function requireSealed(encrypted: boolean, key: unknown, path: string): void {
  if (key && !encrypted) {
    throw new KeyError(
      `Cannot use image ${path}: a key was given but the image is not encrypted (a key means only a sealed image is accepted)`,
    );
  }
}
