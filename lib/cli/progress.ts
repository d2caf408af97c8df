/**
 * The progress bar of the command line (bytes, rate, ETA) on stderr, drawn only when stderr is a terminal, not
 * `--quiet`, and the work has lasted more than a moment. Nothing at all is written otherwise.
 *
 * @module
 */

import { humanBytes, humanDuration } from "./format.ts";
import { type Progress, silentProgress } from "../ops/progress.ts";

/**
 * A progress bar for `label`, or {@link silentProgress} when stderr is not a TTY or `quiet` is set.
 *
 * @param label What is being done, e.g. `checkpoint`.
 * @param quiet Draw nothing.
 * @param delayMs Draw only after this long.
 */
export function progressBar(initialLabel: string, quiet = false, delayMs = 300): Progress {
  if (quiet || !Deno.stderr.isTerminal()) return silentProgress;
  const enc = new TextEncoder();
  let label = initialLabel;
  let started = performance.now();
  let total = 0;
  let done = 0;
  let drawn = false;
  let last = 0;
  const draw = () => {
    const now = performance.now();
    const elapsed = now - started;
    if (elapsed < delayMs || now - last < 100) return;
    last = now;
    const rate = done / (elapsed / 1000);
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const width = 24;
    const filled = Math.round(frac * width);
    const eta = rate > 0 && total > done ? humanDuration(((total - done) / rate) * 1000) : "-";
    const line =
      `${label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${(frac * 100).toFixed(0)}% ` +
      `${humanBytes(done)}/${humanBytes(total)} ${humanBytes(rate)}/s ETA ${eta}`;
    Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${line}`));
    drawn = true;
  };
  return {
    total(bytes) {
      total = bytes;
    },
    advance(bytes) {
      done += bytes;
      draw();
    },
    done() {
      if (drawn) Deno.stderr.writeSync(enc.encode("\r\x1b[2K"));
      drawn = false;
    },
    phase(next, bytes) {
      label = next;
      total = bytes;
      done = 0;
      started = performance.now() - delayMs; // a phase of work already under way draws at once
    },
  };
}
