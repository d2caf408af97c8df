/**
 * Dirty tracking (issue 15): a target holding 1 GiB (64 MiB with `--quick`) of random data, 1% of its pages
 * written between checkpoints (random single pages), measured in the same run as its baselines:
 *
 * - an incremental checkpoint (`parent`, the written pages from the tracking armed at the parent) against a
 *   full checkpoint of the same state: time and stop window;
 * - a rollback that writes back only the pages written since (`snapshot().rollback()`, tracked) against the
 *   full rollback of the same image (`restore(..., { tracking: false })`);
 * - the incremental image's size against the bytes written.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { snapshot } from "../lib/ops/snapshot.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow };

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/**
 * Measure incremental checkpoints and tracked rollbacks.
 *
 * @param opts `quick` for 64 MiB; `runs` repetitions.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const bytes = opts.quick ? 64 * MiB : GiB;
  const label = bytes >= GiB ? `${bytes / GiB} GiB` : `${bytes / MiB} MiB`;
  const pages = bytes / 4096;
  const written = Math.round(pages / 100);
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-bench-inc-" });
  const s: Record<string, number[]> = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  const target = Target.start();
  try {
    const addr = await target.map(bytes);
    await target.fill(addr, bytes, "random", 1);
    const scribble = (seed: number) =>
      target.cmd(`writepages 0x${addr.toString(16)} ${bytes} ${written} ${seed}`);
    let parent = `${dir}/0.cryo`;
    await checkpoint(target.pid, parent, { track: true });
    for (let run = 1; run <= opts.runs; run++) {
      await scribble(run);
      const full = await checkpoint(target.pid, `${dir}/full.cryo`, {});
      add("full", full.totalMs);
      add("full.stop", full.stoppedMs);
      await Deno.remove(`${dir}/full.cryo`);
      const path = `${dir}/${run}.cryo`;
      const inc = await checkpoint(target.pid, path, { parent, track: true });
      if (!inc.incremental?.tracked) {
        throw new Error(`the incremental checkpoint was not tracked: ${inc.incremental?.reason}`);
      }
      add("inc", inc.totalMs);
      add("inc.stop", inc.stoppedMs);
      add("inc.size", inc.imageBytes / (written * 4096));
      add("inc.bytes", inc.imageBytes);
      parent = path;
    }
  } finally {
    await target.close();
    removeTrackingMark(target.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  // The rollbacks on a fresh target: one tracking per process (the checkpoints above left theirs inside it).
  const fresh = Target.start();
  try {
    const addr = await fresh.map(bytes);
    await fresh.fill(addr, bytes, "random", 1);
    const scribble = (seed: number) =>
      fresh.cmd(`writepages 0x${addr.toString(16)} ${bytes} ${written} ${seed}`);
    await using snap = await snapshot(fresh.pid, { settleMs: 50 });
    await snap.rollback(); // the first one verifies the image in full
    for (let run = 0; run < opts.runs; run++) {
      await scribble(100 + run);
      let t = performance.now();
      const r = await snap.rollback();
      add("rollback", performance.now() - t);
      add("rollback.stop", r.stoppedMs);
      if (!r.tracking?.used) throw new Error(`the rollback was not tracked: ${r.tracking?.reason}`);
      await scribble(200 + run);
      t = performance.now();
      const f = await restore(fresh.pid, snap.path, { tracking: false });
      add("full.rollback", performance.now() - t);
      add("full.rollback.stop", f.stoppedMs);
    }
  } finally {
    await fresh.close();
  }
  const group = `incremental ${label} random, 1% of pages written`;
  const ratio = (a: string, b: string) => median(s[a]) / median(s[b]);
  return [
    {
      group,
      name: "incremental checkpoint (tracked, parent)",
      samples: s.inc,
      unit: "ms",
      baseline: "full checkpoint of the same state",
      baselineSamples: s.full,
      goal: "≤ 5% of the full checkpoint",
      met: ratio("inc", "full") <= 0.05,
    },
    {
      group,
      name: "incremental checkpoint: stop window",
      samples: s["inc.stop"],
      unit: "ms",
      baseline: "full checkpoint: stop window",
      baselineSamples: s["full.stop"],
      goal: "≤ 5% of the full checkpoint's",
      met: ratio("inc.stop", "full.stop") <= 0.05,
    },
    {
      group,
      name: "incremental image size / bytes written",
      samples: s["inc.size"],
      unit: "ratio",
      goal: "≤ 1.05",
      met: median(s["inc.size"]) <= 1.05,
      note: `${(median(s["inc.bytes"]) / MiB).toFixed(1)} MiB for ${
        (written * 4096 / MiB).toFixed(1)
      } MiB written`,
    },
    {
      group,
      name: "rollback, tracked (snapshot().rollback())",
      samples: s.rollback,
      unit: "ms",
      baseline: "full rollback (tracking: false)",
      baselineSamples: s["full.rollback"],
      goal: "≤ 10 ms",
      met: median(s.rollback) <= 10,
    },
    {
      group,
      name: "rollback, tracked: stop window",
      samples: s["rollback.stop"],
      unit: "ms",
      baseline: "full rollback: stop window",
      baselineSamples: s["full.rollback.stop"],
    },
  ];
}
