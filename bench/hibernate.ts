/**
 * Hibernate and wake another process (lib/ops/hibernate.ts, lib/ops/wake.ts) holding 1 GiB (64 MiB with
 * `--quick`) of random data, in the same run as its baselines:
 *
 * - hibernate (persist, fsync, release) against a checkpoint with fsync of the same process;
 * - eager wake against the C pipeline loading the same bytes into the released memory (pread +
 *   `process_vm_writev`);
 * - lazy wake: the time until the target runs again (against the eager wake), the first touched page's
 *   service and the p99 of a touched page while the background load runs (the target reads random pages,
 *   timing each read; against the same reads once every page is back).
 *
 * memcr rows need `MEMCR` (a memcr binary) or `MEMCR_SRC`; without them they are skipped with a note.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { pipelineDump, pipelineLoad } from "./peers.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { hibernate } from "../lib/ops/hibernate.ts";
import { wake } from "../lib/ops/wake.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow };

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** `lat` of the target: first read, p50, p99, max, in ms. */
function parseLat(answer: string): { first: number; p50: number; p99: number; max: number } {
  const [first, p50, p99, max] = answer.split(" ").map((x) => Number(x) / 1e6);
  return { first, p50, p99, max };
}

/**
 * Measure hibernate and wake.
 *
 * @param opts `quick` for 64 MiB; `runs` repetitions.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const bytes = opts.quick ? 64 * MiB : GiB;
  const label = bytes >= GiB ? `${bytes / GiB} GiB` : `${bytes / MiB} MiB`;
  const touches = opts.quick ? 300 : 2000;
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-bench-hib-" });
  const s: Record<string, number[]> = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  const target = Target.start();
  try {
    const addr = await target.map(bytes);
    await target.fill(addr, bytes, "random", 1);
    const image = `${dir}/h.cryo`;
    const dump = `${dir}/pipeline.dump`;
    await pipelineDump(target.pid, addr, bytes, dump, { stop: true });
    const lat = (n = touches) => `lat 0x${addr.toString(16)} ${bytes} ${n} ${Date.now() % 1000}`;
    for (let run = 0; run < opts.runs; run++) {
      let t = performance.now();
      await checkpoint(target.pid, `${dir}/c.cryo`, { fsync: true });
      add("checkpoint", performance.now() - t);
      await Deno.remove(`${dir}/c.cryo`);

      t = performance.now();
      const h = await hibernate(target.pid, image);
      add("hibernate", performance.now() - t);
      add("freed", h.freedBytes);
      add("persisted", h.dataBytes);
      add("imageBytes", h.imageBytes);
      // The C pipeline writes the same bytes into the released memory (the target stays stopped meanwhile:
      // no SIGSTOP/SIGCONT of its own), then a wake finishes the rest and resumes it.
      add("pipe.load", (await pipelineLoad(target.pid, addr, bytes, dump, { stop: false })).ms);
      await wake(target.pid, image);

      await hibernate(target.pid, image);
      t = performance.now();
      await wake(target.pid, image);
      add("wake", performance.now() - t);

      await hibernate(target.pid, image);
      let touched: Promise<string> | undefined;
      const w = await wake(target.pid, image, {
        lazy: true,
        onResumed: async () => {
          touched = target.cmd(lat());
          await new Promise((r) => setTimeout(r, 1)); // let the command go out before the background load
        },
      });
      add("lazy.resumed", w.stoppedMs);
      add("lazy.total", w.totalMs);
      add("lazy.faults", w.faults?.faults ?? 0);
      const during = parseLat(await touched!);
      add("lazy.first", during.first);
      add("lazy.p99", during.p99);
      add("resident.p99", parseLat(await target.cmd(lat())).p99);
    }
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const group = `hibernate ${label} random`;
  const memcr = Deno.env.get("MEMCR") || Deno.env.get("MEMCR_SRC");
  const rows: BenchRow[] = [
    {
      group,
      name: "cryo hibernate (persist, fsync, release)",
      samples: s.hibernate,
      unit: "ms",
      baseline: "cryo checkpoint with fsync",
      baselineSamples: s.checkpoint,
      note: `freed ${(median(s.freed) / MiB).toFixed(0)} MiB of VmRSS (measured) for ${
        (median(s.persisted) / MiB).toFixed(0)
      } MiB persisted`,
    },
    { group, name: "resident memory freed (VmRSS before - after)", samples: s.freed, unit: "bytes" },
    { group, name: "image size", samples: s.imageBytes, unit: "bytes" },
    {
      group,
      name: "cryo wake, eager (verify, journal, write, resume)",
      samples: s.wake,
      unit: "ms",
      baseline: "C pipeline: load into the released memory",
      baselineSamples: s["pipe.load"],
    },
    {
      group,
      name: "cryo wake --lazy: until the target runs again",
      samples: s["lazy.resumed"],
      unit: "ms",
      baseline: "cryo wake, eager",
      baselineSamples: s.wake,
      note: "includes verifying the whole image before anything is written",
    },
    {
      group,
      name: "cryo wake --lazy: first touched page served",
      samples: s["lazy.first"],
      unit: "ms",
    },
    {
      group,
      name: "cryo wake --lazy: p99 of a touched page during the background load",
      samples: s["lazy.p99"],
      unit: "ms",
      baseline: "p99 of the same reads, every page resident",
      baselineSamples: s["resident.p99"],
      note: `${touches} random pages read by the target; ${median(s["lazy.faults"])} faults served`,
    },
    {
      group,
      name: "cryo wake --lazy: until every page is back",
      samples: s["lazy.total"],
      unit: "ms",
      baseline: "cryo wake, eager",
      baselineSamples: s.wake,
    },
  ];
  if (!memcr) rows[0].note += "; memcr skipped: set MEMCR (a memcr binary) or MEMCR_SRC to compare";
  else rows[0].note += "; memcr: MEMCR/MEMCR_SRC is set but this module does not drive memcr yet";
  return rows;
}
