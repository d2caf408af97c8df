/**
 * The cursor and writer of the image format's blocks: bounds-checked little-endian reads that throw
 * {@link ImageError} naming the file and offset, and little-endian appends into a growing buffer.
 *
 * @module
 */

import { ImageError } from "../errors.ts";

/** A bounds-checked little-endian reader over bytes that start at file offset `base`. */
export class Cursor {
  /** A little-endian view of the bytes. */
  readonly view: DataView;
  /** The read position, relative to the bytes. */
  pos = 0;
  /** Make a cursor over `bytes`, which lie at `base` in the file `path`. */
  constructor(readonly path: string, readonly bytes: Uint8Array, readonly base = 0) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  /** Throw unless `n` more bytes are available. */
  need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length) {
      throw new ImageError(
        this.path,
        this.base + this.pos,
        `${what} runs past its block (${n} bytes needed)`,
      );
    }
  }
  /** An ImageError at the current position. */
  error(message: string, at = this.pos): ImageError {
    return new ImageError(this.path, this.base + at, message);
  }
  /** Read a u8. */
  u8(): number {
    this.need(1, "u8");
    return this.view.getUint8(this.pos++);
  }
  /** Read a little-endian u16. */
  u16(): number {
    this.need(2, "u16");
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  /** Read a little-endian u32. */
  u32(): number {
    this.need(4, "u32");
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** Read a little-endian u64. */
  u64(): bigint {
    this.need(8, "u64");
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }
  /** A u64 that must fit a JS number (offsets and lengths). */
  size(what: string): number {
    const at = this.pos;
    const v = this.u64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw this.error(`${what} ${v} is too large`, at);
    return Number(v);
  }
  /** Read `n` bytes (a view, not a copy). */
  bytesOf(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  /** Skip zero padding up to a multiple of 8, checking it is zero. */
  pad8(): void {
    while (this.pos % 8 !== 0) {
      if (this.u8() !== 0) throw this.error("non-zero padding", this.pos - 1);
    }
  }
}

/** A little-endian writer into a growing buffer. */
export class Writer {
  #buf = new Uint8Array(256);
  #view = new DataView(this.#buf.buffer);
  /** The write position. */
  pos = 0;
  #grow(n: number): void {
    if (this.pos + n <= this.#buf.length) return;
    const next = new Uint8Array(Math.max(this.#buf.length * 2, this.pos + n));
    next.set(this.#buf);
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }
  /** Append a u8. */
  u8(v: number): void {
    this.#grow(1);
    this.#view.setUint8(this.pos++, v);
  }
  /** Append a little-endian u16. */
  u16(v: number): void {
    this.#grow(2);
    this.#view.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  /** Append a little-endian u32. */
  u32(v: number): void {
    this.#grow(4);
    this.#view.setUint32(this.pos, v, true);
    this.pos += 4;
  }
  /** Append a little-endian u64. */
  u64(v: bigint | number): void {
    this.#grow(8);
    this.#view.setBigUint64(this.pos, BigInt(v), true);
    this.pos += 8;
  }
  /** Append bytes. */
  bytes(b: Uint8Array): void {
    this.#grow(b.length);
    this.#buf.set(b, this.pos);
    this.pos += b.length;
  }
  /** Append zeros up to a multiple of 8. */
  pad8(): void {
    while (this.pos % 8 !== 0) this.u8(0);
  }
  /** The bytes written so far (a copy). */
  done(): Uint8Array<ArrayBuffer> {
    return this.#buf.slice(0, this.pos);
  }
}

/**
 * The bytes of `parts`, one after another, in a new buffer.
 *
 * @param parts The pieces.
 * @returns Their concatenation.
 */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
