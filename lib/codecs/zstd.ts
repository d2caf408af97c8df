/**
 * The zstd chunk codec over the system's libzstd. Each call in flight holds its own compression context and
 * output buffer (taken from a free list, created on demand), and large chunks run `nonblocking` on a pool
 * thread, so N encodes in flight use N cores. Incompressible chunks are detected by giving zstd one byte less
 * than the input as capacity: it stops as soon as the output cannot be smaller.
 *
 * @module
 */

import { type Codec, INLINE_BYTES } from "./codec.ts";
import { CryoError } from "../errors.ts";
import { zstd, ZSTD_ERROR_DST_SIZE_TOO_SMALL, zstdErrorCode, zstdErrorName } from "../../ffi/zstd.ts";

/** Chunks at least this large are (de)compressed on a pool thread; smaller ones inline. */
const NONBLOCKING_MIN = INLINE_BYTES;

/** A view as the FFI's `buffer` type wants it (no copy). */
function view(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}

interface Slot {
  ctx: Deno.PointerValue;
  out: Uint8Array<ArrayBuffer>;
  outPtr: Deno.PointerValue;
}

interface Contexts {
  c: Deno.PointerValue[];
  d: Deno.PointerValue[];
}

function freeContexts(ctx: Contexts): void {
  const z = zstd();
  for (const p of ctx.c.splice(0)) z.ZSTD_freeCCtx(p);
  for (const p of ctx.d.splice(0)) z.ZSTD_freeDCtx(p);
}

const registry = new FinalizationRegistry<Contexts>(freeContexts);

/** The zstd codec (image codec id 1). Level 1 is fastest; 3 is zstd's default; up to 22. */
export class ZstdCodec implements Codec {
  /** Image codec id. */
  readonly id = 1;
  /** `"zstd"`. */
  readonly name = "zstd";
  /** The compression level. */
  readonly level: number;
  readonly #cfree: Slot[] = [];
  readonly #dfree: Deno.PointerValue[] = [];
  readonly #all: Contexts = { c: [], d: [] };
  #closed = false;

  /**
   * Create a zstd codec.
   *
   * @param level Compression level, from `ZSTD_minCLevel()` (negative: faster) to `ZSTD_maxCLevel()` (22).
   * @throws {RangeError} When the level is out of range.
   */
  constructor(level = 3) {
    const z = zstd();
    const min = z.ZSTD_minCLevel(), max = z.ZSTD_maxCLevel();
    if (!Number.isInteger(level) || level < min || level > max || level === 0) {
      throw new RangeError(
        `Cannot use zstd level ${level}: expected an integer from ${min} to ${max}, not 0`,
      );
    }
    this.level = level;
    registry.register(this, this.#all, this);
  }

  /** The codec as `--compress` spells it, e.g. `zstd:3`. */
  get spec(): string {
    return `zstd:${this.level}`;
  }

  /**
   * Compress one chunk.
   *
   * @param src The chunk; it must not change until the promise settles.
   * @returns The zstd frame, or null when it would not be smaller than `src`.
   * @throws {CryoError} When libzstd reports an error other than "does not fit".
   */
  async encode(src: Uint8Array): Promise<Uint8Array | null> {
    if (src.length < NONBLOCKING_MIN) return this.encodeNow(src)?.slice() ?? null;
    const slot = this.#takeC(src.length - 1);
    try {
      const ret = await zstd().ZSTD_compressCCtx_nb(...this.#args(slot, src), this.level);
      return this.#encoded(ret, src, slot)?.slice() ?? null;
    } finally {
      this.#give(slot);
    }
  }

  /**
   * {@link encode} on the calling thread, for a chunk under 64 KiB (lib/codecs/codec.ts `INLINE_BYTES`).
   *
   * @param src The chunk.
   * @returns The zstd frame (in the codec's buffer, until its next call), or null when it would not be smaller;
   *   undefined for a larger chunk.
   * @throws {CryoError} When libzstd reports an error other than "does not fit".
   */
  encodeNow(src: Uint8Array): Uint8Array | null | undefined {
    if (src.length >= NONBLOCKING_MIN) return undefined;
    if (src.length < 2) return null;
    const slot = this.#takeC(src.length - 1);
    try {
      // Views, not pointers: no pointer object per chunk (see ffi/libc.ts `addressOf`).
      const z = zstd(), n = BigInt(src.length);
      const ret = z.ZSTD_compressCCtx(slot.ctx, slot.out, n - 1n, view(src), n, this.level);
      return this.#encoded(ret, src, slot);
    } finally {
      this.#give(slot);
    }
  }

  /** The arguments of a compression of `src` into `slot` (capacity one byte less than `src`), but the level. */
  #args(slot: Slot, src: Uint8Array) {
    return [
      slot.ctx,
      slot.outPtr,
      BigInt(src.length - 1),
      Deno.UnsafePointer.of(src),
      BigInt(src.length),
    ] as const;
  }

  /** What a compression of `src` into `slot` that returned `ret` gives: its frame (a view), or null. */
  #encoded(ret: number | bigint, src: Uint8Array, slot: Slot): Uint8Array | null {
    if (zstd().ZSTD_isError(BigInt(ret))) {
      if (zstdErrorCode(ret) === ZSTD_ERROR_DST_SIZE_TOO_SMALL) return null;
      throw new CryoError(`Cannot compress ${src.length} bytes with zstd: ${zstdErrorName(ret)}`);
    }
    return slot.out.subarray(0, Number(ret));
  }

  /**
   * Decompress one chunk straight into `dst` (a chunk under 64 KiB on the calling thread, see
   * {@link decodeNow}; a larger one on a pool thread).
   *
   * @param src One zstd frame.
   * @param dst Where the bytes go; the frame must decode to exactly `dst.length` bytes.
   * @throws {CryoError} When the frame is corrupt or decodes to another size.
   */
  async decode(src: Uint8Array, dst: Uint8Array): Promise<void> {
    if (this.decodeNow(src, dst)) return;
    const ctx = this.#takeD();
    try {
      const s = Deno.UnsafePointer.of(src), d = Deno.UnsafePointer.of(dst);
      this.#decoded(
        await zstd().ZSTD_decompressDCtx_nb(ctx, d, BigInt(dst.length), s, BigInt(src.length)),
        src,
        dst,
      );
    } finally {
      this.#giveD(ctx);
    }
  }

  /**
   * {@link decode} on the calling thread, without a promise, for a chunk under 64 KiB: the views go to libzstd
   * as they are, with no pointer object per chunk (an image of one-page records is decoded with no garbage per
   * record that outlives it).
   *
   * @param src One zstd frame.
   * @param dst Where the bytes go; the frame must decode to exactly `dst.length` bytes.
   * @returns Whether it was decoded (false, nothing done, for a chunk of 64 KiB or more: call {@link decode}).
   * @throws {CryoError} When the frame is corrupt or decodes to another size.
   */
  decodeNow(src: Uint8Array, dst: Uint8Array): boolean {
    if (dst.length >= INLINE_BYTES) return false;
    const ctx = this.#takeD();
    try {
      const ret = zstd().ZSTD_decompressDCtx(
        ctx,
        view(dst),
        BigInt(dst.length),
        view(src),
        BigInt(src.length),
      );
      this.#decoded(ret, src, dst);
      return true;
    } finally {
      this.#giveD(ctx);
    }
  }

  /** Check what `ZSTD_decompressDCtx` returned for `src` into `dst`. */
  #decoded(ret: number | bigint, src: Uint8Array, dst: Uint8Array): void {
    const z = zstd();
    if (z.ZSTD_isError(BigInt(ret))) {
      throw new CryoError(`Cannot decode ${src.length}-byte zstd chunk: ${zstdErrorName(ret)}`);
    }
    if (Number(ret) !== dst.length) {
      throw new CryoError(
        `Cannot decode ${src.length}-byte zstd chunk: ${ret} bytes, expected ${dst.length}`,
      );
    }
  }

  #takeD(): Deno.PointerValue {
    if (this.#closed) throw new CryoError("Cannot decode with zstd: the codec is closed");
    return this.#dfree.pop() ?? this.#newD();
  }

  #giveD(ctx: Deno.PointerValue): void {
    if (!this.#closed) return void this.#dfree.push(ctx);
    zstd().ZSTD_freeDCtx(ctx);
    this.#forget(this.#all.d, ctx);
  }

  /** Free the native contexts. Idempotent; calls in flight finish first and free theirs. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    registry.unregister(this);
    const z = zstd();
    for (const s of this.#cfree.splice(0)) {
      z.ZSTD_freeCCtx(s.ctx);
      this.#forget(this.#all.c, s.ctx);
    }
    for (const d of this.#dfree.splice(0)) {
      z.ZSTD_freeDCtx(d);
      this.#forget(this.#all.d, d);
    }
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #takeC(capacity: number): Slot {
    if (this.#closed) throw new CryoError("Cannot encode with zstd: the codec is closed");
    const slot = this.#cfree.pop();
    if (slot && slot.out.length >= capacity) return slot;
    const ctx = slot?.ctx ?? zstd().ZSTD_createCCtx();
    if (ctx === null) throw new CryoError("Cannot create a zstd compression context: out of memory");
    if (!slot) this.#all.c.push(ctx);
    const out = new Uint8Array(Math.max(capacity, 1));
    return { ctx, out, outPtr: Deno.UnsafePointer.of(out) };
  }

  #newD(): Deno.PointerValue {
    const ctx = zstd().ZSTD_createDCtx();
    if (ctx === null) throw new CryoError("Cannot create a zstd decompression context: out of memory");
    this.#all.d.push(ctx);
    return ctx;
  }

  #give(slot: Slot): void {
    if (!this.#closed) return void this.#cfree.push(slot);
    zstd().ZSTD_freeCCtx(slot.ctx);
    this.#forget(this.#all.c, slot.ctx);
  }

  #forget(list: Deno.PointerValue[], p: Deno.PointerValue): void {
    const i = list.indexOf(p);
    if (i >= 0) list.splice(i, 1);
  }
}
