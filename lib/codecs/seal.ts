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
import { EVP_CTRL_GCM_GET_TAG, EVP_CTRL_GCM_SET_TAG, libcrypto } from "../../ffi/crypto.ts";

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

/**
 * The additional authenticated data of one chunk: binds it to its place in the image and to the image's header.
 *
 * @param index The record's ordinal among the image's data records (0-based, file order = index order).
 * @param address The record's address (or offset in its segment).
 * @param length The decoded length.
 * @param codec The codec id the plaintext is encoded with.
 * @param segment The record's segment (0 = absolute address).
 * @param header The SHA-256 of the image's header block (32 bytes), or omitted.
 * @returns `"cryochnk" | index u64 | address u64 | length u64 | segment u32 | codec u8 | 0 0 0 | header`.
 */
export function chunkAad(
  index: number,
  address: bigint,
  length: number,
  codec: number,
  segment = 0,
  header?: Uint8Array,
): Uint8Array {
  const aad = new Uint8Array(40 + (header?.length ?? 0));
  aad.set(enc.encode("cryochnk"));
  const v = new DataView(aad.buffer);
  v.setBigUint64(8, BigInt(index), true);
  v.setBigUint64(16, BigInt.asUintN(64, address), true);
  v.setBigUint64(24, BigInt(length), true);
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
  // The same key as raw bytes, for libcrypto (HKDF's output is the key either way): only when it loads.
  const raw = libcrypto()
    ? new Uint8Array(await crypto.subtle.deriveBits(hkdf("cryo v1 aes-256-gcm"), key.master, 256))
    : undefined;
  return { aes, hmac, check: new Uint8Array(check), raw };
}

/** One libcrypto AES-256-GCM context with its key set, and its output-length cell. */
interface Gcm {
  ctx: Deno.PointerValue;
  outl: Int32Array<ArrayBuffer>;
}

/**
 * AES-256-GCM through libcrypto (ffi/crypto.ts): contexts keyed once, one per call in flight, reused; the bulk
 * of each chunk is encrypted or decrypted on a pool thread straight into the caller's buffer, so sealing makes
 * no copy and leaves nothing for the garbage collector but the output itself.
 */
class NativeGcm {
  readonly #key: Uint8Array<ArrayBuffer>;
  readonly #free: [Gcm[], Gcm[]] = [[], []];
  readonly #all: Deno.PointerValue[] = [];

  constructor(key: Uint8Array<ArrayBuffer>) {
    this.#key = key;
    registry.register(this, this.#all);
  }

  #take(enc: 0 | 1): Gcm {
    const got = this.#free[enc].pop();
    if (got) return got;
    const c = libcrypto()!;
    const ctx = c.EVP_CIPHER_CTX_new();
    if (ctx === null) throw new CryoError("Cannot create an AES-GCM context (EVP_CIPHER_CTX_new)");
    this.#all.push(ctx);
    if (c.EVP_CipherInit_ex(ctx, c.EVP_aes_256_gcm(), null, this.#key, null, enc) !== 1) {
      throw new CryoError("Cannot key an AES-256-GCM context (EVP_CipherInit_ex)");
    }
    return { ctx, outl: new Int32Array(1) };
  }

  /** Run `iv`, `aad` and `n` bytes from `src` to `dst` through a context of direction `enc`. */
  async #run(enc: 0 | 1, iv: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array): Promise<Gcm> {
    const c = libcrypto()!;
    const g = this.#take(enc);
    try {
      if (c.EVP_CipherInit_ex(g.ctx, null, null, null, bytes(iv), enc) !== 1) {
        throw new Error("EVP_CipherInit_ex");
      }
      if (c.EVP_CipherUpdate(g.ctx, null, g.outl, Deno.UnsafePointer.of(bytes(aad)), aad.length) !== 1) {
        throw new Error("EVP_CipherUpdate (AAD)");
      }
      if (src.length) {
        const ok = await c.EVP_CipherUpdate_nb(
          g.ctx,
          Deno.UnsafePointer.of(bytes(dst)),
          g.outl,
          Deno.UnsafePointer.of(bytes(src)),
          src.length,
        );
        if (ok !== 1 || g.outl[0] !== src.length) throw new Error("EVP_CipherUpdate");
      }
      return g;
    } catch (e) {
      this.#free[enc].push(g);
      throw e;
    }
  }

  async seal(iv: Uint8Array, aad: Uint8Array, plain: Uint8Array, into?: Uint8Array): Promise<Uint8Array> {
    const n = plain.length;
    const out = into ?? new Uint8Array(NONCE_SIZE + n + TAG_SIZE);
    out.set(iv);
    const g = await this.#run(1, iv, aad, plain, out.subarray(NONCE_SIZE, NONCE_SIZE + n));
    try {
      const c = libcrypto()!;
      const end = out.subarray(NONCE_SIZE + n);
      if (c.EVP_CipherFinal_ex(g.ctx, Deno.UnsafePointer.of(end), g.outl) !== 1) throw new Error("final");
      if (c.EVP_CIPHER_CTX_ctrl(g.ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, end) !== 1) throw new Error("tag");
    } catch (e) {
      throw new CryoError(`Cannot seal a ${n}-byte chunk with libcrypto: ${(e as Error).message} failed`);
    } finally {
      this.#free[1].push(g);
    }
    return out;
  }

  /** Whether the chunk authenticates; its plaintext is in `dst` (not to be used unless true). */
  async open(sealed: Uint8Array, aad: Uint8Array, dst: Uint8Array): Promise<boolean> {
    const n = sealed.length - SEAL_OVERHEAD;
    const ct = sealed.subarray(NONCE_SIZE, NONCE_SIZE + n);
    const g = await this.#run(0, sealed.subarray(0, NONCE_SIZE), aad, ct, dst);
    try {
      const c = libcrypto()!;
      const tag = sealed.slice(NONCE_SIZE + n); // the call may write to it
      if (c.EVP_CIPHER_CTX_ctrl(g.ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tag) !== 1) return false;
      return c.EVP_CipherFinal_ex(g.ctx, Deno.UnsafePointer.of(tag), g.outl) === 1;
    } finally {
      this.#free[0].push(g);
    }
  }
}

const registry = new FinalizationRegistry<Deno.PointerValue[]>((all) => {
  const c = libcrypto();
  for (const ctx of all.splice(0)) c?.EVP_CIPHER_CTX_free(ctx);
});

/** Seals and opens the chunks of one image under its derived key. */
export class Sealer {
  /** The seal parameters the image stores: salt(16) | key check(16). */
  readonly params: Uint8Array;
  readonly #aes: CryptoKey;
  readonly #hmac: CryptoKey;
  readonly #native: NativeGcm | undefined;
  readonly #prefix = crypto.getRandomValues(new Uint8Array(8));
  #counter = 0;

  private constructor(params: Uint8Array, aes: CryptoKey, hmac: CryptoKey, raw?: Uint8Array<ArrayBuffer>) {
    this.params = params;
    this.#aes = aes;
    this.#hmac = hmac;
    this.#native = raw ? new NativeGcm(raw) : undefined;
  }

  /**
   * A sealer for a new image: a fresh random salt.
   *
   * @param key The master key.
   * @returns The sealer; store its {@link params} in the image.
   */
  static async create(key: SealKey): Promise<Sealer> {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const { aes, hmac, check, raw } = await derive(key, salt);
    const params = new Uint8Array(SEAL_PARAMS_SIZE);
    params.set(salt);
    params.set(check, 16);
    return new Sealer(params, aes, hmac, raw);
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
    const { aes, hmac, check, raw } = await derive(key, new Uint8Array(params.subarray(0, 16)));
    let diff = 0;
    for (let i = 0; i < 16; i++) diff |= check[i] ^ params[16 + i];
    if (diff !== 0) {
      throw new KeyError(
        `Cannot open image ${path}: the key (${key.source}) is not the one it was sealed with`,
      );
    }
    return new Sealer(new Uint8Array(params), aes, hmac, raw);
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
    if (this.#counter > 0xffffffff) throw new CryoError("Cannot seal more than 2^32 chunks with one sealer");
    const iv = new Uint8Array(NONCE_SIZE);
    iv.set(this.#prefix);
    new DataView(iv.buffer).setUint32(8, this.#counter++, false);
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
      if (await this.#native.open(sealed, aad, plain)) return plain;
      plain.fill(0);
      throw new ImageError(
        path,
        offset,
        "chunk authentication failed: it was modified, moved, or belongs to another image",
      );
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
   * HMAC-SHA256 of metadata (header block, region table, index) under the image's derived key.
   *
   * @param data The bytes to authenticate.
   * @returns The 32-byte tag.
   */
  async mac(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign("HMAC", this.#hmac, bytes(data)));
  }

  /**
   * Check an HMAC-SHA256 tag from {@link mac} (in constant time).
   *
   * @param data The bytes.
   * @param tag The tag they must have.
   * @returns Whether the tag matches.
   */
  async verifyMac(data: Uint8Array, tag: Uint8Array): Promise<boolean> {
    if (tag.length !== MAC_SIZE) return false;
    return await crypto.subtle.verify("HMAC", this.#hmac, bytes(tag), bytes(data));
  }
}
