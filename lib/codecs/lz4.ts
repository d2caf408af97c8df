/**
 * The lz4 chunk codec over the system's liblz4. Level 1 is `LZ4_compress_default`; negative levels are the
 * fast mode's acceleration (`-N` as `lz4 --fast=N`); 2-12 use LZ4HC. Large chunks run `nonblocking` on a pool
 * thread, each with its own output buffer, so N encodes in flight use N cores. Incompressible chunks are detected
 * by giving lz4 one byte less than the input as capacity: it returns 0 when the output does not fit.
 *
 * @module
 */

import { type Codec, INLINE_BYTES } from "./codec.ts";
import { CryoError } from "../errors.ts";
import { lz4 } from "../../ffi/lz4.ts";

/** Chunks at least this large are (de)compressed on a pool thread; smaller ones inline. */
const NONBLOCKING_MIN = INLINE_BYTES;

/** `LZ4_MAX_INPUT_SIZE`. */
const MAX_INPUT = 0x7e000000;

interface Slot {
  out: Uint8Array<ArrayBuffer>;
  outPtr: Deno.PointerValue;
}

/** The lz4 codec (image codec id 2). */
export class Lz4Codec implements Codec {
  /** Image codec id. */
  readonly id = 2;
  /** `"lz4"`. */
  readonly name = "lz4";
  /** The level: 1 default, -1..-64 fast with that acceleration, 2..12 HC. */
  readonly level: number;
  readonly #free: Slot[] = [];

  /**
   * Create an lz4 codec.
   *
   * @param level 1 (default), -1..-64 (faster), or 2..12 (LZ4HC, slower and smaller).
   * @throws {RangeError} When the level is out of range.
   */
  constructor(level = 1) {
    if (!Number.isInteger(level) || level < -64 || level > 12 || level === 0) {
      throw new RangeError(`Cannot use lz4 level ${level}: expected an integer from -64 to 12, not 0`);
    }
    this.level = level;
    lz4();
  }

  /** The codec as `--compress` spells it, e.g. `lz4` or `lz4:9`. */
  get spec(): string {
    return this.level === 1 ? "lz4" : `lz4:${this.level}`;
  }

  /**
   * Compress one chunk.
   *
   * @param src The chunk (at most 2,113,929,216 bytes); it must not change until the promise settles.
   * @returns The lz4 block, or null when it would not be smaller than `src`.
   * @throws {RangeError} When `src` is larger than lz4 accepts.
   */
  async encode(src: Uint8Array): Promise<Uint8Array | null> {
    if (src.length < NONBLOCKING_MIN) return this.encodeNow(src)?.slice() ?? null;
    if (src.length > MAX_INPUT) {
      throw new RangeError(`Cannot compress ${src.length} bytes with lz4: at most ${MAX_INPUT}`);
    }
    const cap = src.length - 1;
    const slot = this.#take(cap);
    try {
      const l = lz4(), srcPtr = Deno.UnsafePointer.of(src);
      const n = this.level >= 2
        ? await l.LZ4_compress_HC_nb(srcPtr, slot.outPtr, src.length, cap, this.level)
        : await l.LZ4_compress_fast_nb(srcPtr, slot.outPtr, src.length, cap, this.#accel);
      return n <= 0 ? null : slot.out.slice(0, n);
    } finally {
      this.#free.push(slot);
    }
  }

  /**
   * {@link encode} on the calling thread, for a chunk under 64 KiB (lib/codecs/codec.ts `INLINE_BYTES`).
   *
   * @param src The chunk.
   * @returns The lz4 block (in the codec's buffer, until its next call), or null when it would not be smaller;
   *   undefined for a larger chunk.
   */
  encodeNow(src: Uint8Array): Uint8Array | null | undefined {
    if (src.length >= NONBLOCKING_MIN) return undefined;
    if (src.length < 2) return null;
    const cap = src.length - 1;
    const slot = this.#take(cap);
    try {
      // Views, not pointers: no pointer object per chunk (see ffi/libc.ts `addressOf`).
      const l = lz4(), s = src as Uint8Array<ArrayBuffer>;
      const n = this.level >= 2
        ? l.LZ4_compress_HC(s, slot.out, src.length, cap, this.level)
        : l.LZ4_compress_fast(s, slot.out, src.length, cap, this.#accel);
      return n <= 0 ? null : slot.out.subarray(0, n);
    } finally {
      this.#free.push(slot);
    }
  }

  /** The fast mode's acceleration: 1 for level 1, `-level` for a negative one. */
  get #accel(): number {
    return this.level === 1 ? 1 : -this.level;
  }

  /** An output buffer of at least `cap` bytes from the free list, or a new one. */
  #take(cap: number): Slot {
    const slot = this.#free.pop();
    if (slot && slot.out.length >= cap) return slot;
    const out = new Uint8Array(cap);
    return { out, outPtr: Deno.UnsafePointer.of(out) };
  }

  /**
   * Decompress one chunk straight into `dst` (a chunk under 64 KiB on the calling thread, see
   * {@link decodeNow}; a larger one on a pool thread).
   *
   * @param src One lz4 block.
   * @param dst Where the bytes go; the block must decode to exactly `dst.length` bytes.
   * @throws {CryoError} When the block is malformed or decodes to another size.
   */
  async decode(src: Uint8Array, dst: Uint8Array): Promise<void> {
    if (this.decodeNow(src, dst)) return;
    const s = Deno.UnsafePointer.of(src), d = Deno.UnsafePointer.of(dst);
    decoded(await lz4().LZ4_decompress_safe_nb(s, d, src.length, dst.length), src, dst);
  }

  /**
   * {@link decode} on the calling thread, without a promise, for a chunk under 64 KiB: the views go to liblz4
   * as they are, with no pointer object per chunk.
   *
   * @param src One lz4 block.
   * @param dst Where the bytes go; the block must decode to exactly `dst.length` bytes.
   * @returns Whether it was decoded (false, nothing done, for a chunk of 64 KiB or more: call {@link decode}).
   * @throws {CryoError} When the block is malformed or decodes to another size.
   */
  decodeNow(src: Uint8Array, dst: Uint8Array): boolean {
    if (src.length > MAX_INPUT || dst.length > MAX_INPUT) {
      throw new CryoError(
        `Cannot decode ${src.length}-byte lz4 chunk into ${dst.length} bytes: at most ${MAX_INPUT}`,
      );
    }
    if (dst.length >= INLINE_BYTES) return false;
    const n = lz4().LZ4_decompress_safe(
      src as Uint8Array<ArrayBuffer>,
      dst as Uint8Array<ArrayBuffer>,
      src.length,
      dst.length,
    );
    decoded(n, src, dst);
    return true;
  }
}

/** Check what `LZ4_decompress_safe` returned for `src` into `dst`. */
function decoded(n: number, src: Uint8Array, dst: Uint8Array): void {
  if (n < 0) {
    throw new CryoError(`Cannot decode ${src.length}-byte lz4 chunk: malformed at input byte ${-n - 1}`);
  }
  if (n !== dst.length) {
    throw new CryoError(`Cannot decode ${src.length}-byte lz4 chunk: ${n} bytes, expected ${dst.length}`);
  }
}
