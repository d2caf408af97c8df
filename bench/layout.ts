/**
 * The rollback of a process whose layout changed since the checkpoint, against one whose layout did not (goal
 * ≤ 1.2×). A cryo_target child holds 1 GiB (`--quick`: 64 MiB) of random data in 64 regions (each mapped at its
 * own address with a gap between, so they stay separate); after the checkpoint both cases rewrite every byte
 * (so both restores write the whole size back), and the changed case also unmaps 8 of the regions, maps 8 new
 * ones of the same size (born since, filled) and makes 8 more read-only, and its thread set changes too: a
 * thread of the checkpoint (idle in a timed wait) ends and a new one (a 1 ms heartbeat) starts. The restore
 * maps 8 back, unmaps 8, re-protects 8, creates the ended thread again and ends the new one.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const REGIONS = 64;

/**
 * Measure the rollback with and without layout changes.
 *
 * @param opts `quick` for 64 MiB; `runs` repetitions.
 * @returns Two rows: the unchanged case (baseline) and the changed one.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const total = opts.quick ? 64 * MiB : GiB;
  const each = total / REGIONS;
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-bench-layout-" });
  const same: number[] = [], moved: number[] = [], changes: number[] = [];
  const journaled = { same: [] as number[], moved: [] as number[] };
  const hex = (n: bigint) => `0x${n.toString(16)}`;
  try {
    for (let run = 0; run < opts.runs; run++) {
      for (const changed of run % 2 === 0 ? [false, true] : [true, false]) {
        await using target = Target.start();
        const base = BigInt(await target.cmd(`map ${2 * total}`)); // reserve a range, then place regions in it
        await target.cmd(`unmap ${hex(base)} ${2 * total}`);
        const at = (i: number) => base + BigInt(2 * i * each);
        for (let i = 0; i < REGIONS; i++) {
          await target.cmd(`mapat ${hex(at(i))} ${each}`);
          await target.fill(at(i), each, "random", i + 1);
        }
        await target.cmd("idler"); // a thread idle in a timed wait, in both cases
        const image = `${dir}/layout.cryo`;
        await checkpoint(target.pid, image, { fsync: false });
        for (let i = 0; i < REGIONS; i++) await target.fill(at(i), each, "text", 100 + i);
        if (changed) {
          for (let k = 0; k < 8; k++) {
            await target.cmd(`unmap ${hex(at(8 * k))} ${each}`);
            const born = at(8 * k + 4) + BigInt(each); // in the gap after region 8k+4: free at the checkpoint
            await target.cmd(`mapat ${hex(born)} ${each}`);
            await target.fill(born, each, "random", 200 + k);
            await target.cmd(`protect ${hex(at(8 * k + 2))} ${each} r`);
          }
          await target.cmd("idlerexit"); // ended since: created again
          await target.cmd("heartbeat"); // born since: ended
        }
        const t0 = performance.now();
        const r = await restore(target.pid, image);
        (changed ? moved : same).push(performance.now() - t0);
        (changed ? journaled.moved : journaled.same).push(r.journalBytes / MiB);
        if (changed) {
          changes.push(r.layoutChanges.length);
          if (r.threadsRecreated.length !== 1 || r.threadsEnded.length !== 1) {
            throw new Error(`Cannot measure the changed rollback: threads ${JSON.stringify(r)}`);
          }
        }
        await Deno.remove(image);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const label = total >= GiB ? `${total / GiB} GiB` : `${total / MiB} MiB`;
  const group = `rollback of ${label} in ${REGIONS} regions, every byte changed`;
  const ratio = median(moved) / median(same);
  return [
    { group, name: "layout unchanged", samples: same, unit: "ms" },
    {
      group,
      name: "layout and threads changed (8 regions vanished, 8 born, 8 re-protected; 1 thread ended, 1 born)",
      samples: moved,
      unit: "ms",
      baseline: "layout unchanged",
      baselineSamples: same,
      goal: "≤ 1.2×",
      met: ratio <= 1.2,
      note: `${median(changes)} layout changes; journal ${median(journaled.moved).toFixed(0)} MiB against ${
        median(journaled.same).toFixed(0)
      } MiB unchanged (the 8 born regions are moved aside with mremap, not copied into the journal)`,
    },
  ];
}
