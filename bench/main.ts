/**
 * The benchmark runner: `deno task bench [--quick] [--only NAME[,NAME]] [--runs N] [--out DIR] [--dir DIR]`.
 *
 * Imports every benchmark module listed in {@link MODULES} that is in the tree (a missing one is skipped with a
 * note), runs each, prints its rows as min/median and the ratio to the baseline measured in the same run, and
 * writes `BENCHMARKS.md` and `BENCHMARKS.json` with the machine's description: to `docs/` for the full suite,
 * to `bench/out/` for `--quick` or `--only` (so CI's small run or a partial run never overwrites the published
 * figures), or to `--out DIR`.
 * Images go to a temporary directory under `--dir` (default `$CRYO_BENCH_DIR` or the system's temp dir).
 * Exits 1 when a module failed, 2 on bad arguments.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  describeMachine,
  json,
  loadAverage,
  markdown,
  type ModuleStatus,
  type Report,
  textTable,
} from "./report.ts";
import { summarize, type SummaryRow } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

export type { BenchOptions, BenchRow, SummaryRow };

/** The benchmark modules, in the order they run: bench/NAME.ts, each exporting `bench(opts)`. */
export const MODULES = [
  "checkpoint",
  "pagemap",
  "image",
  "freeze",
  "compress",
  "inject",
  "layout",
  "hibernate",
  "incremental",
  "live",
] as const;

const UNITS = new Set(["ms", "GiB/s", "bytes", "ratio"]);

/**
 * Check that a module returned well-formed rows.
 *
 * @param name The module, for the message.
 * @param rows What it returned.
 * @returns The rows, typed.
 */
export function checkRows(name: string, rows: unknown): BenchRow[] {
  if (!Array.isArray(rows)) throw new TypeError(`Cannot use bench/${name}.ts: bench() returned no array`);
  for (const [i, r] of rows.entries()) {
    const bad = (what: string) => new TypeError(`Cannot use bench/${name}.ts: row ${i} ${what}`);
    if (typeof r !== "object" || r === null) throw bad("is not an object");
    if (typeof r.group !== "string" || typeof r.name !== "string") throw bad("lacks a group or a name");
    if (!UNITS.has(r.unit)) throw bad(`has unit ${JSON.stringify(r.unit)}`);
    for (const key of ["samples", "baselineSamples"]) {
      const s = r[key];
      if (key === "baselineSamples" && s === undefined) continue;
      if (!Array.isArray(s) || s.length === 0 || !s.every(Number.isFinite)) {
        throw bad(`(${r.name}) has no finite ${key}`);
      }
    }
  }
  return rows as BenchRow[];
}

async function exists(url: URL): Promise<boolean> {
  try {
    await Deno.stat(url);
    return true;
  } catch {
    return false;
  }
}

function usage(message: string): never {
  console.error(
    `${message}\nusage: deno task bench [--quick] [--only NAME[,NAME]] [--runs N] [--out DIR] [--dir DIR]`,
  );
  console.error(`modules: ${MODULES.join(", ")}`);
  Deno.exit(2);
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        quick: { type: "boolean", default: false },
        only: { type: "string" },
        runs: { type: "string" },
        out: { type: "string" },
        dir: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    usage(`Cannot run the benchmarks: ${(e as Error).message}`);
  }
  if (values.help) usage("cryo benchmarks");
  const only = values.only?.split(",").map((s) => s.trim()).filter(Boolean);
  for (const name of only ?? []) {
    if (!(MODULES as readonly string[]).includes(name)) usage(`Cannot run the benchmarks: no module ${name}`);
  }
  // An even count in the full suite, so modules that alternate the order of what they compare stay balanced.
  const runs = values.runs === undefined ? (values.quick ? 3 : 4) : Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) {
    usage(`Cannot run the benchmarks: --runs ${values.runs} is not ≥ 1`);
  }
  const opts: BenchOptions = { quick: values.quick, runs };
  // Only the full, unfiltered suite publishes to docs/; a quick or partial run goes to bench/out/.
  const outDir = values.out ??
    new URL(values.quick || only ? "./out/" : "../docs/", import.meta.url).pathname;
  const scratch = values.dir ?? Deno.env.get("CRYO_BENCH_DIR") ?? Deno.env.get("TMPDIR") ?? "/tmp";
  Deno.env.set("CRYO_BENCH_DIR", scratch);

  const report: Report = {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    quick: opts.quick,
    runs,
    machine: await describeMachine(scratch),
    modules: [],
    rows: [],
  };
  console.log(`cryo benchmarks${opts.quick ? " (quick)" : ""}: ${runs} run(s) per figure`);
  console.log(`${report.machine.cpu}, ${report.machine.cores} cores, Linux ${report.machine.kernel}`);
  for (const name of MODULES) {
    if (only && !only.includes(name)) continue;
    const url = new URL(`./${name}.ts`, import.meta.url);
    if (!await exists(url)) {
      console.log(`\n${name}: skipped, bench/${name}.ts is not in the tree yet`);
      report.modules.push({ name, status: "absent", seconds: 0 });
      continue;
    }
    const t0 = performance.now();
    const status: ModuleStatus = { name, status: "ran", seconds: 0 };
    try {
      const mod = await import(url.href);
      if (typeof mod.bench !== "function") {
        throw new TypeError(`Cannot use bench/${name}.ts: it exports no bench()`);
      }
      const rows: SummaryRow[] = checkRows(name, await mod.bench(opts)).map(summarize);
      report.rows.push(...rows);
      console.log(textTable(rows).trimEnd());
    } catch (e) {
      status.status = "failed";
      status.error = e instanceof Error ? e.message : String(e);
      console.error(`\n${name}: failed: ${e instanceof Error ? e.stack : e}`);
    }
    status.seconds = (performance.now() - t0) / 1000;
    console.log(`${name}: ${status.status} in ${status.seconds.toFixed(1)} s`);
    report.modules.push(status);
  }

  report.machine.load += `, ${await loadAverage()} at the end`;
  await Deno.mkdir(outDir, { recursive: true });
  const mdPath = `${outDir.replace(/\/$/, "")}/BENCHMARKS.md`;
  const jsonPath = `${outDir.replace(/\/$/, "")}/BENCHMARKS.json`;
  await Deno.writeTextFile(mdPath, markdown(report));
  await Deno.writeTextFile(jsonPath, json(report));
  // Let deno fmt lay out the tables, so the written file passes `deno fmt --check` as it stands.
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", mdPath],
    stdout: "null",
    stderr: "inherit",
  })
    .output().catch(() => {});
  console.log(`\nwrote ${mdPath} and ${jsonPath}`);
  return report.modules.some((s) => s.status === "failed") ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
