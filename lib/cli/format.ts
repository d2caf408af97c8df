/**
 * Human-readable figures for the CLI's text output (JSON output keeps exact numbers).
 *
 * @module
 */

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** A byte count as a short human size: `0 B`, `4.0 KiB`, `1.50 GiB`. */
export function humanBytes(n: number | bigint): string {
  let v = Number(n);
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  if (u === 0) return `${v} B`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${UNITS[u]}`;
}

/** A duration in milliseconds as `850 µs`, `12.3 ms`, `1.42 s`, `2m05s`. */
export function humanDuration(ms: number): string {
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : ms.toFixed(0)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

/** A rate of `bytes` over `ms` as `1.20 GiB/s`. */
export function humanRate(bytes: number, ms: number): string {
  if (ms <= 0) return "-";
  return `${humanBytes((bytes * 1000) / ms)}/s`;
}

/** Format rows as a left-aligned table with two spaces between columns. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ")).join(
    "\n",
  );
}
