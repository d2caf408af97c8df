/**
 * Stopping the writers of another process: `freeze()` (registers and rseq recorded for every thread) +
 * `thaw()` latency for a cryo_target child with 1, 16 and 256 threads spinning on counters. Goal: ≤ 20 ms at
 * 256 threads.
 *
 * Two figures per size. With the caller's thread at `SCHED_FIFO` (priority 1) during the measurement: what
 * freeze and thaw cost. With the caller at normal priority: what a caller sees on a box whose cores are
 * saturated by the 256 spinners, where its own thread waits its turn among them before and after the call
 * (on 2 cores that is hundreds of ms, whatever the call does); informational.
 *
 * @module
 */

import { helper } from "../ffi/helper.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { Target } from "../tests/_target.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const SYS_sched_setattr = 314n;
const SYS_sched_getattr = 315n;

/** Run `fn` with the calling thread at SCHED_FIFO 1 (needs CAP_SYS_NICE); false when that was refused. */
async function atFifo<T>(fn: () => Promise<T>): Promise<{ ok: boolean; value: T }> {
  const saved = new Uint8Array(56);
  const fifo = new Uint8Array(56);
  const v = new DataView(fifo.buffer);
  v.setUint32(0, 56, true);
  v.setUint32(4, 1, true); // SCHED_FIFO
  v.setUint32(20, 1, true); // priority 1
  const ptr = (b: Uint8Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
  const { cryo_syscall6: syscall } = helper(); // -errno on failure
  const got = syscall(SYS_sched_getattr, 0n, ptr(saved), 56n, 0n, 0n, 0n);
  const ok = got === 0n && syscall(SYS_sched_setattr, 0n, ptr(fifo), 0n, 0n, 0n, 0n) === 0n;
  try {
    return { ok, value: await fn() };
  } finally {
    if (ok) {
      new DataView(saved.buffer).setUint32(0, 56, true);
      syscall(SYS_sched_setattr, 0n, ptr(saved), 0n, 0n, 0n, 0n);
    }
  }
}

async function measure(pid: number, threads: number, runs: number): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < runs + 1; i++) {
    const t0 = performance.now();
    const frozen = freeze(pid);
    frozen.thaw();
    const ms = performance.now() - t0;
    if (frozen.threads.length !== threads + 1) {
      throw new Error(`froze ${frozen.threads.length} threads, expected ${threads + 1}`);
    }
    if (i > 0) samples.push(ms); // the first round warms up
    await sleep(10); // let every thread run again
  }
  return samples;
}

/**
 * Measure freeze + thaw latency.
 *
 * @param opts `quick`: at most 5 samples per figure; `runs`: samples per figure.
 * @returns Two rows per thread count.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const runs = Math.max(3, opts.quick ? Math.min(opts.runs, 5) : opts.runs);
  for (const threads of [1, 16, 256]) {
    const target = Target.start();
    try {
      await target.cmd(`threads ${threads}`);
      await sleep(50);
      const fifo = await atFifo(() => measure(target.pid, threads, runs));
      const goal = threads === 256 ? "≤ 20 ms" : undefined;
      rows.push({
        group: "freeze + thaw a child (registers + rseq of every thread)",
        name: `${threads + 1} threads, caller SCHED_FIFO`,
        samples: fifo.value,
        unit: "ms",
        goal,
        met: goal ? median(fifo.value) <= 20 : undefined,
        note: fifo.ok ? undefined : "SCHED_FIFO refused (no CAP_SYS_NICE): measured at normal priority",
      });
      const normal = await measure(target.pid, threads, runs);
      rows.push({
        group: "freeze + thaw a child (registers + rseq of every thread)",
        name: `${threads + 1} threads, caller at normal priority`,
        samples: normal,
        unit: "ms",
        note: threads >= 16
          ? `includes the caller's own wait for a core among ${threads} spinning threads`
          : undefined,
      });
    } finally {
      await target.close();
    }
  }
  return rows;
}
