/**
 * Zero-page detection: a populated page that is all zero is a hole. Runs in the C helper (vectorised OR over
 * each page, stopping at the first non-zero word).
 *
 * @module
 */

import { helper } from "../../ffi/helper.ts";
import { ptrOf } from "../../ffi/libc.ts";

/**
 * Which pages of local memory `[addr, addr + len)` are entirely zero.
 *
 * @param addr Address of readable memory in this process, page aligned.
 * @param len Length in bytes, a multiple of `pageSize`.
 * @param pageSize The page size.
 * @param out Optional output, at least `len / pageSize` bytes; reused to avoid allocation.
 * @returns One byte per page: 1 when the page is all zero, else 0.
 */
export function findZeroPages(addr: bigint, len: number, pageSize: number, out?: Uint8Array): Uint8Array {
  if (!Number.isInteger(pageSize) || pageSize < 64 || pageSize % 64 !== 0) {
    throw new RangeError(`Cannot scan with page size ${pageSize}: expected a positive multiple of 64`);
  }
  if (!Number.isInteger(len) || len < 0 || len % pageSize !== 0) {
    throw new RangeError(`Cannot scan ${len} bytes: not a multiple of ${pageSize}`);
  }
  const pages = len / pageSize;
  const result = out && out.length >= pages ? out.subarray(0, pages) : new Uint8Array(pages);
  if (pages > 0) helper().cryo_zero_pages(ptrOf(addr), BigInt(len), BigInt(pageSize), result);
  return result;
}
