/**
 * The byte sources the frame reader (lib/image/reader.ts) reads an image from, positional or sequential:
 * - {@link FileSource}: `pread` at any offset of an open file (the loader's `open()`, the verification pass);
 * - {@link MappedSource}: views of a read-only mapping of the whole file;
 * - {@link BytesSource}: bytes already in memory, at their file offset (a streamed image's tail);
 * - `StreamSource` (lib/image/stream_input.ts): a stream read once, front to back.
 *
 * A positional source answers at once (a value, not a promise), so a walk over it does not yield per record.
 * Every read out of bounds is an {@link ImageError} naming the file, the offset and what was being read.
 *
 * @module
 */

import { addrOf, errno, libc, ptrOf, systemError } from "../../ffi/libc.ts";
import { ImageError } from "../errors.ts";
import { checksum, checksumAt, Checksummer } from "./checksum.ts";

/** Where the frame reader gets an image's bytes. */
export interface ByteSource {
  /** The image's name, for errors. */
  readonly path: string;
  /**
   * The bytes `[offset, offset + len)`: a view or a fresh buffer (or `into`, when given and the source copies).
   * A sequential source reads only at the offset it has reached.
   */
  read(offset: number, len: number, what: string, into?: Uint8Array): Uint8Array | Promise<Uint8Array>;
  /** Check that the bytes `[offset, offset + len)` are all zero (consuming them, for a sequential source). */
  zeros(offset: number, len: number, what: string): void | Promise<void>;
  /**
   * XXH3-64 of the bytes `[offset, offset + len)` (consuming them, for a sequential source); a mapping computes
   * it in place, with no view of the bytes.
   */
  checksum(offset: number, len: number, what: string): bigint | Promise<bigint>;
}

/** The {@link ImageError} of a read past the end of a positional source. */
function pastEnd(path: string, offset: number, len: number, what: string, size: number): ImageError {
  return new ImageError(
    path,
    offset,
    `${what} [${offset}, ${offset + len}) lies outside the file (${size} bytes)`,
  );
}

/** Where the first non-zero byte of `b` is, as an error at file offset `at`; undefined when all are zero. */
export function nonZero(path: string, b: Uint8Array, at: number, what: string): ImageError | undefined {
  const i = b.findIndex((x) => x !== 0);
  return i < 0 ? undefined : new ImageError(path, at + i, `non-zero byte in ${what}`);
}

/** Bytes of a {@link FileSource}'s read-ahead window. */
const WINDOW = 1 << 20;

/**
 * Positional reads of an open file with `pread` (copies). Checksums and zero checks read through a window of
 * {@link WINDOW} bytes, refilled with one `pread` when a range leaves it, so that a walk from the front to the
 * back of an image makes one call per MiB however small its records. Copying a page-cache page into a buffer
 * that stays in the CPU's cache is cheaper than mapping it: on our machines XXH3 over a 1 GiB image in the page
 * cache ran at 1.6-1.7 GiB/s through a mapping (released every 16 MiB) and 5.8-6.2 GiB/s through `pread` into a
 * 1 MiB buffer (alternated in one C program).
 */
export class FileSource implements ByteSource {
  #window: Uint8Array<ArrayBuffer> | undefined;
  #windowAt = 0;
  #windowLength = 0;

  /**
   * @param path The file, for errors.
   * @param fd An open descriptor (not closed here).
   * @param size The file's size.
   */
  constructor(readonly path: string, readonly fd: number, readonly size: number) {}

  /** Read `len` bytes at `offset` into a new buffer (or `into`). */
  read(offset: number, len: number, what: string, into: Uint8Array = new Uint8Array(len)): Uint8Array {
    this.#inFile(offset, len, what);
    const b = into.subarray(0, len);
    if (len) this.readInto(addrOf(Deno.UnsafePointer.of(b)), len, offset, what);
    return b;
  }

  /**
   * Read `len` bytes at `offset` into memory at `addr` (which must be writable).
   *
   * @param addr Where to put them.
   * @param len Bytes.
   * @param offset File offset.
   * @param what What they are, for errors.
   */
  readInto(addr: bigint, len: number, offset: number, what: string): void {
    for (let done = 0; done < len;) {
      const n = libc.pread(this.fd, ptrOf(addr + BigInt(done)), BigInt(len - done), BigInt(offset + done));
      if (n < 0n) throw systemError("pread", errno(), `${this.path} at offset ${offset + done}`);
      if (n === 0n) throw new ImageError(this.path, offset + done, `unexpected end of file in the ${what}`);
      done += Number(n);
    }
  }

  /** XXH3-64 of `len` bytes at `offset`, read through the window. */
  checksum(offset: number, len: number, what: string): bigint {
    this.#inFile(offset, len, what);
    if (len <= WINDOW) return checksum(this.#span(offset, len, what));
    using sum = new Checksummer();
    for (let at = offset; at < offset + len; at += WINDOW) {
      const b = this.#span(at, Math.min(WINDOW, offset + len - at), what);
      sum.updateAt(addrOf(Deno.UnsafePointer.of(b)), BigInt(b.length));
    }
    return sum.digest();
  }

  /** Check that `len` bytes at `offset` are zero, read through the window. */
  zeros(offset: number, len: number, what: string): void {
    this.#inFile(offset, len, what);
    for (let at = offset; at < offset + len; at += ZERO_PAGE.length) {
      const n = Math.min(ZERO_PAGE.length, offset + len - at);
      const b = this.#span(at, n, what);
      if (libc.memcmp(Deno.UnsafePointer.of(b), zeroPtr(), BigInt(n)) !== 0) {
        throw nonZero(this.path, b, at, what)!;
      }
    }
  }

  #inFile(offset: number, len: number, what: string): void {
    if (offset < 0 || len < 0 || offset + len > this.size) {
      throw pastEnd(this.path, offset, len, what, this.size);
    }
  }

  /** A view of `[offset, offset + len)` (`len` at most {@link WINDOW}) in the window, refilled when needed. */
  #span(offset: number, len: number, what: string): Uint8Array {
    if (offset < this.#windowAt || offset + len > this.#windowAt + this.#windowLength) {
      this.#window ??= new Uint8Array(WINDOW);
      const n = Math.min(WINDOW, this.size - offset);
      this.readInto(addrOf(Deno.UnsafePointer.of(this.#window)), n, offset, what);
      this.#windowAt = offset;
      this.#windowLength = n;
    }
    const at = offset - this.#windowAt;
    return this.#window!.subarray(at, at + len);
  }
}

const ZERO_PAGE = new Uint8Array(1 << 16);
let zeroPtr_: Deno.PointerValue | undefined;
/** Its address, taken on first use (importing this module needs no `--allow-ffi`). */
const zeroPtr = (): Deno.PointerValue => (zeroPtr_ ??= Deno.UnsafePointer.of(ZERO_PAGE));

/** Positional, zero-copy views of a read-only mapping of a whole file. */
export class MappedSource implements ByteSource {
  #bytes: Uint8Array | undefined;
  /**
   * @param path The file, for errors.
   * @param base The mapping's address (it must stay mapped while the source is used).
   * @param size The file's size.
   */
  constructor(readonly path: string, readonly base: bigint, readonly size: number) {}

  /** A view of `len` bytes at `offset` (valid while the mapping is). */
  read(offset: number, len: number, what: string): Uint8Array {
    if (offset < 0 || len < 0 || offset + len > this.size) {
      throw pastEnd(this.path, offset, len, what, this.size);
    }
    if (len === 0) return new Uint8Array(0);
    // Views of one buffer over the whole mapping: an ArrayBuffer per read (`getArrayBuffer`) outlived V8's
    // scavenges, and a decode of an image of one-page records grew the young generation with them.
    this.#bytes ??= new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(this.base)!, this.size));
    return this.#bytes.subarray(offset, offset + len);
  }

  /** XXH3-64 of `len` bytes at `offset`, computed in the mapping (no view). */
  checksum(offset: number, len: number, what: string): bigint {
    if (offset < 0 || len < 0 || offset + len > this.size) {
      throw pastEnd(this.path, offset, len, what, this.size);
    }
    return checksumAt(this.base + BigInt(offset), BigInt(len));
  }

  /** Check that `len` bytes at `offset` are zero (a `memcmp` against a zero page, no view per page). */
  zeros(offset: number, len: number, what: string): void {
    if (offset < 0 || len < 0 || offset + len > this.size) {
      throw pastEnd(this.path, offset, len, what, this.size);
    }
    for (let at = offset; at < offset + len; at += ZERO_PAGE.length) {
      const n = Math.min(ZERO_PAGE.length, offset + len - at);
      if (libc.memcmp(ptrOf(this.base + BigInt(at)), zeroPtr(), BigInt(n)) !== 0) {
        throw nonZero(this.path, this.read(at, n, what), at, what)!;
      }
    }
  }
}

/** Positional views of bytes already in memory, which lie at `offset` in the image. */
export class BytesSource implements ByteSource {
  /**
   * @param path The image, for errors.
   * @param bytes The bytes.
   * @param offset Their offset in the image.
   */
  constructor(readonly path: string, readonly bytes: Uint8Array, readonly offset: number) {}

  /** A view of `len` bytes at file offset `offset`. */
  read(offset: number, len: number, what: string): Uint8Array {
    const at = offset - this.offset;
    if (at < 0 || len < 0 || at + len > this.bytes.length) {
      throw new ImageError(
        this.path,
        offset,
        `${what} [${offset}, ${offset + len}) lies outside [${this.offset}, ${
          this.offset + this.bytes.length
        })`,
      );
    }
    return this.bytes.subarray(at, at + len);
  }

  /** XXH3-64 of `len` bytes at `offset`. */
  checksum(offset: number, len: number, what: string): bigint {
    return checksum(this.read(offset, len, what));
  }

  /** Check that `len` bytes at `offset` are zero. */
  zeros(offset: number, len: number, what: string): void {
    const e = nonZero(this.path, this.read(offset, len, what), offset, what);
    if (e) throw e;
  }
}
