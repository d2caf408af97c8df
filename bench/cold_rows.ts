/**
 * The rows of the cold benchmark (bench/cold.ts) from its samples: per workload, the cold checkpoint against
 * warm `checkpoint()`, gcore and memcr; the compressed checkpoint against the raw one; the restore against
 * memcr's; peak RSS against the target's size and the goal of 96 MiB.
 *
 * @module
 */

import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
/** The goal for cryo's peak RSS on every row, whatever the target's size. */
const RSS_GOAL = 96 * MiB;

/** One workload of the cold benchmark. */
export interface Workload {
  /** Its name in the group headings. */
  label: string;
  /** Bytes mapped. */
  bytes: number;
  /** Bytes resident (written). */
  resident: number;
  /** The target's fill kind (`random`, `stride:4`). */
  kind: string;
}

/** Samples by figure (`cryo.ms`, `gcore.rss`, …), one per run. */
export type Samples = Record<string, number[]>;

/**
 * Make the rows of one workload.
 *
 * @param w The workload.
 * @param opts The run's options (`quick` goals are ratio-only).
 * @param s Its samples.
 * @param has Which peers ran.
 * @returns The rows.
 */
export function rowsOf(
  w: Workload,
  opts: BenchOptions,
  s: Samples,
  has: { gcore: boolean; memcr: boolean },
): BenchRow[] {
  const group = `cold checkpoint ${w.label}`;
  const full = !opts.quick;
  const sparse = w.kind !== "random";
  const rows: BenchRow[] = [];
  const size = s["cryo.ms"].map(() => w.bytes);
  const resident = s["cryo.ms"].map(() => w.resident);
  const vs = (name: string, key: string, peer: string, goalRatio?: number): BenchRow | undefined => {
    if (!s[`${peer}.ms`] && !s[peer]) return undefined;
    const base = s[peer] ?? s[`${peer}.ms`];
    const label = peer.split(".")[0];
    return judged({
      group,
      name,
      samples: s[key],
      unit: "ms",
      baseline: label,
      baselineSamples: base,
      goal: goalRatio ? `≥ ${1 / goalRatio}× ${label}'s speed (ratio ≤ ${goalRatio})` : undefined,
    }, (_m, r) => (full ? r <= goalRatio! : undefined));
  };
  const memcrNote = has.memcr
    ? undefined
    : "memcr skipped: set MEMCR (a binary) or MEMCR_SRC (its source tree)";
  rows.push({
    group,
    name: "cryo CLI: checkpoint time",
    samples: s["cryo.ms"],
    unit: "ms",
    baseline: "warm checkpoint()",
    baselineSamples: s["warm.ms"],
    note:
      [has.gcore ? undefined : "gcore skipped: gdb is not installed", memcrNote].filter(Boolean).join("; ") ||
      undefined,
  });
  const goalGcore = sparse ? 0.2 : 0.5, goalMemcr = sparse ? 0.05 : 0.25;
  for (const peer of ["gcore", "memcr"] as const) {
    if (!has[peer]) continue;
    rows.push(
      vs(
        `cryo CLI: checkpoint time vs ${peer}`,
        "cryo.ms",
        `${peer}.ms`,
        peer === "gcore" ? goalGcore : goalMemcr,
      )!,
    );
  }
  rows.push({ group, name: "cryo CLI: stop window", samples: s["cryo.stop"], unit: "ms" });
  rows.push(rssRow(group, "cryo CLI: peak RSS", s["cryo.rss"], size));
  rows.push({
    group,
    name: "cryo CLI: image allocated",
    samples: s["cryo.allocated"],
    unit: "bytes",
    baseline: "resident data",
    baselineSamples: resident,
  });
  for (const peer of ["gcore", "memcr"] as const) {
    if (!has[peer]) continue;
    rows.push({ group, name: `${peer}: checkpoint time`, samples: s[`${peer}.ms`], unit: "ms" });
    rows.push({
      group,
      name: `${peer}: stop window`,
      samples: s[`${peer}.stop`],
      unit: "ms",
      note: peer === "memcr"
        ? "memcr keeps the target stopped from its checkpoint until its restore"
        : undefined,
    });
    rows.push({ group, name: `${peer}: peak RSS`, samples: s[`${peer}.rss`], unit: "bytes" });
    rows.push({
      group,
      name: `${peer}: image allocated`,
      samples: s[`${peer}.allocated`],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: resident,
    });
  }
  if (s["zstd.ms"]) {
    const zgroup = `cold checkpoint ${w.label}, --compress zstd:1`;
    rows.push(judged({
      group: zgroup,
      name: "cryo CLI: checkpoint time",
      samples: s["zstd.ms"],
      unit: "ms",
      baseline: "cryo CLI raw",
      baselineSamples: s["cryo.ms"],
      goal: "≤ 1.5× the raw checkpoint's time",
    }, (_m, r) => r <= 1.5));
    rows.push({ group: zgroup, name: "cryo CLI: stop window", samples: s["zstd.stop"], unit: "ms" });
    rows.push(rssRow(zgroup, "cryo CLI: peak RSS", s["zstd.rss"], size));
    rows.push({
      group: zgroup,
      name: "cryo CLI: image allocated",
      samples: s["zstd.allocated"],
      unit: "bytes",
      baseline: "resident data",
      baselineSamples: resident,
    });
  }
  // A mode measured like the raw checkpoint or the restore: its time against a baseline, its stop, its memory.
  const modeRows = (key: string, group: string, name: string, baseline: string, baselineKey: string) => {
    if (!s[`${key}.ms`]) return;
    rows.push({
      group,
      name: `cryo CLI: ${name}`,
      samples: s[`${key}.ms`],
      unit: "ms",
      baseline,
      baselineSamples: s[baselineKey],
    });
    rows.push({ group, name: "cryo CLI: stop window", samples: s[`${key}.stop`], unit: "ms" });
    rows.push(rssRow(group, "cryo CLI: peak RSS", s[`${key}.rss`], size));
  };
  modeRows(
    "sealed",
    `cold checkpoint ${w.label}, encrypted (--key-file)`,
    "checkpoint time",
    "cryo CLI raw",
    "cryo.ms",
  );
  modeRows(
    "stream",
    `cold restore ${w.label}, streamed on stdin (restore -)`,
    "restore time, every page changed",
    "restore from the file",
    "restore.ms",
  );
  if (s["inspect.ms"]) {
    const igroup = `cold inspect ${w.label}`;
    rows.push({ group: igroup, name: "cryo CLI: inspect time", samples: s["inspect.ms"], unit: "ms" });
    rows.push(rssRow(igroup, "cryo CLI: peak RSS", s["inspect.rss"], size));
  }
  if (s["restore.ms"]) {
    const rgroup = `cold restore ${w.label}`;
    rows.push({
      group: rgroup,
      name: "cryo CLI: restore time, every page changed",
      samples: s["restore.ms"],
      unit: "ms",
    });
    if (has.memcr) {
      rows.push(judged({
        group: rgroup,
        name: "cryo CLI: restore time vs memcr",
        samples: s["restore.ms"],
        unit: "ms",
        baseline: "memcr restore",
        baselineSamples: s["memcr.restore"],
        goal: "≥ 3× memcr's speed (ratio ≤ 0.33)",
      }, (_m, r) => (full ? r <= 1 / 3 : undefined)));
      rows.push({ group: rgroup, name: "memcr: restore time", samples: s["memcr.restore"], unit: "ms" });
    }
    rows.push({ group: rgroup, name: "cryo CLI: stop window", samples: s["restore.stop"], unit: "ms" });
    rows.push(rssRow(rgroup, "cryo CLI: peak RSS", s["restore.rss"], size));
  }
  rows.push({
    group: `warm checkpoint ${w.label} (in this process)`,
    name: "cryo: checkpoint()",
    samples: s["warm.ms"],
    unit: "ms",
    note: `the cold CLI took ${(median(s["cryo.ms"]) - median(s["warm.ms"])).toFixed(0)} ms more (median)`,
  });
  return rows;
}

/** A peak RSS row, its ratio against the target's size and the goal of ≤ 96 MiB. */
function rssRow(group: string, name: string, samples: number[], size: number[]): BenchRow {
  return judged({
    group,
    name,
    samples,
    unit: "bytes",
    baseline: "target size",
    baselineSamples: size,
    goal: "≤ 96 MiB",
  }, (m) => m <= RSS_GOAL);
}

/** Set `met` from the medians when the row has a goal (`undefined`: not judged in this run). */
function judged(row: BenchRow, ok: (median: number, ratio: number) => boolean | undefined): BenchRow {
  if (!row.goal) return row;
  const m = median(row.samples);
  const r = row.baselineSamples ? m / median(row.baselineSamples) : NaN;
  return { ...row, met: ok(m, r) };
}
