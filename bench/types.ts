/**
 * The contract between benchmark modules and the bench runner (bench/main.ts). Each module under bench/ exports
 * `bench(opts)` returning rows; the runner prints them as min/median and as ratios to the baseline measured in
 * the same run, and writes docs/BENCHMARKS.md and docs/BENCHMARKS.json.
 *
 * @module
 */

/** Options every benchmark module receives. */
export interface BenchOptions {
  /** A small, fast version (CI runs it; the whole suite must stay under a minute). */
  quick: boolean;
  /** Repetitions per figure (≥ 3). */
  runs: number;
}

/** One measured figure and the baseline it is compared to, both measured in the same run. */
export interface BenchRow {
  /** Group heading, e.g. "checkpoint 1 GiB random". */
  group: string;
  /** What was measured, e.g. "cryo checkpoint". */
  name: string;
  /** Samples of the figure, one per run, in `unit`. */
  samples: number[];
  /** Unit of the samples: "ms" (lower is better) or "GiB/s", "ratio", "bytes" (informational). */
  unit: "ms" | "GiB/s" | "bytes" | "ratio";
  /** Name of the baseline, e.g. "C pipeline"; absent for a figure with no baseline. */
  baseline?: string;
  /** Samples of the baseline, same unit. */
  baselineSamples?: number[];
  /** The goal as text, e.g. "≤ 500 ms, ≥ 0.8× C pipeline". */
  goal?: string;
  /** Whether the goal was met, when it can be judged. */
  met?: boolean;
  /** Anything a reader needs (a skipped peer, what bounds a missed goal). */
  note?: string;
}
