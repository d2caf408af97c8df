/**
 * The write queue of an image being written: iovecs of the bytes to append (merged when contiguous, zero padding
 * from one shared page), written now with `writev` (`drain()`) or behind, on a pool thread, after the writes
 * already in flight (`writeBehind()`). `pos` is where the file will end once the queue is written.
 *
 * @module
 */

import { addrOf, errno, libc, PAGE_SIZE, systemError } from "../../ffi/libc.ts";

const ZEROS = new Uint8Array(PAGE_SIZE);
let ZEROS_ADDR_: bigint | undefined;
/** Its address, taken on first use (importing this module needs no `--allow-ffi`). */
const ZEROS_ADDR = (): bigint => (ZEROS_ADDR_ ??= addrOf(Deno.UnsafePointer.of(ZEROS)));
const IOV_MAX = 1024;

/** Queued iovecs and the buffers they point into, taken for writing. */
interface Taken {
  iov: BigUint64Array<ArrayBuffer>;
  count: number;
  keep: Uint8Array[];
  free: Uint8Array[];
}

/** The iovecs waiting for their write to the image's fd, and the chain of writes in flight. */
export class WriteQueue {
  readonly #fd: number;
  readonly #path: string;
  #pos = 0;
  #iov = new BigUint64Array(2 * IOV_MAX);
  #iovCount = 0;
  #spareIov: BigUint64Array<ArrayBuffer> | undefined;
  #keep: Uint8Array[] = [];
  #free: Uint8Array[] = [];
  /** The chain of writes in flight (each starts when the one before has finished). */
  #writing: Promise<void> = Promise.resolve();

  /**
   * Make the queue of one image.
   *
   * @param fd Where the bytes go.
   * @param path The image, for errors.
   */
  constructor(fd: number, path: string) {
    this.#fd = fd;
    this.#path = path;
  }

  /** Where the file will end once the queue is written. */
  get pos(): number {
    return this.#pos;
  }

  /** Whether iovecs wait for a write. */
  get pending(): boolean {
    return this.#iovCount > 0;
  }

  /** Settles when every write started so far has finished (rejects if one failed). */
  get writing(): Promise<void> {
    return this.#writing;
  }

  /**
   * Queue zero bytes up to file offset `to`.
   *
   * @param to Where the padding ends.
   */
  zerosTo(to: number): void {
    if (to < this.#pos) throw new RangeError(`Cannot seek back from ${this.#pos} to ${to}`);
    for (let n = to - this.#pos; n > 0; n -= ZEROS.length) {
      this.at(ZEROS_ADDR(), Math.min(n, ZEROS.length));
    }
  }

  /**
   * Queue `bytes`, kept alive until written.
   *
   * @param bytes The bytes.
   */
  bytes(bytes: Uint8Array): void {
    if (bytes.length) {
      this.#keep.push(bytes);
      this.at(addrOf(Deno.UnsafePointer.of(bytes)), bytes.length);
    }
  }

  /**
   * Keep buffers alive until the queued iovecs are written.
   *
   * @param buffers Buffers queued iovecs point into.
   */
  keep(buffers: readonly Uint8Array[]): void {
    this.#keep.push(...buffers);
  }

  /**
   * Keep buffers alive until the queued iovecs are written, then free them (detach their `ArrayBuffer`s, so that
   * their memory goes back at once rather than when the garbage collector gets to it: an image of many encoded
   * or sealed chunks would otherwise hold tens of MiB of written chunks). They must be ours alone.
   *
   * @param buffers Whole buffers queued iovecs point into, referenced nowhere else.
   */
  free(buffers: readonly Uint8Array[]): void {
    this.#free.push(...buffers);
  }

  /**
   * Queue `len` bytes at `ptr` for the next write, merging with the previous iovec when contiguous.
   *
   * @param ptr The bytes' address.
   * @param len Bytes.
   */
  at(ptr: bigint, len: number): void {
    if (len === 0) return;
    const n = this.#iovCount;
    if (n > 0 && this.#iov[2 * n - 2] + this.#iov[2 * n - 1] === ptr && ptr !== ZEROS_ADDR()) {
      this.#iov[2 * n - 1] += BigInt(len);
    } else {
      if (2 * n === this.#iov.length) {
        const grown = new BigUint64Array(2 * this.#iov.length);
        grown.set(this.#iov);
        this.#iov = grown;
      }
      this.#iovCount++;
      this.#iov[2 * n] = ptr;
      this.#iov[2 * n + 1] = BigInt(len);
    }
    this.#pos += len;
  }

  /** Write every queued iovec now (writev, at most 1024 a call, resuming after partial writes). */
  drain(): void {
    if (this.#iovCount === 0) return;
    const q = this.#take();
    for (let i = 0; i < q.count;) i = advance(q.iov, i, this.#writevNow(q.iov, i, q.count));
    this.#spareIov = q.iov;
    release(q.free);
  }

  /**
   * Write every queued iovec on a pool thread, after the writes already in flight.
   *
   * @returns A promise (also the new `writing`) that settles when they are written, and the memory they point
   *   into may be reused.
   */
  writeBehind(): Promise<void> {
    const q = this.#take();
    const done = this.#writing.then(() => this.#write(q));
    done.catch(() => {}); // observed through `writing` by the next call, finalize() or abort()
    this.#writing = done;
    return done;
  }

  /** Take the queue (iovecs and the buffers they point into) for writing. */
  #take(): Taken {
    const q = { iov: this.#iov, count: this.#iovCount, keep: this.#keep, free: this.#free };
    this.#iov = this.#spareIov ?? new BigUint64Array(2 * IOV_MAX);
    this.#spareIov = undefined;
    this.#iovCount = 0;
    this.#keep = [];
    this.#free = [];
    return q;
  }

  async #write(q: Taken): Promise<void> {
    for (let i = 0; i < q.count;) {
      let n = await libc.writev_nb(this.#fd, q.iov.subarray(2 * i), Math.min(q.count - i, IOV_MAX));
      if (n <= 0n) n = this.#writevNow(q.iov, i, q.count); // errno is not readable on a pool thread: retry here
      i = advance(q.iov, i, n);
    }
    this.#spareIov = q.iov;
    release(q.free);
  }

  #writevNow(iov: BigUint64Array, i: number, count: number): bigint {
    for (;;) {
      const n = libc.writev(this.#fd, iov.subarray(2 * i), Math.min(count - i, IOV_MAX));
      if (n > 0n) return n;
      const e = n < 0n ? errno() : 28; /* ENOSPC */
      if (e === 4 /* EINTR */) continue;
      throw systemError("writev", e, `${this.#path} (${this.#pos} bytes when written)`);
    }
  }
}

/** Skip `n` written bytes of the iovecs from `i`; returns the first iovec not fully written. */
function advance(iov: BigUint64Array, i: number, n: bigint): number {
  while (n > 0n) {
    if (n >= iov[2 * i + 1]) {
      n -= iov[2 * i + 1];
      i++;
    } else {
      iov[2 * i] += n;
      iov[2 * i + 1] -= n;
      n = 0n;
    }
  }
  return i;
}

/** Buffers that go back to their pool once written, rather than being freed. */
const pools = new WeakMap<ArrayBufferLike, (b: Uint8Array<ArrayBuffer>) => void>();

/**
 * Have `buffer` given back to `give` once a write queue has written it (and it was handed to
 * {@link WriteQueue.free}), instead of freed: a pool of output buffers reused chunk after chunk, whose pages are
 * faulted in once (memory touched for the first time costs a fault per page, and more on a virtual machine).
 *
 * @param buffer A whole buffer of the pool.
 * @param give Takes it back.
 */
export function returnsTo(buffer: Uint8Array<ArrayBuffer>, give: (b: Uint8Array<ArrayBuffer>) => void): void {
  pools.set(buffer.buffer, give);
}

/** Free written buffers now: back to their pool, or detach each whole, unshared `ArrayBuffer`. */
function release(buffers: readonly Uint8Array[]): void {
  for (const b of buffers) {
    const ab = b.buffer;
    const give = pools.get(ab);
    if (give) give(new Uint8Array(ab as ArrayBuffer));
    else if (ab instanceof ArrayBuffer && b.byteOffset === 0 && b.byteLength === ab.byteLength) {
      ab.transfer(0);
    }
  }
}
