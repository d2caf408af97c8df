/**
 * What every checkpoint, stopped or live (checkpoint.ts, checkpoint_live.ts), records of a frozen process besides
 * its memory, and the figures it reports of what it took.
 *
 * @module
 */

import type { Frozen } from "../kernel/freeze.ts";
import type { Decision } from "../kernel/policy.ts";
import type { Region } from "../kernel/region.ts";
import { encodeThreads } from "../kernel/threads.ts";
import { readThreadKernelStates } from "../kernel/thread_kernel.ts";
import { encodeIdentity, processIdentity } from "../kernel/identity.ts";
import { encodeLayout } from "../kernel/layout_section.ts";
import { encodeKernelState, readKernelState } from "../kernel/kernel_state.ts";
import type { ImageSummary } from "../image/persister.ts";
import { CryoError } from "../errors.ts";

/**
 * The sections of the process, read while it is frozen: its threads (when any were recorded; each with its
 * signal mask, pending signals, sigaltstack and robust list), its identity, its
 * whole layout (kept regions and left out ones) and the kernel state a rollback leaves alone.
 *
 * @param pid The process.
 * @param frozen It, frozen.
 * @param decisions The policy's decisions for its regions.
 * @param altStacks Whether to read the alternate signal stacks (an injected step of each thread blocked in a
 *   system call; `CheckpointOptions.altStacks`).
 * @returns `[name, bytes]` in the order they are added to the image.
 */
export function processSections(
  pid: number,
  frozen: Frozen,
  decisions: readonly Decision<Region>[],
  altStacks = false,
): [string, Uint8Array][] {
  const out: [string, Uint8Array][] = [];
  if (frozen.threads.length) {
    const kernel = readThreadKernelStates(frozen, altStacks); // signal mask, pending, sigaltstack, robust list
    out.push([
      "threads",
      encodeThreads(frozen.threads.map((t) => ({ ...t, kernel: kernel.get(t.tid) ?? null }))),
    ]);
  }
  out.push(["identity", encodeIdentity(processIdentity(pid))]);
  out.push(["layout", encodeLayout(decisions.map((d) => d.region))]);
  out.push(["kernel", encodeKernelState(readKernelState(pid))]);
  return out;
}

/** What every checkpoint took (part of a `CheckpointResult`). */
export interface TakenFigures {
  /** Regions persisted. */
  regions: number;
  /** Regions excluded, each with the policy's reason. */
  excluded: { start: bigint; end: bigint; path: string; reason: string }[];
  /** Threads frozen (and recorded, with `registers`). */
  threads: number;
  /** Bytes of data persisted (decoded). */
  dataBytes: number;
  /** Bytes of holes (unpopulated or all-zero). */
  holeBytes: number;
  /** Index records. */
  records: number;
  /** The image's size in bytes. */
  imageBytes: number;
}

/**
 * The figures of a finished image every checkpoint reports.
 *
 * @param decisions The policy's decisions for the process's regions.
 * @param frozen The process, frozen.
 * @param summary What the persister wrote.
 * @returns Regions kept and left out (with the policy's reason), threads, and the image's totals.
 */
export function takenFigures(
  decisions: readonly Decision<Region>[],
  frozen: Frozen,
  summary: ImageSummary,
): TakenFigures {
  return {
    regions: decisions.filter((d) => d.persist).length,
    excluded: decisions.filter((d) => !d.persist).map((d) => ({
      start: d.region.start,
      end: d.region.end,
      path: d.region.path,
      reason: d.reason,
    })),
    threads: frozen.tids.length,
    dataBytes: summary.dataBytes,
    holeBytes: summary.holeBytes,
    records: summary.records,
    imageBytes: summary.fileSize,
  };
}

/**
 * Disk space an image takes (blocks × 512): 0 for a stream or a descriptor.
 *
 * @param out The image path (`"-"`: stdout) or a descriptor.
 * @returns Bytes.
 */
export function allocatedBytes(out: string | { fd: number }): number {
  return typeof out === "string" && out !== "-" ? (Deno.statSync(out).blocks ?? 0) * 512 : 0;
}

/**
 * What a checkpoint that failed throws: the signal's reason when it was aborted (whatever the abort broke on
 * the way), else the error itself.
 *
 * @param e What was caught.
 * @param signal The checkpoint's signal.
 * @returns The error to throw.
 */
export function failure(e: unknown, signal?: AbortSignal): unknown {
  if (signal?.aborted && !(e instanceof CryoError && e === signal.reason)) return signal.reason;
  return e;
}
