/**
 * The memory budget of one image operation (checkpoint, hibernate, restore, wake): how many bytes of buffers
 * the data path may hold at once, whatever the size of the target. It covers the bounce buffers a pid source
 * is read into and written behind from, the window of a raw image read again to be transcoded (a mapped image
 * counts: its pages are released behind the reader), and the decoded frames a restore holds; each codec worker
 * adds one chunk on top (its input and output). The runtime's own memory (Deno, V8, the loaded libraries) is
 * not part of it.
 *
 * @module
 */

import { PAGE_SIZE } from "../../ffi/libc.ts";

const MiB = 1 << 20;

/** The default budget: 64 MiB (plus one chunk per codec worker). */
export const DEFAULT_MEMORY_BUDGET: number = 64 * MiB;

/** The smallest budget that still lets reads, writes and decoding overlap. */
export const MIN_MEMORY_BUDGET: number = 4 * MiB;

/** How a budget is spent by the data path. */
export interface BudgetShares {
  /** Bytes of one bounce buffer of a pid source (the unit `process_vm_readv` reads and a write-behind writes). */
  bounceSize: number;
  /**
   * Bytes of bounce buffers that may wait for their write (the pool grows to this only while writes fall behind
   * the reads).
   */
  writeBehind: number;
  /** Bytes of a raw image mapped at once while it is transcoded (released behind the reader). */
  window: number;
}

/**
 * Split a budget between the parts of the data path. Bounce buffers are 1 MiB, and at most 8 MiB of them wait
 * for their write: measured (512 MiB, in-process, 4 runs each), 1 MiB buffers with 8 MiB of write-behind took
 * 420-610 ms where 8 MiB buffers with 32 MiB took 1.5-4.8 s: a buffer that fits the cache is read into, zero
 * scanned, checksummed and written out while it is still there, and memory touched for the first time costs a
 * fault per page. More write-behind than that did not help. A quarter of the budget (at most 8 MiB) is the
 * transcoding window; the rest is left for frames, records and the write queue.
 *
 * @param budget Bytes (default {@link DEFAULT_MEMORY_BUDGET}).
 * @returns The shares.
 * @throws {RangeError} When the budget is below {@link MIN_MEMORY_BUDGET} or not an integer.
 */
export function budgetShares(budget: number = DEFAULT_MEMORY_BUDGET): BudgetShares {
  checkBudget(budget);
  const pages = (n: number) => Math.max(PAGE_SIZE, Math.floor(n / PAGE_SIZE) * PAGE_SIZE);
  const bounceSize = pages(Math.min(MiB, budget / 16));
  return {
    bounceSize,
    writeBehind: Math.max(
      3 * bounceSize,
      Math.floor(Math.min(8 * MiB, budget / 2) / bounceSize) * bounceSize,
    ),
    window: pages(Math.min(8 * MiB, budget / 4)),
  };
}

/**
 * Check a memory budget.
 *
 * @param budget Bytes.
 * @throws {RangeError} When it is below {@link MIN_MEMORY_BUDGET} or not an integer.
 */
export function checkBudget(budget: number): void {
  if (!Number.isSafeInteger(budget) || budget < MIN_MEMORY_BUDGET) {
    throw new RangeError(
      `Cannot work in a memory budget of ${budget} bytes: expected an integer of at least ${MIN_MEMORY_BUDGET}`,
    );
  }
}
