/**
 * The end-to-end figures: checkpoint time and stop window, image size apparent and allocated, and rollback
 * restore time, for cryo and, in the same run on the same target, the C pipeline and gdb's gcore. Workloads
 * (full / --quick): 1 GiB / 64 MiB random, 1 GiB / 64 MiB text, 4 GiB / 256 MiB sparse (every 4th page
 * resident). cryo's side (lib/ops/checkpoint.ts, lib/ops/restore.ts) is measured when those modules are in the tree.
 *
 * @module
 */

import { checkpoint, restore } from "../mod.ts";
import { Target } from "../tests/_target.ts";
import { fileSize, findGcore, gcore, pipelineDump, pipelineLoad, withStopWindow } from "./peers.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow };

const MiB = 2 ** 20;
const GiB = 2 ** 30;

interface Workload {
  label: string;
  bytes: number;
  kind: string;
}

type CryoOp = (pid: number, path: string, opts?: Record<string, unknown>) => Promise<unknown>;

interface Samples {
  [figure: string]: number[];
}

/**
 * Measure the end-to-end figures.
 *
 * @param opts `quick` for the small workloads; `runs` repetitions of every figure.
 * @returns The rows, grouped per workload.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const scale = opts.quick ? 64 * MiB : GiB;
  const name = (n: number) => n >= GiB ? `${n / GiB} GiB` : `${n / MiB} MiB`;
  const workloads: Workload[] = [
    { label: `${name(scale)} random`, bytes: scale, kind: "random" },
    { label: `${name(scale)} text`, bytes: scale, kind: "text" },
    { label: `${name(4 * scale)} sparse, ${name(scale)} resident`, bytes: 4 * scale, kind: "stride:4" },
  ];
  const cryo = await loadCryo();
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-bench-" });
  const rows: BenchRow[] = [];
  try {
    for (const [i, w] of workloads.entries()) {
      rows.push(...await measure(w, opts, i === 0 ? cryo : { ...cryo, note: "" }, dir));
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return rows;
}

async function measure(
  w: Workload,
  opts: BenchOptions,
  cryo: { checkpoint?: CryoOp; restore?: CryoOp; note: string },
  dir: string,
): Promise<BenchRow[]> {
  const s: Samples = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  const hasGcore = findGcore() !== null;
  const target = Target.start();
  try {
    await target.cmd("heartbeat");
    const addr = await target.map(w.bytes);
    await target.fill(addr, w.bytes, w.kind, 1);
    const sparse = w.kind.startsWith("stride:");
    // gdb reads every page through /proc/PID/mem, which maps the zero page into the holes, and a restore may
    // fill them: map the sparse region afresh after those, so every measurement sees the same resident set.
    const reprepare = async () => {
      if (!sparse) return;
      await target.cmd(`unmap 0x${addr.toString(16)} ${w.bytes}`);
      await target.cmd(`mapat 0x${addr.toString(16)} ${w.bytes}`);
      await target.fill(addr, w.bytes, w.kind, 1);
    };
    const pipeline = async () => {
      const dump = `${dir}/pipeline.dump`;
      const p = await withStopWindow(target, () => pipelineDump(target.pid, addr, w.bytes, dump));
      const ps = await fileSize(dump);
      add("pipe.ms", p.value.ms);
      add("pipe.stop", p.stopMs);
      add("pipe.bytes", p.value.bytes);
      add("pipe.apparent", ps.apparent);
      add("pipe.allocated", ps.allocated);
      // The same dump to /dev/null: what reading the target alone costs (the rest is writing the file).
      add("pipe.read", (await pipelineDump(target.pid, addr, w.bytes, "/dev/null")).ms);
      add("pipe.load", (await pipelineLoad(target.pid, addr, w.bytes, dump)).ms);
      // Each writer starts with no other image in the page cache: deleting a file drops its dirty pages, so
      // one writer's pending writeback does not slow the next one down.
      await Deno.remove(dump);
    };
    const checkpointAndRestore = async () => {
      if (!cryo.checkpoint) return;
      const image = `${dir}/bench.cryo`;
      const c = await withStopWindow(target, async () => {
        const t0 = performance.now();
        const result = await cryo.checkpoint!(target.pid, image, { fsync: false }); // to page cache, as the baselines
        const ms = performance.now() - t0;
        const records = (result as { records?: unknown } | undefined)?.records;
        if (typeof records === "number") add("cryo.records", records);
        return ms;
      });
      add("cryo.ms", c.value);
      add("cryo.stop", c.stopMs);
      const cs = await fileSize(image);
      add("cryo.apparent", cs.apparent);
      add("cryo.allocated", cs.allocated);
      if (cryo.restore) {
        // A rollback writes (and journals) only what changed: first every page changed since the checkpoint, as
        // the pipeline's load writes every page; then nothing changed (the bytes are compared, not written).
        await target.fill(addr, w.bytes, w.kind, 2);
        let t1 = performance.now();
        await cryo.restore(target.pid, image);
        add("cryo.restore", performance.now() - t1);
        t1 = performance.now();
        await cryo.restore(target.pid, image);
        add("cryo.restore.same", performance.now() - t1);
      }
      await Deno.remove(image);
      await reprepare();
    };
    for (let run = 0; run < opts.runs; run++) {
      // cryo and the pipeline take turns going first: the page cache pages a writer gets are warmer or colder
      // depending on what ran just before (first touch of memory costs microseconds per page here).
      if (run % 2 === 0) {
        await pipeline();
        await checkpointAndRestore();
      } else {
        await checkpointAndRestore();
        await pipeline();
      }
      if (hasGcore) {
        const g = await withStopWindow(target, () => gcore(target.pid, `${dir}/core`));
        const gs = await fileSize(g.value.path);
        add("gcore.ms", g.value.ms);
        add("gcore.stop", g.stopMs);
        add("gcore.apparent", gs.apparent);
        add("gcore.allocated", gs.allocated);
        await Deno.remove(g.value.path);
        await reprepare();
      }
    }
  } finally {
    await target.close();
  }
  return rowsOf(w, opts, s, hasGcore, cryo.note);
}

function rowsOf(
  w: Workload,
  opts: BenchOptions,
  s: Samples,
  hasGcore: boolean,
  cryoNote: string,
): BenchRow[] {
  const group = `checkpoint ${w.label}`;
  const full = !opts.quick;
  const big = w.kind === "stride:4";
  const rows: BenchRow[] = [];
  const gcoreNote = hasGcore ? undefined : "gcore skipped: gdb is not installed (apt-get install gdb)";
  rows.push({
    group,
    name: "C pipeline: checkpoint time",
    samples: s["pipe.ms"],
    unit: "ms",
    note: [s["cryo.ms"] ? undefined : cryoNote, gcoreNote].filter(Boolean).join("; ") || undefined,
  });
  rows.push({
    group,
    name: "C pipeline: reading only (to /dev/null)",
    samples: s["pipe.read"],
    unit: "ms",
    baseline: "C pipeline",
    baselineSamples: s["pipe.ms"],
  });
  rows.push({ group, name: "C pipeline: stop window", samples: s["pipe.stop"], unit: "ms" });
  rows.push({
    group,
    name: "C pipeline: image allocated",
    samples: s["pipe.allocated"],
    unit: "bytes",
    baseline: "resident data",
    baselineSamples: s["pipe.bytes"],
  });
  if (hasGcore) {
    rows.push({
      group,
      name: "gcore: checkpoint time",
      samples: s["gcore.ms"],
      unit: "ms",
      baseline: "C pipeline",
      baselineSamples: s["pipe.ms"],
    });
    rows.push({
      group,
      name: "gcore: stop window",
      samples: s["gcore.stop"],
      unit: "ms",
      baseline: "C pipeline",
      baselineSamples: s["pipe.stop"],
    });
    rows.push({
      group,
      name: "gcore: image apparent",
      samples: s["gcore.apparent"],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: s["pipe.bytes"],
    });
    rows.push({
      group,
      name: "gcore: image allocated",
      samples: s["gcore.allocated"],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: s["pipe.bytes"],
    });
  }
  if (s["cryo.ms"]) {
    const limit = big ? 1000 : 500;
    const records = s["cryo.records"] ? median(s["cryo.records"]) : undefined;
    const perRecord = records && records >= 1000
      ? `, ${(median(s["cryo.ms"]) * 1000 / records).toFixed(1)} µs per record`
      : "";
    rows.push(judged({
      group,
      name: "cryo: checkpoint time",
      samples: s["cryo.ms"],
      unit: "ms",
      baseline: "C pipeline",
      baselineSamples: s["pipe.ms"],
      goal: big ? "≤ 1000 ms" : `≤ 500 ms, ≥ 0.8× C pipeline's speed (ratio ≤ 1.25)`,
      note: `the C pipeline reads the target in ${median(s["pipe.read"]).toFixed(0)} ms of its ` +
        `${median(s["pipe.ms"]).toFixed(0)} ms (the rest is write() to the page cache)` +
        (records ? `; cryo wrote ${records} index records${perRecord}` : ""),
    }, (m, r) => big ? (full ? m <= limit : undefined) : (!full || m <= limit) && r <= 1.25));
    if (hasGcore) {
      rows.push(judged({
        group,
        name: "cryo: checkpoint time vs gcore",
        samples: s["cryo.ms"],
        unit: "ms",
        baseline: "gcore",
        baselineSamples: s["gcore.ms"],
        goal: big ? undefined : "≥ 2× gcore's speed (ratio ≤ 0.5)",
      }, (_m, r) => r <= 0.5));
    }
    rows.push(judged({
      group,
      name: "cryo: stop window",
      samples: s["cryo.stop"],
      unit: "ms",
      ...(hasGcore ? { baseline: "gcore", baselineSamples: s["gcore.stop"], goal: "≤ 0.5× gcore's" } : {}),
    }, (_m, r) => !hasGcore || r <= 0.5));
    rows.push({
      group,
      name: "cryo: image apparent",
      samples: s["cryo.apparent"],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: s["pipe.bytes"],
    });
    rows.push(judged({
      group,
      name: "cryo: image allocated",
      samples: s["cryo.allocated"],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: s["pipe.bytes"],
      ...(big ? { goal: "≤ 1.02× resident data" } : {}),
    }, (_m, r) => !big || r <= 1.02));
  }
  const rgroup = `rollback restore ${w.label}`;
  rows.push({ group: rgroup, name: "C pipeline: load time", samples: s["pipe.load"], unit: "ms" });
  if (s["cryo.restore"]) {
    rows.push(judged({
      group: rgroup,
      name: "cryo: restore time, every page changed",
      samples: s["cryo.restore"],
      unit: "ms",
      baseline: "C pipeline",
      baselineSamples: s["pipe.load"],
      goal: w.kind === "random" ? "≤ 400 ms for 1 GiB" : undefined,
    }, (m) => full ? m <= 400 : undefined));
    rows.push({
      group: rgroup,
      name: "cryo: restore time, nothing changed",
      samples: s["cryo.restore.same"],
      unit: "ms",
      baseline: "C pipeline",
      baselineSamples: s["pipe.load"],
    });
  }
  return rows;
}

/** Set `met` from the medians when the row has a goal (`undefined`: not judged in this run). */
function judged(row: BenchRow, ok: (median: number, ratio: number) => boolean | undefined): BenchRow {
  if (!row.goal) return row;
  const m = median(row.samples);
  const r = row.baselineSamples ? m / median(row.baselineSamples) : NaN;
  return { ...row, met: ok(m, r) };
}

/** cryo's checkpoint and restore. */
function loadCryo(): Promise<{ checkpoint?: CryoOp; restore?: CryoOp; note: string }> {
  return Promise.resolve({ checkpoint: checkpoint as CryoOp, restore: restore as CryoOp, note: "" });
}
