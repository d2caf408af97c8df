/**
 * Exact, offset-tracking reads from a byte stream (a pipe, stdin, a file read sequentially) for the streaming
 * reader. A stream that ends early is an {@link ImageError} naming the offset and what was being read.
 *
 * @module
 */

import { ImageError } from "../errors.ts";

/** Bytes read from a byte stream at once, into one buffer that is reused (no garbage per read). */
const WINDOW = 1 << 16;

/**
 * Exact reads from a byte stream, tracking the offset; a short stream is an {@link ImageError}. A byte stream
 * (a file, stdin) is read with a BYOB reader into one reused buffer, so reading an image of any size makes no
 * garbage for the collector to fall behind on; another stream with its default reader.
 */
export class Input {
  readonly #reader?: ReadableStreamDefaultReader<Uint8Array>;
  readonly #byob?: ReadableStreamBYOBReader;
  #buf: Uint8Array = new Uint8Array(0);
  #spare: ArrayBuffer = new ArrayBuffer(WINDOW);
  #at = 0;
  offset = 0;
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
  /** Exactly `n` bytes (a fresh buffer, or `into`). */
  async read(n: number, what: string, into: Uint8Array = new Uint8Array(n)): Promise<Uint8Array> {
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
  /** Consume `n` bytes that must be zero. */
  async zeros(n: number, what: string): Promise<void> {
    const chunk = new Uint8Array(Math.min(n, 1 << 16));
    for (let left = n; left > 0;) {
      const k = Math.min(left, chunk.length);
      const at = this.offset;
      const b = await this.read(k, what, chunk.subarray(0, k));
      const i = b.findIndex((x) => x !== 0);
      if (i >= 0) throw new ImageError(this.path, at + i, `non-zero byte in ${what}`);
      left -= k;
    }
  }
  /** Whether the stream has ended (no byte left). */
  async atEnd(): Promise<boolean> {
    while (this.#at === this.#buf.length) if (!await this.#fill()) return true;
    return false;
  }
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
