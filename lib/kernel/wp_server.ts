/**
 * The write-fault server of a live checkpoint: a native thread in the helper (`ffi/helper/live.c`) that serves
 * the synchronous write-protect faults of a userfaultfd on another process. On a write to a page that the
 * background copy has not taken yet it copies that page (and its neighbours, up to an aligned block) aside,
 * then lifts the protection, which wakes the writer. The background copy reads the pages through
 * {@link WriteProtectServer.handle} (`cryo_live_gather`, see `lib/image/sources.ts` `liveSource`), taking the
 * aside copy of every page a fault got to first. Faults never wait on the JavaScript thread.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import type { Userfaultfd } from "./uffd.ts";
import { helper } from "../../ffi/helper.ts";
import { close, open, PAGE_SIZE, systemError } from "../../ffi/libc.ts";
import { O_CLOEXEC } from "./uffd_abi.ts";
import { hex } from "../hex.ts";

/** One run of pages to persist, as the server sees it. */
export interface LiveRun {
  /** First address, page aligned. */
  start: bigint;
  /** One past the last address, page aligned. */
  end: bigint;
  /**
   * Copy it aside when the server starts (call {@link WriteProtectServer.start} while the target is
   * stopped): for a region that cannot be write-protected (a private file mapping, shared memory).
   */
  preload: boolean;
}

/**
 * The run table {@link WriteProtectServer.start} passes to the helper (`address, length, flags` per run), built
 * from runs as `[start0, end0, …]` pairs, a group per region, without a bigint per run (a sparse region has tens
 * of thousands of runs, and this is built while the target is stopped).
 *
 * @param groups Each region's runs (sorted, disjoint, page aligned; groups in address order) and whether they are
 *   copied aside at the start: all of them (`preload`), or those whose `hot` flag (one per run) is 1.
 * @returns The table.
 * @throws {RangeError} When a run is misaligned, empty or out of order.
 */
export function liveRunTable(
  groups: readonly { runs: BigUint64Array; preload: boolean; hot?: Uint8Array }[],
): BigUint64Array {
  let n = 0;
  for (const g of groups) n += g.runs.length / 2;
  const table = new BigUint64Array(3 * n);
  const out = new Uint32Array(table.buffer);
  const two32 = 4294967296;
  let k = 0, prevEnd = 0;
  for (const g of groups) {
    const w = new Uint32Array(g.runs.buffer, g.runs.byteOffset, 2 * g.runs.length);
    for (let i = 0; i < g.runs.length; i += 2) {
      const start = w[2 * i] + w[2 * i + 1] * two32, end = w[2 * i + 2] + w[2 * i + 3] * two32;
      if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || end <= start || start < prevEnd) {
        throw new RangeError(
          `Cannot serve run ${hex(g.runs[i])}-${hex(g.runs[i + 1])}: misaligned, empty or out of order`,
        );
      }
      prevEnd = end;
      const len = end - start;
      out[6 * k] = w[2 * i];
      out[6 * k + 1] = w[2 * i + 1];
      out[6 * k + 2] = len % two32;
      out[6 * k + 3] = Math.floor(len / two32);
      out[6 * k + 4] = g.preload || g.hot?.[i / 2] ? 1 : 0;
      out[6 * k + 5] = 0;
      k++;
    }
  }
  return table;
}

/** What a {@link WriteProtectServer} has done. */
export interface WriteProtectStats {
  /** Write faults served. */
  faults: number;
  /** Pages copied aside by faults before the background copy reached them. */
  earlyPages: number;
  /** Pages the background copy read while they were still protected. */
  takenPages: number;
  /** Pages the background copy took from the aside area (copied early, or preloaded). */
  fromAside: number;
  /** Faults on pages outside every run (their protection was lifted, nothing copied). */
  outsideFaults: number;
  /** Pages gone before anyone copied them (unmapped or replaced by the target): the image cannot be exact. */
  lostPages: number;
  /** The first lost page's address (0n: none). */
  firstLost: bigint;
  /** Ioctls that failed otherwise. */
  errors: number;
  /** The errno of the last such failure (0: none). */
  lastErrno: number;
  /** Time the server spent serving faults, in ms. */
  busyMs: number;
  /** The longest time one fault took to serve (read to wake), in ms. */
  maxFaultMs: number;
  /** Pages copied aside while the target was stopped. */
  preloadedPages: number;
  /** `UFFDIO_WRITEPROTECT` calls of the background copy lifting the protection of what it took. */
  unprotectCalls: number;
  /** Pages the background copy could not read (unmapped since) and took from the aside area. */
  unreadable: number;
}

const NSTATS = 14;

function toStats(s: BigUint64Array): WriteProtectStats {
  const n = (i: number) => Number(s[i]);
  return {
    faults: n(0),
    earlyPages: n(1),
    takenPages: n(2),
    fromAside: n(3),
    outsideFaults: n(4),
    lostPages: n(5),
    firstLost: s[6],
    errors: n(7),
    lastErrno: n(8),
    busyMs: n(9) / 1e6,
    maxFaultMs: n(10) / 1e6,
    preloadedPages: n(11),
    unprotectCalls: n(12),
    unreadable: n(13),
  };
}

/** Options of {@link WriteProtectServer.start}. */
export interface WriteProtectServerOptions {
  /** Pages copied aside per fault: the aligned block around the faulting page (a power of two, 1-512; default 1). */
  neighbours?: number;
}

/**
 * A running write-fault server. Stop it with {@link stop} once no background read uses it any more, then close
 * the userfaultfd (the kernel lifts what protection is left and wakes any waiter).
 */
export class WriteProtectServer implements Disposable {
  /** Whose faults it serves. */
  readonly pid: number;
  readonly #handle: Deno.PointerObject;
  #final: WriteProtectStats | undefined;

  private constructor(pid: number, handle: Deno.PointerObject) {
    this.pid = pid;
    this.#handle = handle;
  }

  /**
   * Start serving the write faults of `uffd` (on process `pid`, its persisted regions registered with
   * `UFFDIO_REGISTER_MODE.WP` and protected) for the pages of `runs`; copy the `preload` runs aside first.
   *
   * @param uffd A userfaultfd on `pid` (non-blocking, as `Userfaultfd.inTarget` creates it).
   * @param pid The process.
   * @param runs Every run of pages to persist: sorted, disjoint, page aligned; or their {@link liveRunTable}.
   * @param opts Neighbours copied per fault.
   * @returns The running server.
   * @throws {RangeError} When a run is misaligned, empty or out of order, or `neighbours` is not a power of two.
   * @throws {SystemError} When a preload run cannot be read or the thread cannot start.
   */
  static start(
    uffd: Userfaultfd,
    pid: number,
    runs: readonly LiveRun[] | BigUint64Array,
    opts: WriteProtectServerOptions = {},
  ): WriteProtectServer {
    if (uffd.closed) {
      throw new CryoError(`Cannot serve the write faults of pid ${pid}: the userfaultfd is closed`);
    }
    const neighbours = opts.neighbours ?? 1;
    if (
      !Number.isInteger(neighbours) || neighbours < 1 || neighbours > 512 || (neighbours & (neighbours - 1))
    ) {
      throw new RangeError(
        `Cannot copy ${neighbours} pages per fault: expected a power of two from 1 to 512`,
      );
    }
    const table = runs instanceof BigUint64Array
      ? runs
      : liveRunTable(runs.map((r) => ({ runs: new BigUint64Array([r.start, r.end]), preload: r.preload })));
    const pagemap = open(`/proc/${pid}/pagemap`, O_CLOEXEC);
    try {
      const err = new BigInt64Array(1);
      const h = helper().cryo_live_start(
        uffd.fd,
        pid,
        pagemap,
        table,
        BigInt(table.length / 3),
        BigInt(PAGE_SIZE),
        BigInt(neighbours),
        err,
      );
      if (h === null) throw systemError("start the write-fault server", -Number(err[0]), `for pid ${pid}`);
      return new WriteProtectServer(pid, h);
    } finally {
      close(pagemap); // the server holds its own copy
    }
  }

  /** The server, for `cryo_live_gather` (valid until {@link stop}). */
  get handle(): Deno.PointerObject {
    if (this.#final) {
      throw new CryoError(`Cannot use the write-fault server of pid ${this.pid}: it is stopped`);
    }
    return this.#handle;
  }

  /** The counters so far (the final ones once stopped). */
  stats(): WriteProtectStats {
    if (this.#final) return this.#final;
    const out = new BigUint64Array(NSTATS);
    helper().cryo_live_stats(this.#handle, out);
    return toStats(out);
  }

  /** Whether {@link stop} has run. */
  get stopped(): boolean {
    return this.#final !== undefined;
  }

  /**
   * Stop serving, join the thread and free the aside copies. No background read may still be running.
   * Idempotent.
   *
   * @returns The final counters.
   */
  stop(): WriteProtectStats {
    if (this.#final) return this.#final;
    const out = new BigUint64Array(NSTATS);
    helper().cryo_live_stop(this.#handle, out);
    this.#final = toStats(out);
    return this.#final;
  }

  /** Same as {@link stop}. */
  [Symbol.dispose](): void {
    this.stop();
  }
}
