/**
 * The `PAGEMAP_SCAN` ioctl on `/proc/<pid>/pagemap` (Linux ≥ 6.7): the kernel walks the page tables and returns
 * runs of pages by category. The headers on our machines predate it, so the 96-byte `struct pm_scan_arg` (12
 * u64: size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
 * category_anyof_mask, return_mask) and the 24-byte `struct page_region` (start, end, categories) are declared
 * here as `BigUint64Array`s. A call stops at `walk_end` when its vector is full; the caller loops from there,
 * and merges, since on 6.18 the last call can repeat a 2 MiB block it already reported.
 *
 * @module
 */

import { errno, libc, PAGE_SIZE, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { RunBuilder } from "./runs.ts";

// linux/fs.h (6.7+): PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg), 96 bytes.
const PAGEMAP_SCAN = 0xc0606610n;
const PM_SCAN_ARG_SIZE = 96n;
const PAGE_IS_FILE = 1n << 2n;
const PAGE_IS_PRESENT = 1n << 3n;
const PAGE_IS_SWAPPED = 1n << 4n;
const PAGE_IS_GUARD = 1n << 8n; // 6.14+; older kernels refuse it with EINVAL
const VEC_REGIONS = 4096; // page_region entries per ioctl call (96 KiB)
const EINTR = 4;
const ESRCH = 3;

let guardKnown = true;

/** `PAGE_IS_*` categories of `PAGEMAP_SCAN` (linux/fs.h). */
export const PAGE_IS = {
  WPALLOWED: 1n << 0n,
  WRITTEN: 1n << 1n,
  FILE: PAGE_IS_FILE,
  PRESENT: PAGE_IS_PRESENT,
  SWAPPED: PAGE_IS_SWAPPED,
  PFNZERO: 1n << 5n,
  HUGE: 1n << 6n,
  SOFT_DIRTY: 1n << 7n,
  GUARD: PAGE_IS_GUARD,
} as const;

/** `PAGEMAP_SCAN` flags: write-protect the pages that match, and check the range is async write-protected. */
export const PM_SCAN = { WP_MATCHING: 1n << 0n, CHECK_WPASYNC: 1n << 1n } as const;

/**
 * A `PAGEMAP_SCAN` query other than the default (present or swapped pages, guard pages excluded): the flags
 * and the four category masks of `struct pm_scan_arg`.
 */
export interface ScanQuery {
  /** `PM_SCAN.*` flags. */
  flags: bigint;
  /** Categories whose sense is inverted before matching. */
  categoryInverted: bigint;
  /** Categories that must all match. */
  categoryMask: bigint;
  /** Categories of which at least one must match (0n: none asked). */
  categoryAnyof: bigint;
  /** Categories reported per region. */
  returnMask: bigint;
}

/** The argument and output buffers of PAGEMAP_SCAN calls, reused across calls. */
export class PagemapScan {
  #arg = new BigUint64Array(12);
  #vec = new BigUint64Array(3 * VEC_REGIONS);
  #argPtr = Deno.UnsafePointer.of(this.#arg);
  #vec32 = new Uint32Array(this.#vec.buffer);
  #vecAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#vec)));

  /**
   * One PAGEMAP_SCAN call from `start` to `end`, filling the vector.
   *
   * @param fd An open `/proc/<pid>/pagemap`.
   * @param start First address, page aligned.
   * @param end One past the last address.
   * @param anonOnly Leave out page-cache pages.
   * @param path The file, for errors.
   * @param pid The pid, for errors.
   * @param query Another query than present-or-swapped pages (then `anonOnly` is ignored).
   * @returns The number of regions in the vector; `walkEnd` says where the walk stopped.
   * @throws {SystemError} When the kernel refuses (ENOTTY: no such ioctl; ESRCH: the process exited).
   */
  call(
    fd: number,
    start: bigint,
    end: bigint,
    anonOnly: boolean,
    path: string,
    pid: number | "self",
    query?: ScanQuery,
  ): number {
    const a = this.#arg;
    for (;;) {
      const excluded = (guardKnown ? PAGE_IS_GUARD : 0n) | (anonOnly ? PAGE_IS_FILE : 0n);
      a[0] = PM_SCAN_ARG_SIZE;
      a[1] = query?.flags ?? 0n; // flags
      a[2] = start;
      a[3] = end;
      a[4] = 0n; // walk_end (out)
      a[5] = this.#vecAddr;
      a[6] = BigInt(VEC_REGIONS);
      a[7] = 0n; // max_pages: no limit
      a[8] = query?.categoryInverted ?? excluded; // category_inverted
      a[9] = query?.categoryMask ?? excluded; // category_mask: these must be absent
      a[10] = query?.categoryAnyof ?? PAGE_IS_PRESENT | PAGE_IS_SWAPPED; // category_anyof_mask
      a[11] = query?.returnMask ?? PAGE_IS_PRESENT | PAGE_IS_SWAPPED; // return_mask
      const n = libc.ioctl(fd, PAGEMAP_SCAN, this.#argPtr);
      if (n >= 0) return n;
      const e = errno();
      if (e === EINTR) continue;
      if (e === 22 /* EINVAL */ && guardKnown && !query) {
        guardKnown = false; // a kernel before 6.14: no PAGE_IS_GUARD category
        continue;
      }
      const exited = e === ESRCH ? ` (pid ${pid} exited)` : "";
      throw systemError("ioctl PAGEMAP_SCAN", e, `${path} at ${hex(start)}${exited}`);
    }
  }

  /** Where the last call's walk stopped (`walk_end`). */
  get walkEnd(): bigint {
    return this.#arg[4];
  }

  /**
   * The runs of `[start, end)`, calling the ioctl from each `walk_end` until the walk reaches `end`.
   *
   * @param fd An open `/proc/<pid>/pagemap`.
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned, above `start`.
   * @param anonOnly Leave out page-cache pages.
   * @param path The file, for errors.
   * @param pid The pid, for errors.
   * @param query Another query than present-or-swapped pages (see {@link call}).
   * @returns `[start0, end0, start1, end1, …]`.
   * @throws {SystemError} When the kernel refuses, or the walk does not advance.
   */
  runs(
    fd: number,
    start: bigint,
    end: bigint,
    anonOnly: boolean,
    path: string,
    pid: number | "self",
    query?: ScanQuery,
  ): BigUint64Array {
    const runs = new RunBuilder();
    this.scanInto(fd, start, end, anonOnly, path, pid, runs, query);
    return runs.finish();
  }

  /**
   * {@link runs} added to a builder (which a caller may reuse for many scans).
   *
   * @param fd An open `/proc/<pid>/pagemap`.
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned, above `start`.
   * @param anonOnly Leave out page-cache pages.
   * @param path The file, for errors.
   * @param pid The pid, for errors.
   * @param runs Where the runs go.
   * @param query Another query than present-or-swapped pages (see {@link call}).
   * @throws {SystemError} When the kernel refuses, or the walk does not advance.
   */
  scanInto(
    fd: number,
    start: bigint,
    end: bigint,
    anonOnly: boolean,
    path: string,
    pid: number | "self",
    runs: RunBuilder,
    query?: ScanQuery,
  ): void {
    const v = this.#vec32;
    let cur = start;
    // Each call either fills the vector or reaches `end`, so the bound is generous.
    for (let calls = 0; cur < end; calls++) {
      if (calls > 1 + Number((end - start) / BigInt(PAGE_SIZE))) {
        throw systemError("ioctl PAGEMAP_SCAN", 5, /* EIO */ `${path} at ${hex(cur)}: no progress`);
      }
      const n = this.call(fd, cur, end, anonOnly, path, pid, query);
      for (let i = 0, k = 0; i < n; i++, k += 6) {
        runs.add(v[k] + v[k + 1] * 4294967296, v[k + 2] + v[k + 3] * 4294967296);
      }
      const walkEnd = this.walkEnd;
      if (walkEnd <= cur) {
        throw systemError(
          "ioctl PAGEMAP_SCAN",
          5, /* EIO */
          `${path} at ${hex(cur)}: walk_end did not advance`,
        );
      }
      cur = walkEnd;
    }
  }

  /**
   * The runs of present or swapped pages of `[start, end)`, and among them the runs whose pages carry category
   * `bit`: both from one walk of the page tables (a live checkpoint's freeze reads the pages to persist and the
   * pages written since they were write-protected, `PAGE_IS.WRITTEN`, at once).
   *
   * @param fd An open `/proc/<pid>/pagemap`.
   * @param start First address, page aligned.
   * @param end One past the last address, page aligned, above `start`.
   * @param bit The category to split on (one `PAGE_IS.*` bit).
   * @param path The file, for errors.
   * @param pid The pid, for errors.
   * @returns `all` and `marked`, each `[start0, end0, start1, end1, …]`; `marked` is part of `all`.
   * @throws {SystemError} When the kernel refuses, or the walk does not advance.
   */
  runsSplit(
    fd: number,
    start: bigint,
    end: bigint,
    bit: bigint,
    path: string,
    pid: number | "self",
  ): { all: BigUint64Array; marked: BigUint64Array } {
    const all = new RunBuilder(), marked = new RunBuilder();
    const v = this.#vec32;
    const query: ScanQuery = {
      flags: 0n,
      categoryInverted: guardKnown ? PAGE_IS_GUARD : 0n,
      categoryMask: guardKnown ? PAGE_IS_GUARD : 0n,
      categoryAnyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
      // PRESENT and SWAPPED returned too: asked for WRITTEN alone, the kernel takes a fast path that counts every
      // pte without the uffd-wp bit as written, a page under migration too (ffi/helper/live.c, lv_verify).
      returnMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | bit,
    };
    const want = Number(bit);
    let cur = start;
    for (let calls = 0; cur < end; calls++) {
      if (calls > 1 + Number((end - start) / BigInt(PAGE_SIZE))) {
        throw systemError("ioctl PAGEMAP_SCAN", 5, /* EIO */ `${path} at ${hex(cur)}: no progress`);
      }
      const n = this.call(fd, cur, end, false, path, pid, query);
      for (let i = 0, k = 0; i < n; i++, k += 6) {
        const s = v[k] + v[k + 1] * 4294967296, e = v[k + 2] + v[k + 3] * 4294967296;
        all.add(s, e);
        if (v[k + 4] & want) marked.add(s, e);
      }
      const walkEnd = this.walkEnd;
      if (walkEnd <= cur) {
        throw systemError(
          "ioctl PAGEMAP_SCAN",
          5,
          /* EIO */ `${path} at ${hex(cur)}: walk_end did not advance`,
        );
      }
      cur = walkEnd;
    }
    return { all: all.finish(), marked: marked.finish() };
  }
}
