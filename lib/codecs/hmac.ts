/**
 * HMAC-SHA256 computed piece by piece, for an image's metadata MAC (lib/image/sealing.ts), whose bytes (the
 * frame tables of an image of half a million records: 20 MiB) are read a piece at a time rather than held at
 * once. With libcrypto (ffi/crypto.ts) each piece is hashed as it comes (`EVP_DigestSignUpdate` under an HMAC
 * key) and nothing is kept; without it, WebCrypto, which has no incremental HMAC, is given the pieces kept and
 * joined at the end, so its memory grows with the bytes (as the one-shot MAC's did).
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { EVP_PKEY_HMAC, libcrypto } from "../../ffi/crypto.ts";

/** Bytes of an HMAC-SHA256 tag. */
export const HMAC_SIZE = 32;

/** An HMAC-SHA256 being computed: the bytes given to {@link update}, in order, then {@link digest}. */
export interface MacStream extends Disposable {
  /**
   * Add bytes to the message (copied or hashed now: the caller may reuse `bytes` at once).
   *
   * @param bytes The next bytes.
   */
  update(bytes: Uint8Array): void;
  /**
   * End the message; the stream is closed after.
   *
   * @returns The 32-byte tag.
   */
  digest(): Promise<Uint8Array>;
  /** Free what the stream holds (idempotent; {@link digest} does it too). */
  close(): void;
}

/**
 * Start an HMAC-SHA256: through libcrypto when it loads, else through WebCrypto.
 *
 * @param raw The key's bytes (for libcrypto), or undefined to use WebCrypto.
 * @param key The same key for WebCrypto (`sign` usage).
 * @returns The stream.
 * @example
 * ```ts ignore
 * using mac = hmacStream(raw, key);
 * mac.update(head);
 * mac.update(rest);
 * const tag = await mac.digest();
 * ```
 */
export function hmacStream(raw: Uint8Array | undefined, key: CryptoKey): MacStream {
  return raw && libcrypto() ? new NativeHmac(raw) : new WebCryptoHmac(key);
}

/** An `EVP_MD_CTX` signing with an HMAC key (OpenSSL 3): each piece hashed as it comes. */
class NativeHmac implements MacStream {
  #ctx: Deno.PointerValue = null;
  #pkey: Deno.PointerValue = null;

  constructor(raw: Uint8Array) {
    const c = libcrypto()!;
    this.#pkey = c.EVP_PKEY_new_raw_private_key(
      EVP_PKEY_HMAC,
      null,
      raw as Uint8Array<ArrayBuffer>,
      BigInt(raw.length),
    );
    this.#ctx = c.EVP_MD_CTX_new();
    if (this.#pkey === null || this.#ctx === null) {
      this.close();
      throw new CryoError(
        "Cannot create an HMAC-SHA256 context (EVP_PKEY_new_raw_private_key, EVP_MD_CTX_new)",
      );
    }
    registry.register(this, [this.#ctx, this.#pkey], this);
    if (c.EVP_DigestSignInit(this.#ctx, null, c.EVP_sha256(), null, this.#pkey) !== 1) {
      this.close();
      throw new CryoError("Cannot start an HMAC-SHA256 (EVP_DigestSignInit)");
    }
  }

  update(bytes: Uint8Array): void {
    if (this.#ctx === null) throw new TypeError("Cannot update an HMAC that is closed");
    if (bytes.length === 0) return;
    if (
      libcrypto()!.EVP_DigestSignUpdate(this.#ctx, bytes as Uint8Array<ArrayBuffer>, BigInt(bytes.length)) !==
        1
    ) {
      throw new CryoError(`Cannot add ${bytes.length} bytes to an HMAC-SHA256 (EVP_DigestSignUpdate)`);
    }
  }

  digest(): Promise<Uint8Array> {
    if (this.#ctx === null) throw new TypeError("Cannot finish an HMAC that is closed");
    try {
      const tag = new Uint8Array(HMAC_SIZE);
      const length = new BigUint64Array([BigInt(HMAC_SIZE)]);
      if (libcrypto()!.EVP_DigestSignFinal(this.#ctx, tag, length) !== 1 || length[0] !== BigInt(HMAC_SIZE)) {
        throw new CryoError("Cannot finish an HMAC-SHA256 (EVP_DigestSignFinal)");
      }
      return Promise.resolve(tag);
    } finally {
      this.close();
    }
  }

  close(): void {
    const c = libcrypto();
    if (this.#ctx !== null) c?.EVP_MD_CTX_free(this.#ctx);
    if (this.#pkey !== null) c?.EVP_PKEY_free(this.#pkey);
    this.#ctx = this.#pkey = null;
    registry.unregister(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Frees the contexts of streams dropped without `close()`. */
const registry = new FinalizationRegistry<Deno.PointerValue[]>(([ctx, pkey]) => {
  const c = libcrypto();
  c?.EVP_MD_CTX_free(ctx);
  c?.EVP_PKEY_free(pkey);
});

/** WebCrypto's one-shot HMAC over the pieces, kept (copied) until the end. */
class WebCryptoHmac implements MacStream {
  readonly #key: CryptoKey;
  #pieces: Uint8Array[] | undefined = [];

  constructor(key: CryptoKey) {
    this.#key = key;
  }

  update(bytes: Uint8Array): void {
    if (!this.#pieces) throw new TypeError("Cannot update an HMAC that is closed");
    this.#pieces.push(bytes.slice());
  }

  async digest(): Promise<Uint8Array> {
    if (!this.#pieces) throw new TypeError("Cannot finish an HMAC that is closed");
    const pieces = this.#pieces;
    this.close();
    const all = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of pieces.splice(0)) {
      all.set(p, at);
      at += p.length;
    }
    return new Uint8Array(await crypto.subtle.sign("HMAC", this.#key, all));
  }

  close(): void {
    this.#pieces = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
