/**
 * The benchmark report: the machine's description, a plain-text table for the terminal, and the markdown and
 * JSON files the runner writes (docs/BENCHMARKS.md, docs/BENCHMARKS.json).
 *
 * @module
 */

import type { SummaryRow } from "./stats.ts";

/** The machine a report was measured on. */
export interface Machine {
  /** CPU model name, from /proc/cpuinfo. */
  cpu: string;
  /** Logical CPUs, from /proc/cpuinfo. */
  cores: number;
  /** Total memory in bytes, from /proc/meminfo. */
  memory: number;
  /** Kernel release. */
  kernel: string;
  /** Deno, V8 and TypeScript versions. */
  deno: string;
  /** gdb's version line, or `"absent"`. */
  gdb: string;
  /** The directory images were written to and its file system type. */
  scratch: string;
  /** The 1-minute load average when the run started and when it ended (other work on the machine). */
  load: string;
}

/** How one benchmark module fared. */
export interface ModuleStatus {
  /** Module name (bench/NAME.ts). */
  name: string;
  /** Whether it ran, was not in the tree, or threw. */
  status: "ran" | "absent" | "failed";
  /** Wall time of the module in seconds (0 when it did not run). */
  seconds: number;
  /** The error message, when it failed. */
  error?: string;
}

/** Everything a report holds; this is also the JSON file's shape. */
export interface Report {
  /** When the run started, ISO 8601. */
  date: string;
  /** Whether this was the --quick suite. */
  quick: boolean;
  /** Repetitions per figure. */
  runs: number;
  /** The machine. */
  machine: Machine;
  /** The modules, in the order they were run. */
  modules: ModuleStatus[];
  /** Every figure, with its summary. */
  rows: SummaryRow[];
}

/**
 * Describe this machine: CPU model and count, memory, kernel, Deno, gdb and the scratch directory.
 *
 * @param scratch The directory benchmark images are written to.
 * @returns The description.
 */
export async function describeMachine(scratch: string): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const cpu = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown";
  const cores = cpuinfo.match(/^processor\s*:/gm)?.length ?? navigator.hardwareConcurrency;
  const memKiB = Number(/^MemTotal:\s*(\d+) kB/m.exec(meminfo)?.[1] ?? 0);
  let gdb = "absent";
  try {
    const out = await new Deno.Command("gdb", { args: ["--version"], stdout: "piped", stderr: "null" })
      .output();
    if (out.success) gdb = new TextDecoder().decode(out.stdout).split("\n")[0].trim();
  } catch { /* not installed */ }
  return {
    cpu,
    cores,
    memory: memKiB * 1024,
    kernel: Deno.osRelease(),
    deno: `deno ${Deno.version.deno} (V8 ${Deno.version.v8}, TypeScript ${Deno.version.typescript})`,
    gdb,
    scratch: `${scratch} (${await fsType(scratch)})`,
    load: `${await loadAverage()} at the start`,
  };
}

/**
 * The 1-minute load average, from /proc/loadavg.
 *
 * @returns The figure as text, e.g. `"0.52"`, or `"unknown"`.
 */
export async function loadAverage(): Promise<string> {
  return (await Deno.readTextFile("/proc/loadavg").catch(() => "unknown")).split(" ")[0].trim();
}

/** The file system type of the mount holding `path`, from /proc/mounts (longest matching mount point). */
async function fsType(path: string): Promise<string> {
  const real = await Deno.realPath(path).catch(() => path);
  let best = "", type = "unknown";
  for (const line of (await Deno.readTextFile("/proc/mounts").catch(() => "")).split("\n")) {
    const [, mnt, fs] = line.split(" ");
    if (!mnt) continue;
    const inside = real === mnt || real.startsWith(mnt.endsWith("/") ? mnt : `${mnt}/`);
    if (inside && mnt.length >= best.length) [best, type] = [mnt, fs];
  }
  return type;
}

/**
 * Format a value in its unit for people: ms with 1 decimal (3 significant digits below 10), bytes in MiB
 * or GiB, GiB/s with 2 decimals, ratios with 2 decimals.
 *
 * @param value The value.
 * @param unit Its unit.
 * @returns The text.
 */
export function formatValue(value: number, unit: SummaryRow["unit"]): string {
  switch (unit) {
    case "ms":
      return value < 10 ? `${value.toPrecision(3)} ms` : `${value.toFixed(1)} ms`;
    case "bytes":
      return value >= 2 ** 30 ? `${(value / 2 ** 30).toFixed(3)} GiB` : `${(value / 2 ** 20).toFixed(1)} MiB`;
    case "GiB/s":
      return `${value.toFixed(2)} GiB/s`;
    case "ratio":
      return value.toFixed(2);
  }
}

const headers = ["figure", "min", "median", "baseline", "baseline median", "ratio", "goal", "met"];

function cells(r: SummaryRow): string[] {
  return [
    r.name,
    formatValue(r.min, r.unit),
    formatValue(r.median, r.unit),
    r.baseline ?? "",
    r.baselineMedian === undefined ? "" : formatValue(r.baselineMedian, r.unit),
    r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}×`,
    r.goal ?? "",
    r.met === undefined ? "" : r.met ? "yes" : "NO",
  ];
}

function groups(rows: readonly SummaryRow[]): Map<string, SummaryRow[]> {
  const m = new Map<string, SummaryRow[]>();
  for (const r of rows) m.set(r.group, [...m.get(r.group) ?? [], r]);
  return m;
}

/**
 * A plain-text table of rows for the terminal, one block per group, columns padded.
 *
 * @param rows The rows.
 * @returns The text, ending with a newline.
 */
export function textTable(rows: readonly SummaryRow[]): string {
  let out = "";
  for (const [group, rs] of groups(rows)) {
    const table = [headers, ...rs.map(cells)];
    const widths = headers.map((_, i) => Math.max(...table.map((row) => [...row[i]].length)));
    out += `\n${group}\n`;
    for (const row of table) {
      out += "  " + row.map((c, i) => c + " ".repeat(widths[i] - [...c].length)).join("  ").trimEnd() + "\n";
    }
    for (const r of rs) if (r.note) out += `  note (${r.name}): ${r.note}\n`;
  }
  return out;
}

function md(text: string): string {
  return text.replaceAll("|", "\\|");
}

/**
 * The markdown report: how to read it, the machine, one table per group, and the notes.
 *
 * @param report The report.
 * @returns Markdown text.
 */
export function markdown(report: Report): string {
  const m = report.machine;
  const lines = [
    "# cryo benchmarks",
    "",
    `Written by \`deno task bench${
      report.quick ? " --quick" : ""
    }\` on ${report.date}. Each figure is the min ` +
    `and median of ${report.runs} run(s); the ratio is the figure's median over its baseline's median, both ` +
    "measured in the same run on the same target (for times, below 1 is faster than the baseline). A stop " +
    "window is the longest gap of the target's 1 ms heartbeat thread while the operation ran." +
    (report.quick
      ? " This is the --quick suite: goals in absolute time (set for 1 GiB) are not judged."
      : ""),
    "",
    "Run it with `deno task bench` (full suite, a few minutes, writes docs/BENCHMARKS.md and .json), " +
    "`deno task bench --quick` (small sizes, under a minute, writes bench/out/; CI runs it), " +
    "`--only checkpoint,freeze` (some modules), `--runs N`, `--out DIR`, `--dir DIR` (where images are " +
    "written; default `$CRYO_BENCH_DIR` or /tmp). Baselines: the C pipeline (bench/pipeline.c: pagemap, then " +
    "process_vm_readv → write in 8 MiB batches under SIGSTOP; pread → process_vm_writev to load) and gdb's " +
    '`gcore`. The groups named "cold" (bench/cold.ts) run every tool as a fresh process per run, as users ' +
    "run them: cryo's CLI (`deno run -A cli.ts`), `gcore`, and memcr when `MEMCR` or `MEMCR_SRC` is set; " +
    "their times are the whole command's, their peak RSS is `wait4`'s `ru_maxrss` (bench/rusage.c), their " +
    'image sizes are allocated blocks; the "warm" groups beside them are `checkpoint()` in the bench\'s ' +
    "own process. docs/BENCHMARKING.md explains each figure and what bounds the goals that are missed.",
    "",
    "## Machine",
    "",
    "| | |",
    "|---|---|",
    `| CPU | ${md(m.cpu)} |`,
    `| cores | ${m.cores} |`,
    `| memory | ${(m.memory / 2 ** 30).toFixed(1)} GiB |`,
    `| kernel | Linux ${md(m.kernel)} |`,
    `| Deno | ${md(m.deno)} |`,
    `| gdb | ${md(m.gdb)} |`,
    `| images written to | ${md(m.scratch)} |`,
    `| load average (1 min) | ${md(m.load)} |`,
    `| date | ${report.date} |`,
    "",
    "## Results",
  ];
  for (const [group, rs] of groups(report.rows)) {
    lines.push(
      "",
      `### ${md(group)}`,
      "",
      `| ${headers.join(" | ")} |`,
      `|${headers.map(() => "---").join("|")}|`,
    );
    for (const r of rs) lines.push(`| ${cells(r).map(md).join(" | ")} |`);
  }
  const notes = [
    ...report.rows.filter((r) => r.note).map((r) => `${r.group}, ${r.name}: ${r.note}`),
    ...report.modules.filter((s) => s.status !== "ran").map((s) =>
      s.status === "absent"
        ? `${s.name}: not measured, bench/${s.name}.ts is not in the tree yet`
        : `${s.name}: failed: ${s.error}`
    ),
  ];
  const goals = report.rows.filter((r) => r.goal);
  if (goals.length) {
    lines.push(
      "",
      "## Goals",
      "",
      "| group | figure | goal | median | ratio | met |",
      "|---|---|---|---|---|---|",
    );
    for (const r of goals) {
      const ratio = r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}×`;
      const met = r.met === undefined ? "not judged" : r.met ? "yes" : "NO";
      lines.push(
        `| ${[r.group, r.name, r.goal!, formatValue(r.median, r.unit), ratio, met].map(md).join(" | ")} |`,
      );
    }
  }
  if (notes.length) lines.push("", "## Notes", "", ...notes.map((n) => `- ${md(n)}`));
  lines.push(
    "",
    "## Modules",
    "",
    "| module | status | seconds |",
    "|---|---|---|",
    ...report.modules.map((s) => `| ${s.name} | ${s.status} | ${s.seconds.toFixed(1)} |`),
  );
  return lines.join("\n") + "\n";
}

/**
 * The JSON report, for tools: the {@link Report} as is, indented.
 *
 * @param report The report.
 * @returns JSON text ending with a newline.
 */
export function json(report: Report): string {
  return JSON.stringify(report, null, 2) + "\n";
}
