/**
 * Exact, offset-tracking reads from a byte stream (a pipe, stdin, a file read sequentially) for the streaming
 * reader. A stream that ends early is an {@link ImageError} naming the offset and what was being read.
 *
 * @module
 */

import { ImageError } from "../errors.ts";

/** Exact reads from a byte stream, tracking the offset; a short stream is an {@link ImageError}. */
export class Input {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #at = 0;
  offset = 0;
  constructor(stream: ReadableStream<Uint8Array>, readonly path: string) {
    this.#reader = stream.getReader();
  }
  /** Exactly `n` bytes (a fresh buffer, or `into`). */
  async read(n: number, what: string, into = new Uint8Array(n)): Promise<Uint8Array> {
    let got = 0;
    while (got < n) {
      if (this.#at === this.#buf.length) {
        const { value, done } = await this.#reader.read();
        if (done) {
          throw new ImageError(
            this.path,
            this.offset,
            `stream ended in the ${what}: ${n - got} more bytes expected`,
          );
        }
        this.#buf = value;
        this.#at = 0;
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
    while (this.#at === this.#buf.length) {
      const { value, done } = await this.#reader.read();
      if (done) return true;
      this.#buf = value;
      this.#at = 0;
    }
    return false;
  }
  async close(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
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
