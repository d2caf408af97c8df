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
  let head: Uint8Array | undefined = concat(chunks, got);
  return new ReadableStream({
    type: "bytes",
    async pull(controller: ReadableByteStreamController) {
      if (head) {
        controller.enqueue(head);
        head = undefined;
        return;
      }
      const { value, done } = await reader.read();
      if (done) {
        controller.close();
        controller.byobRequest?.respond(0); // a pending BYOB read learns of the end
      } else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
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
