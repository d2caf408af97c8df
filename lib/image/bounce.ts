/**
 * Raw records written into another process through a small buffer: their stored bytes are read from the image
 * with `pread` (many pieces in one helper call) into a buffer that stays in the CPU's cache, then written with
 * `process_vm_writev` ({@link RemoteWriter}), a buffer at a time. On our paravirtualised machines faulting the
 * image's page-cache pages into a mapping costs more than copying them: writing a 1 GiB image into a child's
 * fresh memory took 706-743 ms from a mapping and 272-354 ms through a 1-8 MiB buffer (alternated in one C
 * program).
 *
 * @module
 */

import { addrOf } from "../../ffi/libc.ts";
import type { RemoteWriter } from "./remote.ts";

/** Bytes of the buffer by default (a memory budget's window may make it smaller). */
export const BOUNCE_BYTES = 1 << 20;

/** Pieces read in one helper call. */
const PIECES = 1024;

/**
 * The buffers, by size, kept for this process's next loads: a new one would cost a page fault per page each
 * time. Two loads may share one: a batch is read and written with no `await` between (in {@link flush}).
 */
const kept = new Map<number, Uint8Array<ArrayBuffer>>();

/** Writes raw records into a process through the buffer, a buffer at a time. */
export class BouncedWrites {
  readonly #ops = new BigUint64Array(3 * PIECES);
  readonly #to: bigint[] = [];
  readonly #base: bigint;
  readonly #bytes: number;
  #pieces = 0;
  #filled = 0;

  /**
   * @param readMany Reads the pieces: triples of local address, length and file offset (`readStoredMany`).
   * @param remote Where they are written.
   * @param bytes The buffer's size (default {@link BOUNCE_BYTES}; at least a page).
   */
  constructor(
    readonly readMany: (ops: BigUint64Array, n: number) => void,
    readonly remote: RemoteWriter,
    bytes: number = BOUNCE_BYTES,
  ) {
    this.#bytes = Math.max(4096, bytes);
    let buffer = kept.get(this.#bytes);
    if (!buffer) kept.set(this.#bytes, buffer = new Uint8Array(this.#bytes));
    this.#base = addrOf(Deno.UnsafePointer.of(buffer));
  }

  /**
   * Write `len` bytes stored at `fileOffset` to `addr`, now or at a later {@link flush}.
   *
   * @param addr Remote address.
   * @param fileOffset Where the bytes are in the image.
   * @param len Bytes.
   */
  add(addr: bigint, fileOffset: number, len: number): void {
    for (let off = 0; off < len;) {
      if (this.#filled === this.#bytes || this.#pieces === PIECES) this.flush();
      const n = Math.min(len - off, this.#bytes - this.#filled);
      const i = this.#pieces++;
      this.#ops[3 * i] = this.#base + BigInt(this.#filled);
      this.#ops[3 * i + 1] = BigInt(n);
      this.#ops[3 * i + 2] = BigInt(fileOffset + off);
      this.#to[i] = addr + BigInt(off);
      this.#filled += n;
      off += n;
    }
  }

  /** Read what is pending and write it. */
  flush(): void {
    if (this.#pieces === 0) return;
    this.readMany(this.#ops, this.#pieces);
    for (let i = 0; i < this.#pieces; i++) {
      this.remote.queue(this.#to[i], this.#ops[3 * i], Number(this.#ops[3 * i + 1]));
    }
    this.remote.flush();
    this.#pieces = 0;
    this.#filled = 0;
  }
}
