/**
 * How bytes reach a destination: lazy mapping of raw runs straight from the image (private, copy-on-write),
 * zeroing holes (MADV_DONTNEED for private anonymous memory, so they cost no RSS), releasing memory after a
 * persist, and writing another process (`process_vm_writev`, `/proc/<pid>/mem` for read-only pages).
 *
 * The image must not change while it is mapped: untouched pages are read from the file on first access.
 *
 * @module
 */

import { MADV, MAP, O, PROT } from "../../ffi/constants.ts";
import { errno, hex, libc, mmap, open, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { SystemError } from "../errors.ts";
import type { Perms, Region } from "../region.ts";
import { findZeroPages } from "../zero.ts";
import { transferRemote } from "./sources.ts";
import { Pagemap } from "../pagemap.ts";

/**
 * Whether every region that overlaps `[start, end)` is private anonymous memory, where a page that is not
 * present reads as zero (so zeroing may skip it).
 *
 * @param regions Regions (an image's region table, or the target's).
 * @param start First address.
 * @param end One past the last.
 * @returns True when some region overlaps and all that do are private and anonymous.
 */
export function anonymousRange(
  regions: readonly (Region & { relocatable?: boolean })[],
  start: bigint,
  end: bigint,
): boolean {
  let any = false;
  for (const g of regions) {
    if (g.relocatable || g.end <= start || g.start >= end) continue;
    if (g.inode !== 0n || g.perms.shared || g.kind === "file" || g.kind === "deleted") return false;
    any = true;
  }
  return any;
}

/**
 * The mmap protection bits of region perms.
 *
 * @param p The perms.
 * @returns PROT_* bits.
 */
export function protOf(p: Perms): number {
  return (p.read ? PROT.READ : 0) | (p.write ? PROT.WRITE : 0) | (p.exec ? PROT.EXEC : 0);
}

/**
 * Map the page-aligned part of a raw run from the image over `[addr, addr + len)` with
 * `MAP_PRIVATE | MAP_FIXED` (copy-on-write; pages are read from the file when first touched).
 *
 * @param fd The image, open for reading.
 * @param fileOffset The run's (page-aligned) offset in the image.
 * @param addr Where it goes (page aligned, or nothing is mapped).
 * @param len Bytes of the run.
 * @param prot Protection of the mapping.
 * @returns How many bytes were mapped (a multiple of the page size; the caller copies the rest).
 */
export function mapRun(fd: number, fileOffset: number, addr: bigint, len: number, prot: number): number {
  if (addr % BigInt(PAGE_SIZE) !== 0n || fileOffset % PAGE_SIZE !== 0) return 0;
  const n = len - (len % PAGE_SIZE);
  if (n > 0) mmap(addr, BigInt(n), prot, MAP.PRIVATE | MAP.FIXED, fd, BigInt(fileOffset));
  return n;
}

/**
 * Make `[addr, addr + len)` of this process read as zero: `MADV_DONTNEED` for the page-aligned parts of
 * private anonymous memory (the pages are freed), `memset` elsewhere.
 *
 * @param addr First address.
 * @param len Bytes.
 * @param existing The target regions that cover the range.
 */
export function clearRange(addr: bigint, len: number, existing: readonly Region[]): void {
  const end = addr + BigInt(len);
  const page = BigInt(PAGE_SIZE);
  for (const m of existing) {
    const s = m.start > addr ? m.start : addr;
    const e = m.end < end ? m.end : end;
    if (s >= e) continue;
    const anon = !m.perms.shared && (m.inode === 0n);
    const as = anon ? ((s + page - 1n) / page) * page : e;
    const ae = anon ? (e / page) * page : e;
    if (as < ae) {
      libc.memset(ptrOf(s), 0, as - s);
      libc.madvise(ptrOf(as), ae - as, MADV.DONTNEED) === 0 || libc.memset(ptrOf(as), 0, ae - as);
      libc.memset(ptrOf(ae), 0, e - ae);
    } else {
      libc.memset(ptrOf(s), 0, e - s);
    }
  }
}

/**
 * Release `[addr, addr + len)` of this process after a successful persist (`MADV_DONTNEED`): private
 * anonymous pages are freed and read as zero until they are loaded back.
 *
 * @param addr First address (page aligned).
 * @param len Bytes (a multiple of the page size).
 */
export function releaseMemory(addr: bigint, len: number | bigint): void {
  if (libc.madvise(ptrOf(addr), BigInt(len), MADV.DONTNEED) !== 0) {
    throw systemError("madvise", errno(), `MADV_DONTNEED ${len} bytes at ${hex(addr)}`);
  }
}

const ZEROS = new Uint8Array(1 << 20);
const zerosAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(ZEROS)));

/** Writes another process's memory: `process_vm_writev`, falling back to `/proc/<pid>/mem` (read-only pages). */
export class RemoteWriter implements Disposable {
  #mem = -1;
  #pagemap: Pagemap | undefined;
  #bounce: Uint8Array<ArrayBuffer> | undefined;
  #zero = new Uint8Array(0);

  /** Write process `pid`. */
  constructor(readonly pid: number) {}

  /**
   * Write `bytes` at `addr` in the process.
   *
   * @param addr Remote address.
   * @param bytes Local bytes (e.g. a view of the mapped image).
   */
  write(addr: bigint, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.#writeAt(addr, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), bytes.length);
  }

  /**
   * Make `[addr, addr + len)` read as zero, writing only pages that are not zero already (so never-populated
   * pages stay unpopulated). In private anonymous memory (`anonymous`), only the pages the process's pagemap
   * shows present or swapped are read at all: a page never populated reads as zero already.
   *
   * @param addr Remote address.
   * @param len Bytes.
   * @param anonymous Whether the range is private anonymous memory (see {@link anonymousRange}).
   */
  zero(addr: bigint, len: number, anonymous = false): void {
    const page = BigInt(PAGE_SIZE);
    const end = addr + BigInt(len);
    const a = ((addr + page - 1n) / page) * page, e = (end / page) * page;
    if (!anonymous || a >= e) return this.#zeroScan(addr, len);
    if (a > addr) this.#zeroScan(addr, Number(a - addr));
    this.#pagemap ??= Pagemap.open(this.pid);
    const runs = this.#pagemap.runs(a, e);
    for (let i = 0; i < runs.length; i += 2) this.#zeroScan(runs[i], Number(runs[i + 1] - runs[i]));
    if (end > e) this.#zeroScan(e, Number(end - e));
  }

  /** Read `[addr, addr + len)` and write zeros over its pages that are not zero. */
  #zeroScan(addr: bigint, len: number): void {
    const size = 16 << 20;
    this.#bounce ??= new Uint8Array(size);
    const local = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#bounce)));
    for (let off = 0; off < len; off += size) {
      const n = Math.min(size, len - off);
      const a = addr + BigInt(off);
      transferRemote("process_vm_readv", this.pid, local, a, n);
      const pages = Math.floor(n / PAGE_SIZE);
      if (this.#zero.length < pages) this.#zero = new Uint8Array(pages);
      const z = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zero);
      for (let i = 0; i < pages;) {
        let j = i;
        while (j < pages && z[j] === z[i]) j++;
        if (!z[i]) this.#writeZeros(a + BigInt(i * PAGE_SIZE), (j - i) * PAGE_SIZE);
        i = j;
      }
      if (n > pages * PAGE_SIZE) this.#writeZeros(a + BigInt(pages * PAGE_SIZE), n - pages * PAGE_SIZE);
    }
  }

  #writeZeros(addr: bigint, len: number): void {
    for (let off = 0; off < len; off += ZEROS.length) {
      this.#writeAt(addr + BigInt(off), zerosAddr, Math.min(ZEROS.length, len - off));
    }
  }

  #writeAt(remote: bigint, local: bigint, len: number): void {
    try {
      transferRemote("process_vm_writev", this.pid, local, remote, len);
      return;
    } catch (e) {
      if (!(e instanceof SystemError) || e.code !== "EFAULT") throw e;
    }
    if (this.#mem < 0) this.#mem = open(`/proc/${this.pid}/mem`, O.RDWR | O.CLOEXEC);
    let done = 0;
    while (done < len) {
      const n = libc.pwrite(
        this.#mem,
        ptrOf(local + BigInt(done)),
        BigInt(len - done),
        remote + BigInt(done),
      );
      if (n <= 0n) {
        throw systemError(
          "pwrite",
          n < 0n ? errno() : 5,
          `/proc/${this.pid}/mem at ${hex(remote + BigInt(done))}`,
        );
      }
      done += Number(n);
    }
  }

  /** Close `/proc/<pid>/mem` and the pagemap. Idempotent. */
  close(): void {
    if (this.#mem >= 0) libc.close(this.#mem);
    this.#mem = -1;
    this.#pagemap?.close();
    this.#pagemap = undefined;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
