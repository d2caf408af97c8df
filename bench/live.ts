/**
 * Live checkpoints (lib/ops/checkpoint_live.ts) against stopped ones and gdb's gcore, in the same run on the same
 * target: 1 GiB of random data, and 8 GiB mapped with every 64th page written (128 MiB of data: sparse). With
 * `--quick`: 64 MiB and 512 MiB sparse.
 *
 * - the stop window (the target's 1 ms heartbeat thread records its longest gap: the longer of a live
 *   checkpoint's two stops, the arm's and the freeze's) of a live checkpoint, against the stopped checkpoint's and
 *   gcore's (goal ≤ 10 ms);
 * - the total time of a live checkpoint against the stopped checkpoint's (goal ≤ 1.3×);
 * - the target's own throughput during the copy: a thread of the target counts in a loop; its rate while a live
 *   checkpoint runs, against its rate over as long a time with nothing running (goal ≥ 0.7×, i.e. a drop of at
 *   most 30%), and the same for a stopped checkpoint.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { findGcore, gcore, withStopWindow } from "./peers.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { median, ratio } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow };

const MiB = 2 ** 20;
const GiB = 2 ** 30;

interface Workload {
  label: string;
  bytes: number;
  kind: string;
  gcore: boolean;
}

type Samples = Record<string, number[]>;

/** The spinning thread's counter. */
async function count(target: Target): Promise<number> {
  return Number((await target.cmd("counters")).split(" ")[0]);
}

/** Counts per ms of the target's spinning thread while `op` runs. */
async function rateDuring<T>(target: Target, op: () => Promise<T>): Promise<{ value: T; rate: number }> {
  const c0 = await count(target), t0 = performance.now();
  const value = await op();
  const c1 = await count(target), t1 = performance.now();
  return { value, rate: (c1 - c0) / (t1 - t0) };
}

async function measure(w: Workload, opts: BenchOptions, dir: string): Promise<BenchRow[]> {
  const s: Samples = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  const target = Target.start();
  const hasGcore = w.gcore && findGcore() !== null;
  try {
    await target.cmd("heartbeat");
    await target.cmd("threads 1");
    const addr = await target.map(w.bytes);
    await target.fill(addr, w.bytes, w.kind, 1);
    const image = `${dir}/live.cryo`;
    const take = async (live: boolean, key: string) => {
      const r = await withStopWindow(
        target,
        () => rateDuring(target, () => checkpoint(target.pid, image, { fsync: false, live })),
      );
      add(`${key}.stop`, r.stopMs);
      add(`${key}.cryoStop`, r.value.value.stoppedMs);
      add(`${key}.total`, r.value.value.totalMs);
      add(`${key}.rate`, r.value.rate);
      if (live) {
        add("live.early", r.value.value.live?.earlyPages ?? 0);
        add("live.armStop", r.value.value.live?.armStoppedMs ?? 0);
        add("live.freezeStop", r.value.value.live?.freezeStoppedMs ?? 0);
      }
      // The same time with nothing running: the rate the copy is compared to.
      const idle = await rateDuring(
        target,
        () => new Promise((res) => setTimeout(res, r.value.value.totalMs)),
      );
      add(`${key}.idle`, idle.rate);
      await Deno.remove(image);
    };
    for (let run = 0; run < opts.runs; run++) {
      // Live and stopped take turns going first (page cache warmth).
      if (run % 2 === 0) {
        await take(true, "live");
        await take(false, "stopped");
      } else {
        await take(false, "stopped");
        await take(true, "live");
      }
      if (hasGcore) {
        const g = await withStopWindow(target, () => gcore(target.pid, `${dir}/core`));
        add("gcore.stop", g.stopMs);
        await Deno.remove(g.value.path);
      }
    }
  } finally {
    await target.close();
  }
  const group = `live checkpoint ${w.label}`;
  const liveRate = s["live.rate"].map((r, i) => r / s["live.idle"][i]);
  const stoppedRate = s["stopped.rate"].map((r, i) => r / s["stopped.idle"][i]);
  const totalRatio = ratio(s["live.total"], s["stopped.total"]);
  const rows: BenchRow[] = [
    {
      group,
      name: "stop window, live (the target's heartbeat gap)",
      samples: s["live.stop"],
      unit: "ms",
      baseline: "stop window, stopped checkpoint",
      baselineSamples: s["stopped.stop"],
      goal: "≤ 10 ms",
      met: median(s["live.stop"]) <= 10,
      note:
        `cryo's own figures (freeze to thaw): live ${
          median(s["live.armStop"]).toFixed(1)
        } ms for the arm (the ` +
        `userfaultfd), ${median(s["live.freezeStop"]).toFixed(1)} ms for the freeze; stopped ${
          median(s["stopped.cryoStop"]).toFixed(1)
        } ms`,
    },
  ];
  if (hasGcore) {
    rows.push({
      group,
      name: "stop window, live, against gcore",
      samples: s["live.stop"],
      unit: "ms",
      baseline: "stop window, gdb gcore",
      baselineSamples: s["gcore.stop"],
    });
  }
  rows.push(
    {
      group,
      name: "total time, live",
      samples: s["live.total"],
      unit: "ms",
      baseline: "total time, stopped checkpoint",
      baselineSamples: s["stopped.total"],
      goal: "≤ 1.3× stopped",
      met: totalRatio !== undefined && totalRatio <= 1.3,
      note: `pages copied early because of a write: median ${median(s["live.early"])}`,
    },
    {
      group,
      name: "target throughput during a live checkpoint / idle",
      samples: liveRate,
      unit: "ratio",
      goal: "≥ 0.7 (a drop of at most 30%)",
      met: median(liveRate) >= 0.7,
      note: `during a stopped checkpoint: median ${median(stoppedRate).toFixed(2)}; a thread of the target ` +
        "counting in a loop, from the call to its return, against as long with nothing running; 2 cores shared",
    },
  );
  if (w.gcore && !hasGcore) rows[0].note += "; gcore skipped: gdb is not installed (apt-get install gdb)";
  return rows;
}

/**
 * Measure live checkpoints.
 *
 * @param opts `quick` for smaller targets; `runs` repetitions.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const workloads: Workload[] = opts.quick
    ? [
      { label: "64 MiB random", bytes: 64 * MiB, kind: "random", gcore: true },
      { label: "512 MiB sparse (1/64 written)", bytes: 512 * MiB, kind: "stride:64", gcore: false },
    ]
    : [
      { label: "1 GiB random", bytes: GiB, kind: "random", gcore: true },
      { label: "8 GiB sparse (1/64 written)", bytes: 8 * GiB, kind: "stride:64", gcore: false },
    ];
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-bench-live-" });
  try {
    const rows: BenchRow[] = [];
    for (const w of workloads) rows.push(...await measure(w, opts, dir));
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
