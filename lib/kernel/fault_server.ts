/**
 * Serve a process's missing pages lazily: a native thread in the helper (`ffi/helper/fault_server.c`) reads
 * the page faults of a userfaultfd and fills each with `UFFDIO_COPY` from the runs given here (or zeros for
 * addresses no run covers), prefetching a window that starts at one page and doubles while the faults come
 * sequentially. Faults never wait on the JavaScript thread. Runs whose bytes lie in a file
 * ({@link FaultServer.fromFile}; the runs themselves in a file too, lib/kernel/fault_runs.ts) are read with `pread`
 * into a buffer of the server's before each copy: no page of either file enters this process's RSS.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import type { Userfaultfd } from "./uffd.ts";
import type { FaultRunTable } from "./fault_runs.ts";
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

/** The prefetch window and the read-ahead, in pages, of {@link FaultServerOptions}. */
function windows(opts: FaultServerOptions): [number, number] {
  const maxWindow = Math.max(1, Math.floor((opts.maxPrefetch ?? 4 << 20) / PAGE_SIZE));
  const readAhead = Math.max(0, Math.floor((opts.readAhead ?? 4 * maxWindow * PAGE_SIZE) / PAGE_SIZE));
  return [maxWindow, readAhead];
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
  readonly #keep: (Uint8Array | BigUint64Array)[];
  readonly #out = new BigUint64Array(10);
  readonly #fillOut = new BigUint64Array(3);
  #final: FaultServerStats | undefined;

  private constructor(
    pid: number | "self",
    handle: Deno.PointerObject,
    keep: (Uint8Array | BigUint64Array)[],
  ) {
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
    const [maxWindow, readAhead] = windows(opts);
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

  /**
   * Start serving the faults of `uffd` from the runs of `table`, whose bytes are in file `fd` at the offsets the
   * table gives: each piece is read with `pread` into a buffer of the server's (as large as the largest piece,
   * `maxPrefetch` or 1 MiB) and copied from there, so the file's pages never count in this process's RSS. Faults
   * outside every run get zero pages. The runs are read from the table's file a block at a time. The table and
   * `fd` must stay open until the server stops.
   *
   * @example Serve a released region from an image's raw record
   * ```ts ignore
   * using table = new FaultRunTable(scratchFile("/tmp"));
   * table.append(record.address, record.length, record.fileOffset);
   * using server = FaultServer.fromFile(uffd, imageFd, table);
   * ```
   *
   * @param uffd A userfaultfd (non-blocking, as {@link Userfaultfd} creates it).
   * @param fd The file the runs' bytes are in, open for reading.
   * @param table The runs (page aligned, in address order: {@link FaultRunTable} keeps them so); finished here.
   * @param opts Prefetch.
   * @returns The running server.
   */
  static fromFile(
    uffd: Userfaultfd,
    fd: number,
    table: FaultRunTable,
    opts: FaultServerOptions = {},
  ): FaultServer {
    if (uffd.closed) throw new CryoError(`Cannot serve faults of ${uffd.pid}: the userfaultfd is closed`);
    const dir = table.finish();
    const [maxWindow, readAhead] = windows(opts);
    const err = new BigInt64Array(1);
    const h = helper().cryo_fault_server_start_file(
      uffd.fd,
      fd,
      table.fd,
      dir,
      BigInt(table.length),
      BigInt(PAGE_SIZE),
      BigInt(maxWindow),
      BigInt(readAhead),
      err,
    );
    if (h === null) throw systemError("start the fault server", -Number(err[0]), `for ${uffd.pid}`);
    return new FaultServer(uffd.pid, h, [dir]);
  }

  /** The counters so far (the final ones once stopped). */
  stats(): FaultServerStats {
    if (this.#final) return this.#final;
    helper().cryo_fault_server_stats(this.#handle, this.#out);
    return toStats(this.#out);
  }

  /**
   * Copy the runs' pages that are still missing from address `from` on, on this thread while the server serves
   * faults, `chunk` bytes per `UFFDIO_COPY` (at most the server's buffer for a file), stepping over the pages that
   * exist, until `max` bytes of the runs have been passed over: one slice of a background fill.
   *
   * @param from Where to start (0: the first run).
   * @param max Bytes of the runs to pass over in this call.
   * @param chunk Bytes per copy.
   * @returns Where it stopped (`done` once no run is left), bytes copied and passed over (copied or there
   *   already).
   * @throws {SystemError} When a copy fails (`ESRCH`: the process is gone); nothing past `from` is lost.
   */
  fill(
    from: bigint,
    max: number,
    chunk: number,
  ): { next: bigint; copied: number; passed: number; done: boolean } {
    if (this.#final) throw new CryoError(`Cannot fill pages of ${this.pid}: the fault server has stopped`);
    const out = this.#fillOut;
    const r = Number(helper().cryo_fault_server_fill(this.#handle, from, BigInt(max), BigInt(chunk), out));
    if (r < 0) throw systemError("UFFDIO_COPY", -r, `at ${hex(out[0])} of ${this.pid}`);
    const passed = Number(out[2]);
    return { next: out[0], copied: Number(out[1]), passed, done: passed < max };
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
   * @param opts Whether to complete; `from`: the caller put every page of the runs below this address in place
   *   already (a background fill), so the completion starts there (default 0: every run).
   * @returns The final counters.
   */
  stop(opts: { complete?: boolean; from?: bigint } = {}): FaultServerStats {
    if (this.#final) return this.#final;
    const out = new BigUint64Array(10);
    helper().cryo_fault_server_stop(this.#handle, opts.complete ?? true ? 1 : 0, opts.from ?? 0n, out);
    this.#final = toStats(out);
    this.#keep.length = 0;
    return this.#final;
  }

  /** Same as `stop({ complete: true })`. */
  [Symbol.dispose](): void {
    this.stop();
  }
}
