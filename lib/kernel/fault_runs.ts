/**
 * The runs a fault server (lib/kernel/fault_server.ts `fromFile`) serves from a file: `(address, length, file
 * offset)` triples, 24 bytes each, in address order, written to a file (an unnamed scratch file) in blocks of
 * {@link BLOCK_RUNS}; this process keeps the first address of each block (8 bytes per 128 runs) and the block
 * being written. The native server reads a block with `pread` when a fault or the fill needs it. A lazy wake of
 * an image of half a million one-page records kept an object, a buffer view and a map entry per record (hundreds
 * of MiB); a table of its 262,144 runs in memory would still be 6 MiB, and grow with the image.
 *
 * @module
 */

import { hex } from "../hex.ts";
import { close, PAGE_SIZE, transferAll } from "../../ffi/libc.ts";

/** Runs per block of the table file; must equal `FS_BLOCK_RUNS` in ffi/helper/fault_server.c. */
export const BLOCK_RUNS = 128;
const RUN_BYTES = 24;

/** A run of the table: `length` bytes at `start`, found at `offset` in the served file. */
export interface FaultRunEntry {
  /** First address. */
  start: bigint;
  /** Bytes. */
  length: number;
  /** Where its bytes start in the served file. */
  offset: number;
}

/** Runs served from a file, in address order: appended, then {@link finish}ed, then read by the fault server. */
export class FaultRunTable implements Disposable {
  readonly #fd: number;
  #dir = new BigUint64Array(64);
  readonly #block = new BigUint64Array(3 * BLOCK_RUNS);
  #inBlock = 0;
  #written = 0; // runs in the file
  #pending: [bigint, bigint, bigint] | undefined; // the last run, which the next may continue
  #end = 0n;
  #finished = false;
  #closed = false;

  /**
   * An empty table.
   *
   * @param fd An empty file open for reading and writing, such as an unnamed scratch file
   *   (lib/image/tempfile.ts `scratchFile`): the table takes it over, and closes it.
   */
  constructor(fd: number) {
    this.#fd = fd;
  }

  /** How many runs there are (once finished). */
  get length(): number {
    return this.#written;
  }

  /** The table file (once finished): `length` triples of unsigned 64-bit little-endian words. */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Add a run after the last one. A run that continues the last one in memory and in the file is merged into it.
   *
   * @param start First address, page aligned.
   * @param length Bytes, page aligned, more than zero.
   * @param offset Where its bytes start in the file.
   * @throws {RangeError} When the run is misaligned, or does not start after the last one ends.
   */
  append(start: bigint, length: number, offset: number): void {
    if (this.#finished) throw new TypeError("Cannot add a run to a finished table");
    const page = BigInt(PAGE_SIZE);
    if (start % page !== 0n || length % PAGE_SIZE !== 0 || length <= 0) {
      throw new RangeError(`Cannot serve run ${hex(start)}+${length}: not page aligned`);
    }
    const p = this.#pending;
    if (p && start < this.#end) {
      throw new RangeError(`Cannot serve run ${hex(start)}: it does not start after ${hex(this.#end)}`);
    }
    this.#end = start + BigInt(length);
    if (p && start === p[0] + p[1] && BigInt(offset) === p[2] + p[1]) {
      p[1] += BigInt(length);
      return;
    }
    if (p) this.#put(p);
    this.#pending = [start, BigInt(length), BigInt(offset)];
  }

  /**
   * Write the last run and the last block: the table is then complete, and read only.
   *
   * @returns The first address of each block of {@link BLOCK_RUNS} runs (keep it while the server runs).
   */
  finish(): BigUint64Array {
    if (!this.#finished) {
      if (this.#pending) this.#put(this.#pending);
      this.#pending = undefined;
      this.#flush();
      this.#finished = true;
    }
    return this.#dir.subarray(0, Math.ceil(this.#written / BLOCK_RUNS));
  }

  /**
   * The run that holds `address` (the table finished).
   *
   * @param address An address.
   * @returns The run, or undefined when no run holds it.
   */
  find(address: bigint): FaultRunEntry | undefined {
    const dir = this.finish();
    let lo = 0, hi = dir.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (dir[mid] <= address) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return undefined;
    const b = lo - 1, n = Math.min(BLOCK_RUNS, this.#written - b * BLOCK_RUNS);
    const words = new BigUint64Array(3 * n);
    this.#pread(words, b * BLOCK_RUNS * RUN_BYTES);
    for (let i = 0; i < n; i++) {
      const start = words[3 * i], length = words[3 * i + 1];
      if (start <= address && address < start + length) {
        return { start, length: Number(length), offset: Number(words[3 * i + 2]) };
      }
    }
    return undefined;
  }

  /** Close the table file. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#fd);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #put(run: [bigint, bigint, bigint]): void {
    if (this.#inBlock === 0) {
      const b = this.#written / BLOCK_RUNS;
      if (b >= this.#dir.length) {
        const grown = new BigUint64Array(2 * this.#dir.length);
        grown.set(this.#dir);
        this.#dir = grown;
      }
      this.#dir[b] = run[0];
    }
    this.#block.set(run, 3 * this.#inBlock);
    this.#inBlock++;
    this.#written++;
    if (this.#inBlock === BLOCK_RUNS) this.#flush();
  }

  /** Write the block being filled at its place in the file. */
  #flush(): void {
    if (this.#inBlock === 0) return;
    const first = this.#written - this.#inBlock;
    const b = new Uint8Array(this.#block.buffer, 0, this.#inBlock * RUN_BYTES);
    transferAll("pwrite", this.#fd, b, first * RUN_BYTES, "the fault server's table of runs");
    this.#inBlock = 0;
  }

  #pread(words: BigUint64Array, offset: number): void {
    transferAll("pread", this.#fd, new Uint8Array(words.buffer), offset, "the fault server's table of runs");
  }
}
