/**
 * At-rest encryption of image chunks: AES-256-GCM per chunk through WebCrypto (`crypto.subtle`).
 *
 * Keys: the user's 256-bit master key is loaded by lib/codecs/keys.ts ({@link SealKey}). Each image gets a random
 * 16-byte salt; HKDF-SHA256 derives from (master key, salt) the image's AES-256-GCM key, its HMAC-SHA256 key and
 * a 16-byte key check, so a wrong key is recognised before any chunk is opened. The salt and the key check (the
 * seal parameters, 32 bytes) are what the image stores.
 *
 * Nonces: each sealed chunk is `nonce(12) | ciphertext | tag(16)`. A nonce is a random 64-bit prefix, drawn
 * per {@link Sealer}, then a 32-bit counter that the sealer increments per chunk and never wraps, so one sealer
 * never repeats a nonce, and since every image has its own derived key, nonces of different images never share
 * a key. The additional authenticated data ({@link chunkAad}) binds each chunk to its index and address, so a
 * chunk moved elsewhere fails to open.
 *
 * @module
 */

import { CryoError, ImageError, KeyError } from "../errors.ts";
import type { SealKey } from "./keys.ts";
import { libcrypto } from "../../ffi/crypto.ts";
import { NativeGcm, SYNC_BYTES } from "./gcm.ts";
import { hmacStream, type MacStream } from "./hmac.ts";

/** Bytes of the seal parameters an image stores: salt(16) | key check(16). */
export const SEAL_PARAMS_SIZE = 32;
/** Bytes of a GCM nonce. */
export const NONCE_SIZE = 12;
/** Bytes of a GCM tag. */
export const TAG_SIZE = 16;
/** Bytes a sealed chunk adds to its plaintext: nonce and tag. */
export const SEAL_OVERHEAD: number = NONCE_SIZE + TAG_SIZE;
/** Bytes of an HMAC-SHA256 tag from {@link Sealer.mac}. */
export const MAC_SIZE = 32;

/** A view as WebCrypto's `BufferSource` type wants it (WebCrypto copies its inputs; no copy here). */
function bytes(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}
const enc = new TextEncoder();
const AAD_MAGIC = enc.encode("cryochnk");
/** The view {@link chunkAad} wrote last through. */
let aadView: DataView | undefined;

/**
 * The additional authenticated data of one chunk: binds it to its place in the image and to the image's header.
 *
 * @param index The record's ordinal among the image's data records (0-based, file order = index order).
 * @param address The record's address (or offset in its segment).
 * @param length The decoded length.
 * @param codec The codec id the plaintext is encoded with.
 * @param segment The record's segment (0 = absolute address).
 * @param header The SHA-256 of the image's header block (32 bytes), or omitted.
 * @param into A buffer to write it into, if it fits (a reader opening chunk after chunk reuses one).
 * @returns `"cryochnk" | index u64 | address u64 | length u64 | segment u32 | codec u8 | 0 0 0 | header`.
 */
export function chunkAad(
  index: number,
  address: bigint,
  length: number,
  codec: number,
  segment = 0,
  header?: Uint8Array,
  into?: Uint8Array,
): Uint8Array {
  const n = 40 + (header?.length ?? 0);
  const fits = into && into.length >= n && into.byteOffset === 0;
  const aad = fits ? (into.length === n ? into : into.subarray(0, n)) : new Uint8Array(n);
  aad.set(AAD_MAGIC);
  aad.fill(0, 37, 40);
  // The view of a reused buffer is kept, and the numbers written as two words: no DataView or bigints per chunk.
  const v = aad.buffer === aadView?.buffer ? aadView : (aadView = new DataView(aad.buffer));
  v.setUint32(8, index >>> 0, true);
  v.setUint32(12, Math.floor(index / 2 ** 32), true);
  v.setBigUint64(16, BigInt.asUintN(64, address), true);
  v.setUint32(24, length >>> 0, true);
  v.setUint32(28, Math.floor(length / 2 ** 32), true);
  v.setUint32(32, segment, true);
  v.setUint8(36, codec);
  if (header) aad.set(header, 40);
  return aad;
}

async function derive(key: SealKey, salt: Uint8Array<ArrayBuffer>) {
  const hkdf = (info: string) => ({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode(info) });
  const [aes, hmac, check] = await Promise.all([
    crypto.subtle.deriveKey(
      hkdf("cryo v1 aes-256-gcm"),
      key.master,
      { name: "AES-GCM", length: 256 },
      false,
      [
        "encrypt",
        "decrypt",
      ],
    ),
    crypto.subtle.deriveKey(
      hkdf("cryo v1 hmac-sha256"),
      key.master,
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
        "verify",
      ],
    ),
    crypto.subtle.deriveBits(hkdf("cryo v1 key check"), key.master, 128),
  ]);
  // The same keys as raw bytes, for libcrypto (HKDF's output is the key either way; WebCrypto's HMAC key is
  // the hash's block size, 512 bits): only when it loads.
  const bits = (info: string, n: number) => crypto.subtle.deriveBits(hkdf(info), key.master, n);
  const [raw, hmacRaw] = libcrypto()
    ? (await Promise.all([bits("cryo v1 aes-256-gcm", 256), bits("cryo v1 hmac-sha256", 512)])).map((b) =>
      new Uint8Array(b)
    )
    : [];
  return { aes, hmac, check: new Uint8Array(check), raw, hmacRaw };
}

/** Seals and opens the chunks of one image under its derived key. */
export class Sealer {
  /** The seal parameters the image stores: salt(16) | key check(16). */
  readonly params: Uint8Array;
  readonly #aes: CryptoKey;
  readonly #hmac: CryptoKey;
  readonly #hmacRaw: Uint8Array | undefined;
  readonly #native: NativeGcm | undefined;
  readonly #prefix = crypto.getRandomValues(new Uint8Array(8));
  #counter = 0;

  private constructor(params: Uint8Array, keys: Awaited<ReturnType<typeof derive>>) {
    this.params = params;
    this.#aes = keys.aes;
    this.#hmac = keys.hmac;
    this.#hmacRaw = keys.hmacRaw;
    this.#native = keys.raw ? new NativeGcm(keys.raw) : undefined;
  }

  /**
   * A sealer for a new image: a fresh random salt.
   *
   * @param key The master key.
   * @returns The sealer; store its {@link params} in the image.
   */
  static async create(key: SealKey): Promise<Sealer> {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const keys = await derive(key, salt);
    const params = new Uint8Array(SEAL_PARAMS_SIZE);
    params.set(salt);
    params.set(keys.check, 16);
    return new Sealer(params, keys);
  }

  /**
   * A sealer for an existing image, after checking that `key` is the one it was sealed with.
   *
   * @param key The master key.
   * @param params The image's seal parameters (32 bytes).
   * @param path The image, for messages.
   * @returns The sealer.
   * @throws {KeyError} When the key does not match.
   * @throws {ImageError} When `params` is not 32 bytes.
   */
  static async open(key: SealKey, params: Uint8Array, path = "-"): Promise<Sealer> {
    if (params.length !== SEAL_PARAMS_SIZE) {
      throw new ImageError(
        path,
        undefined,
        `seal parameters are ${params.length} bytes, expected ${SEAL_PARAMS_SIZE}`,
      );
    }
    const keys = await derive(key, new Uint8Array(params.subarray(0, 16)));
    let diff = 0;
    for (let i = 0; i < 16; i++) diff |= keys.check[i] ^ params[16 + i];
    if (diff !== 0) {
      throw new KeyError(
        `Cannot open image ${path}: the key (${key.source}) is not the one it was sealed with`,
      );
    }
    return new Sealer(new Uint8Array(params), keys);
  }

  /** How many chunks this sealer has sealed. */
  get sealed(): number {
    return this.#counter;
  }

  /**
   * Encrypt and authenticate one chunk.
   *
   * @param plain The chunk (encoded or raw); not modified.
   * @param aad Its additional authenticated data ({@link chunkAad}).
   * @param into Where to put the sealed chunk (`plain.length` + {@link SEAL_OVERHEAD} bytes), if anywhere: with
   *   libcrypto it is written there (and returned); else a new buffer is returned.
   * @returns `nonce(12) | ciphertext | tag(16)`.
   * @throws {CryoError} After 2^32 chunks (a nonce would repeat).
   */
  async seal(plain: Uint8Array, aad: Uint8Array, into?: Uint8Array): Promise<Uint8Array> {
    if (into && into.length !== plain.length + SEAL_OVERHEAD) {
      throw new RangeError(
        `Cannot seal ${plain.length} bytes into ${into.length}: expected plain + ${SEAL_OVERHEAD}`,
      );
    }
    const iv = this.#nextIv();
    if (this.#native) return await this.#native.seal(iv, aad, plain, into);
    const ct = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: bytes(aad), tagLength: TAG_SIZE * 8 },
      this.#aes,
      bytes(plain),
    );
    const out = new Uint8Array(NONCE_SIZE + ct.byteLength);
    out.set(iv);
    out.set(new Uint8Array(ct), NONCE_SIZE);
    ct.transfer(0); // freed now, not when the collector gets to it (a chunk is up to 4 MiB)
    return out;
  }

  /**
   * {@link seal} on the calling thread, without a promise: with libcrypto, for a chunk of at most 64 KiB
   * (lib/codecs/gcm.ts `SYNC_BYTES`). A checkpoint of half a million one-page chunks made a promise chain per
   * chunk otherwise.
   *
   * @param plain The chunk (encoded or raw); not modified.
   * @param aad Its additional authenticated data ({@link chunkAad}).
   * @param into Where to put the sealed chunk (`plain.length` + {@link SEAL_OVERHEAD} bytes).
   * @returns `into`, sealed; undefined (nothing done, no nonce used) for a larger chunk or without libcrypto.
   * @throws {CryoError} After 2^32 chunks (a nonce would repeat).
   */
  sealNow(plain: Uint8Array, aad: Uint8Array, into: Uint8Array): Uint8Array | undefined {
    if (!this.#native || plain.length > SYNC_BYTES) return undefined;
    if (into.length !== plain.length + SEAL_OVERHEAD) {
      throw new RangeError(
        `Cannot seal ${plain.length} bytes into ${into.length}: expected plain + ${SEAL_OVERHEAD}`,
      );
    }
    return this.#native.sealNow(this.#nextIv(), aad, plain, into);
  }

  /** Whether {@link sealNow} seals chunks of up to 64 KiB (libcrypto is loaded); else it always declines. */
  get sealsNow(): boolean {
    return this.#native !== undefined;
  }

  /** The next chunk's nonce: the sealer's random prefix, then its counter (big-endian). */
  #nextIv(): Uint8Array<ArrayBuffer> {
    if (this.#counter > 0xffffffff) throw new CryoError("Cannot seal more than 2^32 chunks with one sealer");
    const iv = new Uint8Array(NONCE_SIZE);
    iv.set(this.#prefix);
    new DataView(iv.buffer).setUint32(8, this.#counter++, false);
    return iv;
  }

  /**
   * Authenticate and decrypt one chunk.
   *
   * @param sealed `nonce(12) | ciphertext | tag(16)`.
   * @param aad The additional authenticated data it must have been sealed with.
   * @param path The image, for the error.
   * @param offset Where the sealed bytes lie in the image, for the error.
   * @param into Where to put the plaintext, if it fits (with libcrypto; else a new buffer is returned).
   * @returns The plaintext (a view of `into`, or a buffer of its own).
   * @throws {ImageError} When the chunk was modified, moved, or belongs to another image.
   */
  async open(
    sealed: Uint8Array,
    aad: Uint8Array,
    path = "-",
    offset?: number,
    into?: Uint8Array,
  ): Promise<Uint8Array> {
    if (sealed.length < SEAL_OVERHEAD) {
      throw new ImageError(
        path,
        offset,
        `sealed chunk is ${sealed.length} bytes, shorter than ${SEAL_OVERHEAD}`,
      );
    }
    if (this.#native) {
      const n = sealed.length - SEAL_OVERHEAD;
      const plain = into && into.length >= n ? into.subarray(0, n) : new Uint8Array(n);
      return opened(await this.#native.open(sealed, aad, plain), plain, path, offset);
    }
    try {
      const plain = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: bytes(sealed.subarray(0, NONCE_SIZE)),
          additionalData: bytes(aad),
          tagLength: TAG_SIZE * 8,
        },
        this.#aes,
        bytes(sealed.subarray(NONCE_SIZE)),
      );
      return new Uint8Array(plain);
    } catch (e) {
      const err = new ImageError(
        path,
        offset,
        "chunk authentication failed: it was modified, moved, or belongs to another image",
      );
      Object.defineProperty(err, "cause", { value: e });
      throw err;
    }
  }

  /**
   * {@link open} on the calling thread, without a promise, when it can be: with libcrypto, a chunk of at most
   * 64 KiB (an image of one-page records is opened with no promise per record).
   *
   * @param sealed `nonce(12) | ciphertext | tag(16)`.
   * @param aad The additional authenticated data it must have been sealed with.
   * @param path The image, for the error.
   * @param offset Where the sealed bytes lie in the image, for the error.
   * @param into Where to put the plaintext (at least `sealed.length - 28` bytes).
   * @returns The plaintext (a view of `into`), or undefined when it cannot be opened here (call {@link open}).
   * @throws {ImageError} When the chunk was modified, moved, or belongs to another image.
   */
  openNow(
    sealed: Uint8Array,
    aad: Uint8Array,
    path: string,
    offset: number,
    into: Uint8Array,
  ): Uint8Array | undefined {
    const n = sealed.length - SEAL_OVERHEAD;
    if (!this.#native || n < 0 || into.length < n) return undefined;
    const plain = into.length === n ? into : into.subarray(0, n);
    const ok = this.#native.openNow(sealed, aad, plain);
    return ok === undefined ? undefined : opened(ok, plain, path, offset);
  }

  /**
   * Start an HMAC-SHA256 under the image's derived key, given its message piece by piece (lib/codecs/hmac.ts:
   * libcrypto when it loads, hashing each piece as it comes; WebCrypto otherwise).
   *
   * @returns The stream; {@link MacStream.digest} gives the tag {@link mac} gives for the same bytes.
   */
  macStream(): MacStream {
    return hmacStream(this.#hmacRaw, this.#hmac);
  }

  /**
   * HMAC-SHA256 of metadata (header block, region table, index) under the image's derived key.
   *
   * @param data The bytes to authenticate.
   * @returns The 32-byte tag.
   */
  async mac(data: Uint8Array): Promise<Uint8Array> {
    using m = this.macStream();
    m.update(data);
    return await m.digest();
  }

  /**
   * Check an HMAC-SHA256 tag from {@link mac} (in constant time).
   *
   * @param data The bytes.
   * @param tag The tag they must have.
   * @returns Whether the tag matches.
   */
  async verifyMac(data: Uint8Array, tag: Uint8Array): Promise<boolean> {
    return sameTag(await this.mac(data), tag);
  }
}

/** The plaintext of a chunk that authenticated; else it is wiped and an {@link ImageError} thrown. */
function opened(ok: boolean, plain: Uint8Array, path: string, offset: number | undefined): Uint8Array {
  if (ok) return plain;
  plain.fill(0);
  throw new ImageError(
    path,
    offset,
    "chunk authentication failed: it was modified, moved, or belongs to another image",
  );
}

/**
 * Whether two MAC tags are equal, in constant time (every byte compared, whatever differs first).
 *
 * @param a A tag.
 * @param b Another.
 * @returns Whether both are {@link MAC_SIZE} bytes and equal.
 */
export function sameTag(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== MAC_SIZE || b.length !== MAC_SIZE) return false;
  let diff = 0;
  for (let i = 0; i < MAC_SIZE; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}
