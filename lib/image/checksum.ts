/**
 * XXH3-64 checksums, the one checksum of the image format: of memory by address, of a JS buffer, and
 * incrementally over a run read in pieces.
 *
 * @module
 */

import { xxhash } from "../../ffi/xxhash.ts";
import { ptrOf } from "../../ffi/libc.ts";

/**
 * XXH3-64 of `len` bytes of this process's memory at `addr`.
 *
 * @param addr Address of readable memory.
 * @param len Length in bytes.
 * @returns The checksum.
 */
export function checksumAt(addr: bigint, len: bigint): bigint {
  return xxhash.XXH3_64bits(ptrOf(addr), len);
}

/**
 * XXH3-64 of `len` bytes at `addr`, computed on a pool thread so the caller can overlap it with I/O.
 *
 * @param addr Address of readable memory; it must stay mapped and unchanged until the promise settles.
 * @param len Length in bytes.
 * @returns The checksum.
 */
export function checksumAtAsync(addr: bigint, len: bigint): Promise<bigint> {
  return xxhash.XXH3_64bits_nb(ptrOf(addr), len);
}

/**
 * XXH3-64 of a buffer.
 *
 * @param bytes The bytes.
 * @returns The checksum.
 */
export function checksum(bytes: Uint8Array): bigint {
  return xxhash.XXH3_64bits_buf(bytes, BigInt(bytes.length));
}

/** An incremental XXH3-64 over bytes fed in pieces; `digest()` equals {@link checksum} of their concatenation. */
export class Checksummer implements Disposable {
  #state: Deno.PointerValue;

  /** Allocate the hash state. */
  constructor() {
    this.#state = xxhash.XXH3_createState();
    if (this.#state === null) throw new Error("Cannot XXH3_createState: out of memory");
    xxhash.XXH3_64bits_reset(this.#state);
  }

  /**
   * Start over.
   *
   * @returns This.
   */
  reset(): this {
    xxhash.XXH3_64bits_reset(this.#live());
    return this;
  }

  /**
   * Feed `len` bytes of memory at `addr`.
   *
   * @param addr Address of readable memory.
   * @param len Length in bytes.
   */
  updateAt(addr: bigint, len: bigint): void {
    xxhash.XXH3_64bits_update(this.#live(), ptrOf(addr), len);
  }

  /**
   * Feed `len` bytes at `addr` on a pool thread, so the caller can overlap hashing with I/O. Await it before
   * the next update or digest.
   *
   * @param addr Address of readable memory; it must stay mapped and unchanged until the promise settles.
   * @param len Length in bytes.
   */
  async updateAtAsync(addr: bigint, len: bigint): Promise<void> {
    await xxhash.XXH3_64bits_update_nb(this.#live(), ptrOf(addr), len);
  }

  /**
   * The checksum of everything fed since the last reset.
   *
   * @returns The checksum.
   */
  digest(): bigint {
    return xxhash.XXH3_64bits_digest(this.#live());
  }

  /** Free the state. Idempotent. */
  close(): void {
    if (this.#state !== null) xxhash.XXH3_freeState(this.#state);
    this.#state = null;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #live(): Deno.PointerValue {
    if (this.#state === null) throw new TypeError("Cannot use a closed Checksummer");
    return this.#state;
  }
}
