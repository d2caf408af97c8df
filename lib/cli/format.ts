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
  const widths = tableWidths(rows);
  return rows.map((r) => tableRow(r, widths)).join("\n");
}

/**
 * The widths of a {@link table}'s columns: a first pass, so that rows made one at a time can be printed as they
 * are made (a table of many rows need not be held).
 *
 * @param rows The rows.
 * @returns Each column's width.
 */
export function tableWidths(rows: Iterable<readonly string[]>): number[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return widths;
}

/**
 * One line of a {@link table}.
 *
 * @param r The row.
 * @param widths The columns' widths ({@link tableWidths}).
 * @returns Its cells padded to them (all but the last), two spaces apart.
 */
export function tableRow(r: readonly string[], widths: readonly number[]): string {
  return r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
}

/**
 * C0 controls, DEL, C1 controls, and UTF-16 surrogates without their pair (invalid UTF-8 in a target's or an
 * image's bytes has already become U+FFFD when decoded).
 */
const UNPRINTABLE =
  // deno-lint-ignore no-control-regex -- matching control characters is the point
  /[\x00-\x1f\x7f-\x9f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * `text` safe to print on a terminal: every control character (C0, DEL, C1) and lone surrogate becomes a visible
 * escape (`\x1b`, `\x7f`, `\u009b`, `\ud800`), so a target's command line, a mapped file's name or an image's
 * strings cannot move the cursor, retitle the window or ring the bell. Every string the CLI prints that comes
 * from a target or an image goes through it (JSON output is escaped by {@link toJson}). Idempotent: what it
 * returns has nothing left to escape.
 *
 * @param text The text.
 * @param opts `lines`: keep line feeds (for multi-line messages).
 * @returns The escaped text.
 */
export function printable(text: string, opts: { lines?: boolean } = {}): string {
  return text.replace(UNPRINTABLE, (c) => {
    if (opts.lines && c === "\n") return c;
    const code = c.charCodeAt(0);
    return code < 0x80
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}
