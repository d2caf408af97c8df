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
 *   and sections (e.g. thread registers) cannot be changed either.
 *
 * @module
 */

import { concatBytes } from "./cursor.ts";
import { HEADER_FIELD } from "./format.ts";
import { ImageError, KeyError } from "../errors.ts";
import { MAC_SIZE, SEAL_PARAMS_SIZE, type Sealer } from "../codecs/seal.ts";

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

function metadata(
  digest: Uint8Array,
  index: Uint8Array,
  sections: readonly { name: string; data: Uint8Array }[],
) {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [enc.encode("cryometa"), digest, u64(index.length), index];
  for (const s of sections) {
    if (s.name === SEAL_SECTION) continue;
    const name = enc.encode(s.name);
    parts.push(u64(name.length), name, u64(s.data.length), s.data);
  }
  return concatBytes(parts);
}

function u64(n: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

/**
 * The `seal` section's bytes: HMAC-SHA256 over the header digest, the index and the other sections.
 *
 * @param sealer The image's sealer.
 * @param digest {@link headerDigest} of the header block.
 * @param index The index bytes.
 * @param sections The other sections, in the order of the section table.
 * @returns 32 bytes.
 */
export async function metadataMac(
  sealer: Sealer,
  digest: Uint8Array,
  index: Uint8Array,
  sections: readonly { name: string; data: Uint8Array }[],
): Promise<Uint8Array> {
  return await sealer.mac(metadata(digest, index, sections));
}

/**
 * Check the `seal` section; throw {@link ImageError} unless it authenticates the index and sections.
 *
 * @param sealer The image's sealer (its key already checked).
 * @param path The image, for the error.
 * @param digest {@link headerDigest} of the header block.
 * @param index The index bytes.
 * @param sections All sections (the `seal` one included), in table order, with their offsets.
 */
export async function checkMetadataMac(
  sealer: Sealer,
  path: string,
  digest: Uint8Array,
  index: Uint8Array,
  sections: readonly { name: string; data: Uint8Array; offset: number }[],
): Promise<void> {
  const seal = sections.find((s) => s.name === SEAL_SECTION);
  if (!seal) throw new ImageError(path, undefined, `encrypted image without its "${SEAL_SECTION}" section`);
  if (
    seal.data.length !== MAC_SIZE || !await sealer.verifyMac(metadata(digest, index, sections), seal.data)
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
