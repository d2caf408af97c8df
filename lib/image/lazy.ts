/**
 * How bytes reach this process's memory: lazy mapping of raw runs straight from the image (private,
 * copy-on-write), clearing holes (MADV_DONTNEED: private anonymous pages read as zero and cost no RSS, a private
 * file mapping's copies are dropped so it reads the file again), and releasing memory after a persist. Another
 * process is written by lib/image/remote.ts.
 *
 * The image must not change while it is mapped: untouched pages are read from the file on first access.
 *
 * @module
 */

import { MADV, MAP, PROT } from "../../ffi/constants.ts";
import { errno, libc, mmap, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import type { Perms, Region } from "../kernel/region.ts";

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
    if (s >= e || m.perms.shared) continue; // a hole in shared memory is what the shared object holds: untouched
    const anon = m.inode === 0n;
    const as = ((s + page - 1n) / page) * page;
    const ae = (e / page) * page;
    // MADV_DONTNEED frees private anonymous pages (they read as zero) and drops the copied-on-write pages of a
    // private file mapping (they read the file again): either way the range reads as it did at the checkpoint.
    const dropped = as < ae && libc.madvise(ptrOf(as), ae - as, MADV.DONTNEED) === 0;
    if (!anon) continue; // partial pages of a file mapping: holes are page aligned, never partial
    if (dropped) {
      libc.memset(ptrOf(s), 0, as - s);
      libc.memset(ptrOf(ae), 0, e - ae);
    } else libc.memset(ptrOf(s), 0, e - s);
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
