/**
 * AES-256-GCM through libcrypto (ffi/crypto.ts), for {@link Sealer} (lib/codecs/seal.ts) when the library
 * loads: contexts keyed once, one per call in flight, reused; each chunk is encrypted or decrypted straight into
 * the caller's buffer, so sealing makes no copy and leaves nothing for the garbage collector but the output
 * itself. A chunk over {@link SYNC_BYTES} is run on a pool thread; a smaller one on the calling thread, where
 * it also can be opened without a promise ({@link NativeGcm.openNow}).
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { EVP_CTRL_GCM_GET_TAG, EVP_CTRL_GCM_SET_TAG, libcrypto } from "../../ffi/crypto.ts";

/** Bytes of a GCM nonce. */
const NONCE = 12;
/** Bytes of a GCM tag. */
const TAG = 16;

/**
 * Chunks up to this size are encrypted or decrypted on the calling thread: a pool thread's round trip costs
 * more than AES-GCM does on them (an encrypted checkpoint of 524,288 one-page records: 17.6 s with a round trip
 * per record, 13.0 s without; docs/BENCHMARKING.md).
 */
export const SYNC_BYTES = 64 << 10;

/** A view as the FFI wants it (no copy). */
function bytes(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}

/** One libcrypto AES-256-GCM context with its key set, and its output-length cell. */
interface Gcm {
  ctx: Deno.PointerValue;
  outl: Int32Array<ArrayBuffer>;
}

/** AES-256-GCM under one key through libcrypto: call only when `libcrypto()` loads. */
export class NativeGcm {
  readonly #key: Uint8Array<ArrayBuffer>;
  readonly #free: [Gcm[], Gcm[]] = [[], []];
  readonly #all: Deno.PointerValue[] = [];
  /** The tag of the chunk being opened (used within one synchronous call at a time). */
  readonly #tag = new Uint8Array(TAG);
  /** The nonce of the chunk being opened on the calling thread (used within one synchronous call). */
  readonly #iv = new Uint8Array(NONCE);

  /** @param key The 32-byte AES-256 key. */
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

  /** Set `iv` and `aad` on a context of direction `enc`; run `src` to `dst` here when `now`. */
  #start(enc: 0 | 1, iv: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array, now: boolean): Gcm {
    const c = libcrypto()!;
    const g = this.#take(enc);
    try {
      if (c.EVP_CipherInit_ex(g.ctx, null, null, null, bytes(iv), enc) !== 1) {
        throw new Error("EVP_CipherInit_ex");
      }
      if (c.EVP_CipherUpdate_buf(g.ctx, null, g.outl, bytes(aad), aad.length) !== 1) {
        throw new Error("EVP_CipherUpdate (AAD)");
      }
      if (now && src.length) {
        const ok = c.EVP_CipherUpdate_buf(g.ctx, bytes(dst), g.outl, bytes(src), src.length);
        if (ok !== 1 || g.outl[0] !== src.length) throw new Error("EVP_CipherUpdate");
      }
      return g;
    } catch (e) {
      this.#free[enc].push(g);
      throw e;
    }
  }

  /** Run `iv`, `aad` and `src` to `dst` through a context of direction `enc` (a large `src` on a pool thread). */
  async #run(enc: 0 | 1, iv: Uint8Array, aad: Uint8Array, src: Uint8Array, dst: Uint8Array): Promise<Gcm> {
    const now = src.length <= SYNC_BYTES;
    const g = this.#start(enc, iv, aad, src, dst, now);
    if (now) return g;
    try {
      const ok = await libcrypto()!.EVP_CipherUpdate_nb(
        g.ctx,
        Deno.UnsafePointer.of(bytes(dst)),
        g.outl,
        Deno.UnsafePointer.of(bytes(src)),
        src.length,
      );
      if (ok !== 1 || g.outl[0] !== src.length) throw new Error("EVP_CipherUpdate");
      return g;
    } catch (e) {
      this.#free[enc].push(g);
      throw e;
    }
  }

  /**
   * Encrypt a chunk.
   *
   * @param iv The nonce (12 bytes).
   * @param aad The additional authenticated data.
   * @param plain The chunk.
   * @param into Where to write `nonce | ciphertext | tag` (`plain.length` + 28 bytes), if given.
   * @returns `nonce | ciphertext | tag` (`into`, or a new buffer).
   */
  async seal(iv: Uint8Array, aad: Uint8Array, plain: Uint8Array, into?: Uint8Array): Promise<Uint8Array> {
    const n = plain.length;
    const out = into ?? new Uint8Array(NONCE + n + TAG);
    out.set(iv);
    return this.#sealed(await this.#run(1, iv, aad, plain, out.subarray(NONCE, NONCE + n)), out, n);
  }

  /**
   * {@link seal} on the calling thread, without a promise, for a chunk of at most {@link SYNC_BYTES}.
   *
   * @param iv The nonce (12 bytes).
   * @param aad The additional authenticated data.
   * @param plain The chunk.
   * @param into Where to write `nonce | ciphertext | tag` (`plain.length` + 28 bytes).
   * @returns `into`; undefined (nothing done) when the chunk is larger.
   */
  sealNow(iv: Uint8Array, aad: Uint8Array, plain: Uint8Array, into: Uint8Array): Uint8Array | undefined {
    const n = plain.length;
    if (n > SYNC_BYTES) return undefined;
    into.set(iv);
    return this.#sealed(this.#start(1, iv, aad, plain, into.subarray(NONCE, NONCE + n), true), into, n);
  }

  /** Finish sealing `n` bytes into `out` on `g`: the tag after the ciphertext; `g` goes back to its list. */
  #sealed(g: Gcm, out: Uint8Array, n: number): Uint8Array {
    try {
      const c = libcrypto()!;
      const end = out.subarray(NONCE + n);
      if (c.EVP_CipherFinal_ex(g.ctx, bytes(end), g.outl) !== 1) throw new Error("final");
      if (c.EVP_CIPHER_CTX_ctrl(g.ctx, EVP_CTRL_GCM_GET_TAG, TAG, end) !== 1) throw new Error("tag");
    } catch (e) {
      throw new CryoError(`Cannot seal a ${n}-byte chunk with libcrypto: ${(e as Error).message} failed`);
    } finally {
      this.#free[1].push(g);
    }
    return out;
  }

  /**
   * Decrypt and authenticate a chunk.
   *
   * @param sealed `nonce | ciphertext | tag`.
   * @param aad The additional authenticated data it must have been sealed with.
   * @param dst Where the plaintext goes (`sealed.length` - 28 bytes; not to be used unless true).
   * @returns Whether the chunk authenticates.
   */
  async open(sealed: Uint8Array, aad: Uint8Array, dst: Uint8Array): Promise<boolean> {
    const n = sealed.length - NONCE - TAG;
    const g = await this.#run(0, sealed.subarray(0, NONCE), aad, sealed.subarray(NONCE, NONCE + n), dst);
    return this.#check(g, sealed);
  }

  /**
   * {@link open} on the calling thread, without a promise, for a chunk of at most {@link SYNC_BYTES}.
   *
   * @param sealed `nonce | ciphertext | tag`.
   * @param aad The additional authenticated data it must have been sealed with.
   * @param dst Where the plaintext goes.
   * @returns Whether the chunk authenticates; undefined (nothing done) when it is larger.
   */
  openNow(sealed: Uint8Array, aad: Uint8Array, dst: Uint8Array): boolean | undefined {
    const n = sealed.length - NONCE - TAG;
    if (n > SYNC_BYTES) return undefined;
    const iv = this.#iv; // copied, not a view: a reader of one-page records opens hundreds of thousands
    for (let i = 0; i < NONCE; i++) iv[i] = sealed[i];
    const g = this.#start(0, iv, aad, sealed.subarray(NONCE, NONCE + n), dst, true);
    return this.#check(g, sealed);
  }

  /** Check the tag at the end of `sealed` on a context that has decrypted the rest; give the context back. */
  #check(g: Gcm, sealed: Uint8Array): boolean {
    try {
      const c = libcrypto()!;
      const tag = this.#tag; // a copy (the call may write to it), byte by byte: no view
      for (let i = 0, at = sealed.length - TAG; i < TAG; i++) tag[i] = sealed[at + i];
      if (c.EVP_CIPHER_CTX_ctrl(g.ctx, EVP_CTRL_GCM_SET_TAG, TAG, tag) !== 1) return false;
      return c.EVP_CipherFinal_ex(g.ctx, tag, g.outl) === 1;
    } finally {
      this.#free[0].push(g);
    }
  }
}

const registry = new FinalizationRegistry<Deno.PointerValue[]>((all) => {
  const c = libcrypto();
  for (const ctx of all.splice(0)) c?.EVP_CIPHER_CTX_free(ctx);
});
