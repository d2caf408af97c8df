/**
 * Performance as users run it: every tool as a fresh process per run, on the same target in the same run.
 * cryo's CLI (`deno run -A cli.ts checkpoint|restore`), gdb's `gcore`, and memcr when `$MEMCR` (a binary) or
 * `$MEMCR_SRC` (a source tree, built outside the project) is given. For each: the wall time of the command
 * (bench/rusage.c), the stop window from the target's own 1 ms heartbeat thread, the tool's peak RSS
 * (`wait4`'s `ru_maxrss`) and the image's allocated bytes (`st_blocks × 512`). Workloads (full / --quick):
 * 1 GiB / 64 MiB random (raw, `--compress zstd:1`, encrypted, restore from the file and streamed on stdin), 4 GiB
 * / 256 MiB sparse with a quarter resident (every fourth page: an image of a record per data page and a hole
 * between, checkpointed, inspected and restored).
 * A second group per workload measures cryo warm, `checkpoint()` inside this process, in the same run.
 *
 * @module
 */

import { checkpoint } from "../mod.ts";
import { Target } from "../tests/_target.ts";
import { fileSize, findGcore, withStopWindow } from "./peers.ts";
import { cryoCli, findMemcr, measured, memcrHibernate } from "./cold_tools.ts";
import { rowsOf, type Samples, type Workload } from "./cold_rows.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow };

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/**
 * Measure the cold figures.
 *
 * @param opts `quick` for the small workloads; `runs` repetitions of every figure.
 * @returns The rows, grouped per workload (cold, then warm).
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const scale = opts.quick ? 64 * MiB : GiB;
  const name = (n: number) => n >= GiB ? `${n / GiB} GiB` : `${n / MiB} MiB`;
  const workloads: Workload[] = [
    { label: `${name(scale)} random`, bytes: scale, resident: scale, kind: "random" },
    {
      label: `${name(4 * scale)} sparse, ${name(scale)} resident`,
      bytes: 4 * scale,
      resident: scale,
      kind: "stride:4",
    },
  ];
  const memcr = await findMemcr();
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-cold-" });
  const rows: BenchRow[] = [];
  try {
    // What starting the CLI costs before it does anything: Deno, module loading, the helper library.
    const start: Samples = {};
    for (let run = 0; run < opts.runs; run++) {
      const c = await cryoCli(["--help"]);
      (start.ms ??= []).push(c.ms);
      (start.rss ??= []).push(c.rssBytes);
    }
    rows.push({ group: "cold start-up", name: "cryo CLI: `cryo --help`", samples: start.ms, unit: "ms" });
    rows.push({ group: "cold start-up", name: "cryo CLI: peak RSS", samples: start.rss, unit: "bytes" });
    for (const w of workloads) rows.push(...await measure(w, opts, dir, memcr));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return rows;
}

async function measure(
  w: Workload,
  opts: BenchOptions,
  dir: string,
  memcr: string | null,
): Promise<BenchRow[]> {
  const s: Samples = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  const hasGcore = findGcore() !== null;
  const sparse = w.kind !== "random";
  await using target = Target.start();
  await target.cmd("heartbeat");
  const addr = await target.map(w.bytes);
  const hex = `0x${addr.toString(16)}`;
  await target.fill(addr, w.bytes, w.kind, 1);
  // gdb reads every page (mapping the zero page into the holes) and memcr frees the region: map a sparse
  // region afresh after those, so that every tool sees the same resident set.
  const reprepare = async () => {
    if (!sparse) return;
    await target.cmd(`unmap ${hex} ${w.bytes}`);
    await target.cmd(`mapat ${hex} ${w.bytes}`);
    await target.fill(addr, w.bytes, w.kind, 1);
  };
  const image = `${dir}/cold.cryo`;
  const keyFile = `${dir}/cold.key`; // for the encrypted checkpoint
  await Deno.writeFile(keyFile, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  const cli = async (key: string, args: string[], stdinFrom?: string) => {
    const c = await withStopWindow(target, () => cryoCli(args, stdinFrom));
    add(`${key}.ms`, c.value.ms);
    add(`${key}.stop`, c.stopMs);
    add(`${key}.rss`, c.value.rssBytes);
  };
  const cryoRuns = async () => {
    // To the page cache, as gcore and memcr write (neither fsyncs).
    await cli("cryo", ["checkpoint", "--pid", String(target.pid), "-o", image, "--no-fsync", "-q"]);
    add("cryo.allocated", (await fileSize(image)).allocated);
    if (!sparse) {
      await target.fill(addr, w.bytes, w.kind, 2); // every page changed since the checkpoint
      await cli("restore", ["restore", "--pid", String(target.pid), "-q", image]);
      // The same image streamed to the restore on stdin (`restore -`: verified chunk by chunk as it comes).
      await target.fill(addr, w.bytes, w.kind, 3);
      await cli("stream", ["restore", "--pid", String(target.pid), "-q", "-"], image);
    } else {
      // A fragmented image (a record per data page, and a hole between): what reading its index costs.
      await cli("inspect", ["inspect", image]);
      await target.fill(addr, w.bytes, w.kind, 2); // every data page changed since the checkpoint
      await cli("restore", ["restore", "--pid", String(target.pid), "-q", image]);
    }
    await Deno.remove(image);
    if (!sparse) {
      const args = ["checkpoint", "--pid", String(target.pid), "-o", image, "--no-fsync", "-q"];
      await cli("zstd", [...args, "--compress", "zstd:1"]);
      add("zstd.allocated", (await fileSize(image)).allocated);
      await Deno.remove(image);
      await cli("sealed", [...args, "--key-file", keyFile]);
      await Deno.remove(image);
    }
    // Warm: the same checkpoint inside this long-lived process.
    const t0 = performance.now();
    await checkpoint(target.pid, image, { fsync: false });
    add("warm.ms", performance.now() - t0);
    await Deno.remove(image);
    await reprepare();
  };
  const peers = async () => {
    if (hasGcore) {
      const core = `${dir}/core`;
      const g = await withStopWindow(target, async () => {
        const c = await measured(findGcore()!, ["-o", core, String(target.pid)]);
        return c;
      });
      add("gcore.ms", g.value.ms);
      add("gcore.stop", g.stopMs);
      add("gcore.rss", g.value.rssBytes);
      add("gcore.allocated", (await fileSize(`${core}.${target.pid}`)).allocated);
      await Deno.remove(`${core}.${target.pid}`);
      await reprepare();
    }
    if (memcr) {
      const mdir = `${dir}/memcr`;
      await Deno.mkdir(mdir, { recursive: true });
      const m = await withStopWindow(target, () => memcrHibernate(memcr, target.pid, mdir));
      add("memcr.ms", m.value.checkpointMs);
      add("memcr.restore", m.value.restoreMs);
      add("memcr.stop", m.stopMs);
      add("memcr.rss", m.value.rssBytes);
      add("memcr.allocated", m.value.allocated);
      await reprepare();
    }
  };
  for (let run = 0; run < opts.runs; run++) {
    // cryo and the peers take turns going first (the page cache a writer gets depends on what ran before).
    if (run % 2 === 0) {
      await cryoRuns();
      await peers();
    } else {
      await peers();
      await cryoRuns();
    }
    // A line per run, so that a long run (memcr takes minutes on the sparse workload) shows where it is.
    const last = (k: string) => s[k] ? `${s[k].at(-1)!.toFixed(0)} ms` : "-";
    console.error(
      `cold ${w.label}, run ${run + 1}: cryo ${last("cryo.ms")} (warm ${last("warm.ms")}), gcore ` +
        `${last("gcore.ms")}, memcr ${last("memcr.ms")}; restore: cryo ${last("restore.ms")}, memcr ` +
        `${last("memcr.restore")}, streamed ${last("stream.ms")}; zstd:1 ${last("zstd.ms")}, encrypted ` +
        `${last("sealed.ms")}`,
    );
  }
  return rowsOf(w, opts, s, { gcore: hasGcore, memcr: memcr !== null });
}
