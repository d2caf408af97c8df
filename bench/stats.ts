/**
 * Summary statistics of benchmark samples: min, median, the ratio of two medians, throughput, and how a row
 * is summarised for the report. Pure functions; nothing here measures.
 *
 * @module
 */

import type { BenchRow } from "./types.ts";

export type { BenchRow };

/** A row with its summary figures, as the report prints and stores it. */
export interface SummaryRow extends BenchRow {
  /** Smallest sample. */
  min: number;
  /** Median sample. */
  median: number;
  /** Smallest baseline sample, when there is a baseline. */
  baselineMin?: number;
  /** Median baseline sample, when there is a baseline. */
  baselineMedian?: number;
  /** `median / baselineMedian`: below 1 means a time is shorter (or a size smaller) than the baseline's. */
  ratio?: number;
}

/**
 * The smallest of the samples.
 *
 * @param samples At least one finite number.
 * @returns The minimum.
 */
export function min(samples: readonly number[]): number {
  requireSamples(samples);
  return Math.min(...samples);
}

/**
 * The median of the samples: the middle one, or the mean of the two middle ones for an even count.
 *
 * @param samples At least one finite number.
 * @returns The median.
 */
export function median(samples: readonly number[]): number {
  requireSamples(samples);
  const s = [...samples].sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * The ratio of the medians of two sample sets, `median(a) / median(b)`.
 *
 * @param a The figure's samples.
 * @param b The baseline's samples.
 * @returns The ratio, or `undefined` when the baseline's median is 0.
 */
export function ratio(a: readonly number[], b: readonly number[]): number | undefined {
  const mb = median(b);
  return mb === 0 ? undefined : median(a) / mb;
}

/**
 * Throughput in GiB/s of moving `bytes` in `ms` milliseconds.
 *
 * @param bytes Bytes moved.
 * @param ms Time taken, in milliseconds (> 0).
 * @returns GiB per second.
 */
export function gibPerSecond(bytes: number, ms: number): number {
  if (!(ms > 0)) throw new RangeError(`Cannot compute a throughput over ${ms} ms: not a positive time`);
  return bytes / 2 ** 30 / (ms / 1000);
}

/**
 * Summarise one row: min and median of its samples and of its baseline's, and the ratio of the medians.
 *
 * @param row A row as a benchmark module returned it.
 * @returns The row with its summary figures.
 */
export function summarize(row: BenchRow): SummaryRow {
  const out: SummaryRow = { ...row, min: min(row.samples), median: median(row.samples) };
  if (row.baselineSamples && row.baselineSamples.length > 0) {
    out.baselineMin = min(row.baselineSamples);
    out.baselineMedian = median(row.baselineSamples);
    out.ratio = ratio(row.samples, row.baselineSamples);
  }
  return out;
}

function requireSamples(samples: readonly number[]): void {
  if (samples.length === 0) throw new RangeError("Cannot summarise samples: there are none");
  for (const s of samples) {
    if (!Number.isFinite(s)) throw new RangeError(`Cannot summarise samples: ${s} is not a finite number`);
  }
}
