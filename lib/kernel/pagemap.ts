/**
 * Which pages of a range hold data: the page state of any process, from its `/proc/<pid>/pagemap`.
 *
 * Two paths give identical {@link PageRun}s (runs of consecutive present-or-swapped pages):
 * - `"scan"`: the `PAGEMAP_SCAN` ioctl (Linux ≥ 6.7), where the kernel itself returns runs (lib/kernel/pagescan.ts
 *   declares its 96-byte `pm_scan_arg` and 24-byte `page_region`; older headers lack them). Each call stops at
 *   `walk_end` when its output vector is full; we loop from there and merge, since the last call can repeat a
 *   2 MiB block already reported.
 * - `"pagemap"`: `pread` of the 8-byte-per-page pagemap entries in chunks, decoded as `Uint32Array` high words
 *   (no per-page bigint).
 *
 * Guard pages (`MADV_GUARD_INSTALL`) look "swapped" to the kernel; both paths leave them out.
 *
 * @module
 */

import { errno, libc, open, PAGE_SIZE, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { O } from "../../ffi/constants.ts";
import { procPath } from "./procfs.ts";
import { PagemapScan } from "./pagescan.ts";
import { type PageRun, RunBuilder, toRuns } from "./runs.ts";

export type { PageRun } from "./runs.ts";

/** How {@link Pagemap.scan} finds pages: the `PAGEMAP_SCAN` ioctl or reading the pagemap file. */
export type ScanMethod = "scan" | "pagemap";

/** Options of {@link scanPages} and {@link Pagemap.scan}. */
export interface ScanOptions {
  /** `"scan"` (the ioctl) or `"pagemap"` (read the file); default: the ioctl when the kernel has it. */
  method?: ScanMethod;
  /**
   * Only anonymous pages: for a private file mapping these are its private dirty (copied-on-write) pages;
   * page-cache pages are left out. Default false.
   */
  anonOnly?: boolean;
}

/** Bits of {@link PageStates.flags}, one byte per page. */
export const PAGE_STATE = {
  /** In RAM. */
  PRESENT: 1,
  /** In swap (or another swap-type entry, e.g. a migration or uffd-wp marker). */
  SWAPPED: 2,
  /** A page-cache page (file-backed or shared anonymous), not a private anonymous page. */
  FILE: 4,
  /** Mapped by this process only. */
  EXCLUSIVE: 8,
  /** Write-protected by userfaultfd. */
  UFFD_WP: 16,
  /** A guard page (`MADV_GUARD_INSTALL`): no data. */
  GUARD: 32,
} as const;

/** The state of each page of a range. */
export interface PageStates {
  /** Address of the first page. */
  start: bigint;
  /** The page size the flags count in. */
  pageSize: number;
  /** One byte per page, an OR of {@link PAGE_STATE} bits. */
  flags: Uint8Array;
}

// pagemap entry bits, in the high 32-bit word of each little-endian 64-bit entry.
const HI_PRESENT = 1 << 31;
const HI_SWAPPED = 1 << 30;
const HI_FILE = 1 << 29;
const HI_GUARD = 1 << 26;
const HI_UFFD_WP = 1 << 25;
const HI_EXCLUSIVE = 1 << 24;
// The top of the x86_64 (4-level) user address space: above it (e.g. [vsyscall]) no page is in the process's
// page tables; the pagemap file reads as empty there and the ioctl refuses the range (EFAULT).
const USER_TOP = 1n << 47n;

const CHUNK_PAGES = 1 << 16; // pagemap entries per pread (512 KiB)
const EINTR = 4;
const ESRCH = 3;

let scanSupported: boolean | undefined;

/**
 * Whether this kernel has the `PAGEMAP_SCAN` ioctl (probed once, on this process's own pagemap).
 *
 * @returns True on Linux ≥ 6.7.
 */
export function pagemapScanSupported(): boolean {
  if (scanSupported === undefined) {
    using pm = Pagemap.open("self");
    scanSupported = pm.probeScan();
  }
  return scanSupported;
}

function checkRange(start: bigint, end: bigint): void {
  const page = BigInt(PAGE_SIZE);
  if (typeof start !== "bigint" || typeof end !== "bigint") {
    throw new TypeError("Cannot scan pages: start and end must be bigint addresses");
  }
  if (start % page !== 0n || end % page !== 0n || start < 0n || end < start) {
    throw new RangeError(
      `Cannot scan pages ${hex(start)}-${hex(end)}: expected a page-aligned range, start ≤ end`,
    );
  }
}

/**
 * An open `/proc/<pid>/pagemap`: scan as many ranges as needed with one fd. Disposable.
 *
 * @example
 * ```ts
 * import { Pagemap } from "./pagemap.ts";
 * import { readRegions } from "./maps.ts";
 * const heap = readRegions("self").find((r) => r.kind === "heap");
 * using pm = Pagemap.open("self");
 * if (heap && pm.scan(heap.start, heap.end).length === 0) throw new Error("an empty heap");
 * ```
 */
export class Pagemap implements Disposable {
  /** The pid, or `"self"`. */
  readonly pid: number | "self";
  /** The file, e.g. `/proc/42/pagemap`. */
  readonly path: string;
  #fd: number;
  #scanner = new PagemapScan();
  /** The buffer of {@link runNumbers}. */
  readonly #numbers = new RunBuilder();
  #chunk = new Uint32Array(2 * CHUNK_PAGES);
  #chunkPtr = Deno.UnsafePointer.of(this.#chunk);

  private constructor(pid: number | "self", path: string, fd: number) {
    this.pid = pid;
    this.path = path;
    this.#fd = fd;
  }

  /**
   * Open the pagemap of `pid`.
   *
   * @param pid A pid, or `"self"`.
   * @returns The open pagemap; close it (or `using` it) when done.
   * @throws {SystemError} When it cannot be opened (ENOENT: no such pid; EACCES: not allowed), naming the file.
   */
  static open(pid: number | "self"): Pagemap {
    const path = procPath(pid, "pagemap");
    return new Pagemap(pid, path, open(path, O.RDONLY | O.CLOEXEC));
  }

  #checkOpen(): void {
    if (this.#fd < 0) throw new TypeError(`Cannot use ${this.path}: it is closed`);
  }

  /** Whether the ioctl works on this fd (false when the kernel does not know it). */
  probeScan(): boolean {
    this.#checkOpen();
    try {
      this.#scanner.call(this.#fd, 0n, BigInt(PAGE_SIZE), false, this.path, this.pid); // a cheap walk
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === "ENOTTY" || (e as { code?: string }).code === "EINVAL") {
        return false;
      }
      throw e;
    }
  }

  /**
   * Read the pagemap entries of `[start, end)` chunk by chunk, calling `visit(hi, first, count)` with the high
   * words of each chunk (`hi[2 * i + 1]` is page `first + i`'s high word).
   */
  #readEntries(
    start: bigint,
    end: bigint,
    visit: (words: Uint32Array, first: number, count: number) => void,
  ): void {
    const page = BigInt(PAGE_SIZE);
    const total = Number((end - start) / page);
    let done = 0;
    while (done < total) {
      const count = Math.min(CHUNK_PAGES, total - done);
      const addr = start + BigInt(done) * page;
      const off = (addr / page) * 8n;
      const n = Number(libc.pread(this.#fd, this.#chunkPtr, BigInt(count * 8), off));
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw systemError("pread", e, `${this.path} at ${hex(addr)}`);
      }
      if (n === 0) {
        if (addr >= USER_TOP) return; // beyond the user address space: no pages
        throw systemError("pread", ESRCH, `${this.path} at ${hex(addr)} (pid ${this.pid} exited)`);
      }
      const got = Math.floor(n / 8);
      if (got === 0) throw systemError("pread", 5, /* EIO */ `${this.path} at ${hex(addr)}: a partial entry`);
      visit(this.#chunk, done, got);
      done += got;
    }
  }

  #scanRead(start: bigint, end: bigint, anonOnly: boolean, runs: RunBuilder): void {
    const reject = HI_GUARD | (anonOnly ? HI_FILE : 0);
    const base = Number(start);
    let runStart = -1; // page index of the open run, or -1
    this.#readEntries(start, end, (words, first, count) => {
      for (let i = 0; i < count; i++) {
        const hi = words[2 * i + 1];
        if ((hi & (HI_PRESENT | HI_SWAPPED)) !== 0 && (hi & reject) === 0) {
          if (runStart < 0) runStart = first + i;
        } else if (runStart >= 0) {
          runs.add(base + runStart * PAGE_SIZE, base + (first + i) * PAGE_SIZE);
          runStart = -1;
        }
      }
    });
    if (runStart >= 0) runs.add(base + runStart * PAGE_SIZE, Number(end));
  }

  /**
   * The runs of pages in `[start, end)` that hold data (present or swapped), as a typed array: the fast form
   * of {@link scan} for callers that walk many runs.
   *
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned.
   * @param opts The method (default: the ioctl when available) and `anonOnly`.
   * @returns `[start0, end0, start1, end1, …]`: sorted, disjoint, non-adjacent runs.
   * @throws {SystemError} When the process exited (ESRCH) or the kernel refused, naming the file and address.
   */
  runs(start: bigint, end: bigint, opts: ScanOptions = {}): BigUint64Array {
    checkRange(start, end);
    this.#checkOpen();
    if (end > USER_TOP) end = USER_TOP;
    if (start >= end) return new BigUint64Array(0);
    const method = opts.method ?? (pagemapScanSupported() ? "scan" : "pagemap");
    if (method === "scan") {
      return this.#scanner.runs(this.#fd, start, end, opts.anonOnly ?? false, this.path, this.pid);
    }
    if (method === "pagemap") {
      const runs = new RunBuilder();
      this.#scanRead(start, end, opts.anonOnly ?? false, runs);
      return runs.finish();
    }
    throw new TypeError(
      `Cannot scan pages with method ${JSON.stringify(method)}: expected "scan" or "pagemap"`,
    );
  }

  /**
   * {@link runs} as numbers (user addresses are below 2^47, exact in a double), in a buffer this pagemap keeps
   * and reuses: no buffer per call, for a walk of many windows of address space.
   *
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned.
   * @param opts As for {@link runs}.
   * @returns `[start0, end0, …]`: a view of the pagemap's buffer, valid until its next call.
   * @throws {SystemError} As {@link runs}.
   */
  runNumbers(start: bigint, end: bigint, opts: ScanOptions = {}): Float64Array {
    const into = this.#numbers;
    checkRange(start, end);
    this.#checkOpen();
    into.clear();
    if (end > USER_TOP) end = USER_TOP;
    if (start >= end) return into.numbers();
    const method = opts.method ?? (pagemapScanSupported() ? "scan" : "pagemap");
    if (method === "scan") {
      this.#scanner.scanInto(this.#fd, start, end, opts.anonOnly ?? false, this.path, this.pid, into);
    } else this.#scanRead(start, end, opts.anonOnly ?? false, into);
    return into.numbers();
  }

  /**
   * The runs of pages in `[start, end)` that hold data (present or swapped), and among them those that carry
   * category `bit` (e.g. `PAGE_IS.WRITTEN`: not write-protected), from one `PAGEMAP_SCAN` walk.
   *
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned.
   * @param bit One `PAGE_IS.*` category.
   * @returns `all` and `marked` runs, `[start0, end0, …]` each.
   * @throws {SystemError} When the process exited (ESRCH) or the kernel lacks `PAGEMAP_SCAN` (ENOTTY).
   */
  runsSplit(start: bigint, end: bigint, bit: bigint): { all: BigUint64Array; marked: BigUint64Array } {
    checkRange(start, end);
    this.#checkOpen();
    if (end > USER_TOP) end = USER_TOP;
    if (start >= end) return { all: new BigUint64Array(0), marked: new BigUint64Array(0) };
    return this.#scanner.runsSplit(this.#fd, start, end, bit, this.path, this.pid);
  }

  /**
   * The runs of pages in `[start, end)` that hold data (present or swapped).
   *
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned.
   * @param opts The method (default: the ioctl when available) and `anonOnly`.
   * @returns Sorted, disjoint, non-adjacent runs.
   * @throws {SystemError} When the process exited (ESRCH) or the kernel refused, naming the file and address.
   */
  scan(start: bigint, end: bigint, opts: ScanOptions = {}): PageRun[] {
    return toRuns(this.runs(start, end, opts));
  }

  /**
   * The state of every page of `[start, end)`, from the pagemap file.
   *
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned.
   * @returns One flags byte per page ({@link PAGE_STATE} bits).
   * @throws {SystemError} When the process exited (ESRCH), naming the file and address.
   */
  states(start: bigint, end: bigint): PageStates {
    checkRange(start, end);
    this.#checkOpen();
    const flags = new Uint8Array(Number((end - start) / BigInt(PAGE_SIZE)));
    this.#readEntries(start, end, (words, first, count) => {
      for (let i = 0; i < count; i++) {
        const hi = words[2 * i + 1];
        flags[first + i] = ((hi & HI_PRESENT) !== 0 ? PAGE_STATE.PRESENT : 0) |
          ((hi & HI_SWAPPED) !== 0 ? PAGE_STATE.SWAPPED : 0) |
          ((hi & HI_FILE) !== 0 ? PAGE_STATE.FILE : 0) |
          ((hi & HI_EXCLUSIVE) !== 0 ? PAGE_STATE.EXCLUSIVE : 0) |
          ((hi & HI_UFFD_WP) !== 0 ? PAGE_STATE.UFFD_WP : 0) |
          ((hi & HI_GUARD) !== 0 ? PAGE_STATE.GUARD : 0);
      }
    });
    return { start, pageSize: PAGE_SIZE, flags };
  }

  /** Close the fd. Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    libc.close(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The runs of pages of `pid` in `[start, end)` that hold data (present or swapped), with one pagemap fd
 * opened for the call. To scan many regions, open a {@link Pagemap} once instead.
 *
 * @param pid A pid, or `"self"`.
 * @param start First address, page aligned.
 * @param end One past the last address, page aligned.
 * @param opts The method (default: the ioctl when available) and `anonOnly`.
 * @returns Sorted, disjoint, non-adjacent runs.
 * @throws {SystemError} When the pid does not exist (ENOENT), may not be read (EACCES) or exited (ESRCH).
 */
export function scanPages(pid: number | "self", start: bigint, end: bigint, opts?: ScanOptions): PageRun[] {
  using pm = Pagemap.open(pid);
  return pm.scan(start, end, opts);
}

/**
 * The state of every page of `pid` in `[start, end)`.
 *
 * @param pid A pid, or `"self"`.
 * @param start First address, page aligned.
 * @param end One past the last address, page aligned.
 * @returns One flags byte per page ({@link PAGE_STATE} bits).
 * @throws {SystemError} When the pid does not exist (ENOENT), may not be read (EACCES) or exited (ESRCH).
 */
export function pageStates(pid: number | "self", start: bigint, end: bigint): PageStates {
  using pm = Pagemap.open(pid);
  return pm.states(start, end);
}
