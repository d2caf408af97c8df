/**
 * Bytes a streamed image's reader must keep until the image's end, and a stream cannot be read twice: the
 * holes (zeroed only once the tail is checked) and an encrypted image's frame tables (its metadata MAC covers
 * them; the writer of an encrypted image keeps its tables here too, for the same MAC). They are kept in memory
 * up to {@link SPILL_BYTES} and past that in an unnamed scratch file, and read back a piece at a time. The stream reader held every record as an object (about 160 bytes each, and its
 * frames' tables besides): a streamed restore of an image of half a million records peaked at 326 MiB.
 *
 * @module
 */

import { libc, transferAll } from "../../ffi/libc.ts";
import { scratchFile } from "./tempfile.ts";

/**
 * Bytes kept in memory before they move to a scratch file: a streamed verify of an encrypted image of 524,288
 * records, whose two spools both pass it, peaked at 113 MiB with 4 MiB and 106 MiB with 1 MiB.
 */
export const SPILL_BYTES = 1 << 20;

/** Bytes appended, kept in memory or (past a size) in an unnamed scratch file, read back at their offsets. */
export class Spool implements Disposable {
  readonly #dir: string;
  readonly #spill: number;
  #mem: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  #length = 0;
  #fd = -1;

  /**
   * @param what What is kept, for errors.
   * @param dir Where the scratch file goes (default `$TMPDIR`, else `/tmp`).
   * @param spill Bytes kept in memory before the scratch file is used.
   */
  constructor(readonly what: string, dir?: string, spill: number = SPILL_BYTES) {
    this.#dir = dir ?? (Deno.env.get("TMPDIR") || "/tmp");
    this.#spill = spill;
  }

  /** Bytes kept. */
  get length(): number {
    return this.#length;
  }

  /** Whether the bytes have moved to a scratch file. */
  get spilled(): boolean {
    return this.#fd >= 0;
  }

  /**
   * Keep `bytes` (copied) after those kept before.
   *
   * @param bytes The bytes.
   */
  append(bytes: Uint8Array): void {
    if (this.#fd < 0 && this.#length + bytes.length > this.#spill) this.#toFile();
    if (this.#fd >= 0) {
      this.#pwrite(bytes, this.#length);
    } else {
      if (this.#mem.length < this.#length + bytes.length) {
        const want = Math.max(this.#length + bytes.length, 2 * this.#mem.length, 1 << 16);
        const grown = new Uint8Array(Math.min(this.#spill, want));
        grown.set(this.#mem.subarray(0, this.#length));
        this.#mem = grown;
      }
      this.#mem.set(bytes, this.#length);
    }
    this.#length += bytes.length;
  }

  /**
   * The bytes `[at, at + len)` of those kept, into `into` when given.
   *
   * @param at Where they start.
   * @param len How many.
   * @param into A buffer of at least `len` bytes.
   * @returns A copy (a view of `into`).
   * @throws {RangeError} When they were not all kept.
   */
  read(at: number, len: number, into: Uint8Array = new Uint8Array(len)): Uint8Array {
    if (at < 0 || len < 0 || at + len > this.#length) {
      throw new RangeError(
        `Cannot read [${at}, ${at + len}) of the ${this.what}: ${this.#length} bytes kept`,
      );
    }
    const b = into.subarray(0, len);
    if (len === 0) return b;
    if (this.#fd < 0) {
      b.set(this.#mem.subarray(at, at + len));
      return b;
    }
    transferAll("pread", this.#fd, b, at, `the ${this.what} kept`);
    return b;
  }

  /** Free the memory and close the scratch file (idempotent). */
  close(): void {
    this.#mem = new Uint8Array(0);
    if (this.#fd >= 0) libc.close(this.#fd);
    this.#fd = -1;
  }

  /** {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #pwrite(b: Uint8Array, at: number): void {
    transferAll("pwrite", this.#fd, b, at, `the ${this.what}`);
  }

  #toFile(): void {
    this.#fd = scratchFile(this.#dir);
    this.#pwrite(this.#mem.subarray(0, this.#length), 0);
    this.#mem = new Uint8Array(0);
  }
}
