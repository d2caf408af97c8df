/**
 * Serve a process's missing pages lazily: a native thread in the helper (`ffi/helper/fault_server.c`) reads
 * the page faults of a userfaultfd and fills each with `UFFDIO_COPY` from the runs given here (or zeros for
 * addresses no run covers), prefetching a window that starts at one page and doubles while the faults come
 * sequentially. Faults never wait on the JavaScript thread.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import type { Userfaultfd } from "./uffd.ts";
import { helper } from "../../ffi/helper.ts";
import { addrOf, PAGE_SIZE, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";

/** One run of data to serve: `length` bytes at `start` in the served process. */
export interface FaultRun {
  /** First address, page aligned. */
  start: bigint;
  /** Bytes, page aligned. */
  length: bigint;
  /**
   * Where the bytes are in this process: a buffer (kept alive by the server), or an address that stays
   * mapped until the server stops (an image mapped in memory).
   */
  source: Uint8Array | bigint;
}

/** Options of {@link FaultServer.start}. */
export interface FaultServerOptions {
  /** The largest prefetch window in bytes (default 4 MiB; one page turns prefetch off). */
  maxPrefetch?: number;
  /**
   * Read-ahead in bytes: after each fault served at the full window, the server copies up to this much more
   * ahead of the reader while no fault waits (default 4 × `maxPrefetch`; 0 turns it off).
   */
  readAhead?: number;
}

/** What a {@link FaultServer} has done so far. */
export interface FaultServerStats {
  /** Page faults read. */
  faults: number;
  /** Pages filled from the runs (faults and their prefetch). */
  pagesCopied: number;
  /** Pages filled with zeros (faults in holes). */
  pagesZeroed: number;
  /** Faults whose page was there already (a prefetch won the race); their threads were woken. */
  existed: number;
  /** Fills that failed otherwise. */
  errors: number;
  /** The errno of the last failed fill (0: none). */
  lastErrno: number;
  /** The largest window served, in pages. */
  maxWindowPages: number;
  /** Pages copied when the server stopped with `complete`. */
  completed: number;
  /** Time the server spent filling pages (its ioctls), in ms. */
  busyMs: number;
  /** Pages copied ahead of a sequential reader (included in `pagesCopied`). */
  readAhead: number;
}

function toStats(s: BigUint64Array): FaultServerStats {
  const n = (i: number) => Number(s[i]);
  return {
    faults: n(0),
    pagesCopied: n(1),
    pagesZeroed: n(2),
    existed: n(3),
    errors: n(4),
    lastErrno: n(5),
    maxWindowPages: n(6),
    completed: n(7),
    busyMs: n(8) / 1e6,
    readAhead: n(9),
  };
}

/**
 * A running fault server. Stop it with {@link stop} (or leave a `using` scope, which stops it with `complete`).
 */
export class FaultServer implements Disposable {
  /** Whose faults it serves. */
  readonly pid: number | "self";
  readonly #handle: Deno.PointerObject;
  readonly #keep: Uint8Array[];
  #final: FaultServerStats | undefined;

  private constructor(pid: number | "self", handle: Deno.PointerObject, keep: Uint8Array[]) {
    this.pid = pid;
    this.#handle = handle;
    this.#keep = keep;
  }

  /**
   * Start serving the faults of `uffd` from `runs`. The ranges to serve must be registered with
   * `UFFDIO_REGISTER_MODE.MISSING`; faults outside every run get zero pages.
   *
   * @example Serve a released region of a child lazily
   * ```ts ignore
   * uffd.register(start, length, UFFDIO_REGISTER_MODE.MISSING);
   * using server = FaultServer.start(uffd, [{ start, length, source: saved }]);
   * frozen.thaw(); // the child faults its pages back as it touches them
   * ```
   *
   * @param uffd A userfaultfd (non-blocking, as {@link Userfaultfd} creates it).
   * @param runs The data, in any order; page aligned, not overlapping.
   * @param opts Prefetch.
   * @returns The running server.
   * @throws {RangeError} When a run is misaligned, overlaps another, or its buffer is too short.
   */
  static start(uffd: Userfaultfd, runs: readonly FaultRun[], opts: FaultServerOptions = {}): FaultServer {
    if (uffd.closed) throw new CryoError(`Cannot serve faults of ${uffd.pid}: the userfaultfd is closed`);
    const page = BigInt(PAGE_SIZE);
    const sorted = [...runs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    const table = new BigUint64Array(3 * sorted.length);
    const keep: Uint8Array[] = [];
    let prevEnd = 0n;
    for (const [i, r] of sorted.entries()) {
      if (r.start % page !== 0n || r.length % page !== 0n || r.length <= 0n) {
        throw new RangeError(`Cannot serve run ${hex(r.start)}+${r.length}: not page aligned`);
      }
      if (r.start < prevEnd) {
        throw new RangeError(`Cannot serve run ${hex(r.start)}: it overlaps the one before`);
      }
      prevEnd = r.start + r.length;
      let src: bigint;
      if (r.source instanceof Uint8Array) {
        if (BigInt(r.source.byteLength) < r.length) {
          throw new RangeError(
            `Cannot serve run ${hex(r.start)}: its buffer holds ${r.source.byteLength} bytes`,
          );
        }
        keep.push(r.source);
        src = addrOf(Deno.UnsafePointer.of(r.source as Uint8Array<ArrayBuffer>));
      } else {
        src = r.source;
      }
      if (src === 0n) throw new RangeError(`Cannot serve run ${hex(r.start)}: its source is a null address`);
      table.set([r.start, r.length, src], 3 * i);
    }
    const maxWindow = Math.max(1, Math.floor((opts.maxPrefetch ?? 4 << 20) / PAGE_SIZE));
    const readAhead = Math.max(0, Math.floor((opts.readAhead ?? 4 * maxWindow * PAGE_SIZE) / PAGE_SIZE));
    const err = new BigInt64Array(1);
    const h = helper().cryo_fault_server_start(
      uffd.fd,
      table,
      BigInt(sorted.length),
      BigInt(PAGE_SIZE),
      BigInt(maxWindow),
      BigInt(readAhead),
      err,
    );
    if (h === null) throw systemError("start the fault server", -Number(err[0]), `for ${uffd.pid}`);
    return new FaultServer(uffd.pid, h, keep);
  }

  /** The counters so far (the final ones once stopped). */
  stats(): FaultServerStats {
    if (this.#final) return this.#final;
    const out = new BigUint64Array(10);
    helper().cryo_fault_server_stats(this.#handle, out);
    return toStats(out);
  }

  /** Whether {@link stop} has run. */
  get stopped(): boolean {
    return this.#final !== undefined;
  }

  /**
   * Stop serving and join the thread. With `complete` (the default), every page of the runs that is still
   * missing is copied first and the queued faults are served, so that once the caller unregisters the ranges
   * (or closes the userfaultfd) the process sees all its data. Without it, faults still pending stay waiting
   * until the ranges are unregistered (then they fault again, unhandled: zero pages). Idempotent.
   *
   * @param opts Whether to complete.
   * @returns The final counters.
   */
  stop(opts: { complete?: boolean } = {}): FaultServerStats {
    if (this.#final) return this.#final;
    const out = new BigUint64Array(10);
    helper().cryo_fault_server_stop(this.#handle, opts.complete ?? true ? 1 : 0, out);
    this.#final = toStats(out);
    this.#keep.length = 0;
    return this.#final;
  }

  /** Same as `stop({ complete: true })`. */
  [Symbol.dispose](): void {
    this.stop();
  }
}
