/**
 * The sequential back end of the frame reader (lib/image/reader.ts, lib/image/byte_source.ts): exact,
 * offset-tracking reads from a byte stream (a pipe, stdin, a file read sequentially). A stream that ends early
 * is an {@link ImageError} naming the offset and what was being read.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { type ByteSource, nonZero } from "./byte_source.ts";
import { checksum } from "./checksum.ts";

/**
 * Bytes read from a byte stream at once, into one buffer that is reused (no garbage per read). Each read of a
 * file or stdin is an async op of Deno's (a blocking-pool call, tens of microseconds here), so 64 KiB reads cost
 * about 16,000 of them per GiB. A streamed CLI restore of 1 GiB from a file on stdin, alternated in one run:
 * 1433-1658 ms with 64 KiB reads, 901-1341 ms with 1 MiB.
 */
const WINDOW = 1 << 20;
/** Bytes of padding checked at a time. */
const ZERO_SCRATCH = 1 << 16;

/**
 * Exact reads from a byte stream, tracking the offset; a short stream is an {@link ImageError}. A byte stream
 * (a file, stdin) is read with a BYOB reader into one reused buffer, so reading an image of any size makes no
 * garbage for the collector to fall behind on; another stream with its default reader.
 */
export class StreamSource implements ByteSource {
  readonly #reader?: ReadableStreamDefaultReader<Uint8Array>;
  readonly #byob?: ReadableStreamBYOBReader;
  #buf: Uint8Array = new Uint8Array(0);
  #spare: ArrayBuffer = new ArrayBuffer(WINDOW);
  readonly #zeroScratch = new Uint8Array(ZERO_SCRATCH);
  #at = 0;
  /** The offset the stream has reached (bytes consumed). */
  offset = 0;
  /** Read `stream`, named `path` in errors. */
  constructor(stream: ReadableStream<Uint8Array>, readonly path: string) {
    try {
      this.#byob = stream.getReader({ mode: "byob" });
    } catch {
      this.#reader = stream.getReader();
    }
  }
  /** The next piece of the stream into `#buf`; false at its end. */
  async #fill(): Promise<boolean> {
    if (this.#byob) {
      // #buf has been consumed: its buffer (or the first one) takes the next read.
      const { value, done } = await this.#byob.read(new Uint8Array(this.#spare));
      if (done || !value) return false;
      this.#buf = value;
      this.#spare = value.buffer as ArrayBuffer;
    } else {
      const { value, done } = await this.#reader!.read();
      if (done) return false;
      this.#buf = value;
    }
    this.#at = 0;
    return true;
  }
  /** The {@link ImageError} of a read that is not where the stream stands. */
  #notHere(offset: number, what: string): ImageError {
    return new ImageError(this.path, this.offset, `expected the ${what} at offset ${offset} here`);
  }
  /**
   * Exactly `n` bytes at `offset`, which must be where the stream stands (a fresh buffer, or `into`): at once
   * when they have been read from the stream already (a walk of many small records makes no promise per record),
   * else once they have.
   */
  read(offset: number, n: number, what: string, into?: Uint8Array): Uint8Array | Promise<Uint8Array> {
    if (offset !== this.offset) return Promise.reject(this.#notHere(offset, what));
    if (this.#buf.length - this.#at < n) return this.next(n, what, into);
    // No view of `into` when it is the size asked (a ring of chunk buffers): a walk of one-page records made
    // several views per record, and their garbage made V8 grow its young generation.
    const b = into === undefined ? new Uint8Array(n) : into.length === n ? into : into.subarray(0, n);
    b.set(this.#buf.subarray(this.#at, this.#at + n));
    this.#at += n;
    this.offset += n;
    return b;
  }
  /** Exactly the next `n` bytes (a fresh buffer, or `into`). */
  async next(n: number, what: string, into: Uint8Array = new Uint8Array(n)): Promise<Uint8Array> {
    into = into.subarray(0, n);
    let got = 0;
    while (got < n) {
      if (this.#at === this.#buf.length && !await this.#fill()) {
        throw new ImageError(
          this.path,
          this.offset,
          `stream ended in the ${what}: ${n - got} more bytes expected`,
        );
      }
      const k = Math.min(n - got, this.#buf.length - this.#at);
      into.set(this.#buf.subarray(this.#at, this.#at + k), got);
      this.#at += k;
      got += k;
      this.offset += k;
    }
    return into;
  }
  /** XXH3-64 of the `n` bytes at `offset` (where the stream stands), consumed. */
  async checksum(offset: number, n: number, what: string): Promise<bigint> {
    return checksum(await this.read(offset, n, what));
  }
  /** Consume `n` bytes at `offset` (where the stream stands) that must be zero (at once when already read). */
  zeros(offset: number, n: number, what: string): void | Promise<void> {
    if (offset !== this.offset) throw this.#notHere(offset, what);
    if (n > this.#buf.length - this.#at) return this.#zeros(n, what);
    for (let i = 0; i < n; i++) { // a record's few bytes of padding: no view of them
      if (this.#buf[this.#at + i] !== 0) {
        throw new ImageError(this.path, offset + i, `non-zero byte in ${what}`);
      }
    }
    this.#at += n;
    this.offset += n;
  }
  async #zeros(n: number, what: string): Promise<void> {
    const chunk = this.#zeroScratch; // one buffer for every padding: a stream of many frames makes no garbage
    for (let left = n; left > 0;) {
      const k = Math.min(left, chunk.length);
      const at = this.offset;
      const e = nonZero(this.path, await this.next(k, what, chunk), at, what);
      if (e) throw e;
      left -= k;
    }
  }
  /** Whether the stream has ended (no byte left). */
  async atEnd(): Promise<boolean> {
    while (this.#at === this.#buf.length) if (!await this.#fill()) return true;
    return false;
  }
  /** Cancel the stream. */
  async close(): Promise<void> {
    await (this.#byob ?? this.#reader)!.cancel().catch(() => {});
  }
}
/**
 * Open an image file as a byte stream for `loadStream`/`verifyStream`; `"-"` is stdin.
 *
 * @param path The image file, or `"-"`.
 * @returns The stream (read sequentially, once).
 */
export async function openInput(path: string): Promise<ReadableStream<Uint8Array>> {
  if (path === "-") return Deno.stdin.readable;
  return (await Deno.open(path, { read: true })).readable;
}
