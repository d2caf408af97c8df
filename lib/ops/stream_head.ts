/**
 * Wait for a streamed image's header block before anything is done to the target: a restore from a pipe
 * freezes the process only once the header (and with it the region table the layout is checked against) has
 * arrived, so a slow or idle writer never keeps the target stopped.
 *
 * @module
 */

import { FIXED_HEADER_LENGTH } from "../image/format.ts";
import { decodeFixedHeader } from "../image/header.ts";
import { ImageError } from "../errors.ts";

/**
 * Read `stream` until its whole header block has arrived (its fixed part checked: magic, version, lengths), and
 * return a byte stream that yields the same bytes from the start.
 *
 * @param stream The image as a byte stream (stdin).
 * @param path The image's name for errors (`"-"`).
 * @param signal Aborts the wait.
 * @returns The whole stream again, header first.
 * @throws {ImageError} When the stream ends before the header's end, or its fixed header is not a cryo image's.
 */
export async function awaitHeader(
  stream: ReadableStream<Uint8Array>,
  path: string,
  signal?: AbortSignal,
): Promise<ReadableStream<Uint8Array>> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let got = 0;
  let need = FIXED_HEADER_LENGTH;
  const onAbort = () => reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    while (got < need) {
      signal?.throwIfAborted();
      const { value, done } = await reader.read();
      signal?.throwIfAborted();
      if (done) {
        throw new ImageError(path, got, `stream ended in the header: ${need - got} more bytes expected`);
      }
      chunks.push(value);
      got += value.length;
      if (need === FIXED_HEADER_LENGTH && got >= FIXED_HEADER_LENGTH) {
        need = decodeFixedHeader(path, concat(chunks, got)).headerLength;
      }
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    throw e;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  reader.releaseLock(); // no read is pending: the rest is read through the byte stream below
  return byteStream(stream, concat(chunks, got), signal);
}

/**
 * `source` again as a byte stream, `head` first: a reader's BYOB reads go straight to `source`'s BYOB reads
 * into the reader's own buffer, so that no chunk is allocated per read (a default reader, or a
 * `TransformStream`, gets a new 64 KiB buffer for every read, garbage that piles up to tens of MiB before the
 * collector frees it: measured, a 512 MiB restore from stdin peaked 40 MiB higher). An abort of `signal` errors
 * the stream at once, even while a read waits for bytes that may never come.
 *
 * @param source The bytes.
 * @param head Bytes already read from it, given first.
 * @param signal Aborts the stream.
 * @returns The byte stream.
 */
export function byteStream(
  source: ReadableStream<Uint8Array>,
  head?: Uint8Array,
  signal?: AbortSignal,
): ReadableStream<Uint8Array> {
  let byob: ReadableStreamBYOBReader | undefined, plain: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    byob = source.getReader({ mode: "byob" });
  } catch {
    plain = source.getReader();
  }
  const onAbort = () => (byob ?? plain)!.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  return new ReadableStream({
    type: "bytes",
    async pull(controller: ReadableByteStreamController) {
      signal?.throwIfAborted();
      if (head) {
        controller.enqueue(head);
        head = undefined;
        return;
      }
      const req = controller.byobRequest;
      const view = req?.view;
      let value: Uint8Array | undefined, done: boolean;
      if (byob && req && view) {
        ({ value, done } = await byob.read(new Uint8Array(view.buffer, view.byteOffset, view.byteLength)));
        signal?.throwIfAborted();
        if (done) { // the reader's buffer comes back empty, once the stream is closed
          signal?.removeEventListener("abort", onAbort);
          controller.close();
          if (value) req.respondWithNewView(value);
          else req.respond(0);
          return;
        }
        req.respondWithNewView(value!);
        return;
      } else {
        ({ value, done } = await (byob ? byob.read(new Uint8Array(1 << 16)) : plain!.read()));
        signal?.throwIfAborted();
        if (value?.length) controller.enqueue(value);
      }
      if (done) {
        signal?.removeEventListener("abort", onAbort);
        controller.close();
        controller.byobRequest?.respond(0); // a pending BYOB read learns of the end
      }
    },
    cancel: (reason) => {
      signal?.removeEventListener("abort", onAbort);
      return (byob ?? plain)!.cancel(reason);
    },
  });
}

function concat(chunks: Uint8Array[], length: number): Uint8Array {
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  chunks.splice(0, chunks.length, out);
  return out;
}
