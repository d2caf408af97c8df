/**
 * The command line's progress line on stderr: the command and its phase, the stop window (`FROZEN 0.84 s`
 * while the target is stopped, `was frozen 1.21 s` after), and for a counted phase a bar, the percentage,
 * bytes, rate and an ETA once the rate is steady. It fits the terminal's width (read at every redraw, so a
 * resize is followed) and never wraps. Drawn only when stderr is a terminal, not `--quiet`, and the work has
 * lasted more than a moment; nothing at all is written otherwise.
 *
 * `CRYO_COLUMNS` overrides the width and `CRYO_PROGRESS_DELAY_MS` the moment (300 ms) before the first draw.
 *
 * @module
 */

import { humanBytes, humanDuration } from "./format.ts";
import { type PhaseName, type Progress, silentProgress } from "../ops/progress.ts";

/** What the progress line shows, as {@link statusLine} reads it. */
export interface StatusState {
  /** The command, e.g. `checkpoint`. */
  command: string;
  /** The current phase (undefined before the first). */
  phase?: string;
  /** When the phase started (`performance.now()`). */
  phaseStart: number;
  /** Bytes the phase counts; undefined for an uncounted step. */
  total?: number;
  /** Bytes done in the phase. */
  done: number;
  /** Recent `(time, done)` samples of the phase, oldest first, for the rate. */
  samples: { t: number; done: number }[];
  /** Since when the target is stopped, when it is. */
  stoppedAt?: number;
  /** How long the last stop lasted, once the target runs again. */
  stoppedMs?: number;
}

/** How far back the rate looks, in milliseconds. */
const RATE_WINDOW = 2000;
/** No ETA before the phase has run this long, in milliseconds. */
const ETA_AFTER = 1500;
/** An ETA past this is not shown, in milliseconds: a rate that low says nothing about the end. */
const ETA_MAX = 24 * 3600_000;

/** The rate between two samples, in bytes per second. */
const rateOf = (a: { t: number; done: number }, b: { t: number; done: number }) =>
  ((b.done - a.done) * 1000) / (b.t - a.t);

/** The rate over the last {@link RATE_WINDOW}, in bytes per second; undefined while it spans too little. */
function recentRate(s: StatusState): number | undefined {
  const last = s.samples[s.samples.length - 1];
  const first = s.samples.find((x) => last && last.t - x.t <= RATE_WINDOW);
  if (!first || !last || last.t - first.t < 500) return undefined;
  return rateOf(first, last);
}

/**
 * The time left, in milliseconds, or undefined until it can be told: the phase must have run for
 * {@link ETA_AFTER} and done 2% of its bytes, and the rate must be steady: over the last second or two, its
 * first half and its second half agree within a factor of two (a phase that starts slowly, such as the first
 * compressed frame, or a rate that just jumped, gives no ETA).
 *
 * @param s The state.
 * @param now The time (`performance.now()`).
 * @returns Milliseconds left, or undefined.
 */
export function eta(s: StatusState, now: number): number | undefined {
  if (s.total === undefined || s.done >= s.total || s.done < s.total * 0.02) return undefined;
  if (now - s.phaseStart < ETA_AFTER) return undefined;
  const last = s.samples[s.samples.length - 1];
  const first = s.samples.find((x) => last && last.t - x.t <= RATE_WINDOW);
  if (!first || !last || last.t - first.t < 1000) return undefined;
  const middle = s.samples.reduce((m, x) =>
    Math.abs(x.t - (first.t + last.t) / 2) < Math.abs(m.t - (first.t + last.t) / 2) ? x : m
  );
  if (middle === first || middle === last) return undefined;
  const early = rateOf(first, middle), late = rateOf(middle, last);
  if (!(early > 0) || !(late > 0) || late > 2 * early || late < early / 2) return undefined;
  const left = ((s.total - s.done) * 1000) / rateOf(first, last);
  return left <= ETA_MAX ? left : undefined;
}

const SPIN = "|/-\\";

/**
 * The progress line for `s` in at most `columns - 1` characters (a line that fills the last column makes
 * some terminals wrap). Less important parts go first when it is narrow: the rate, the bytes, the command's
 * name, the bar, the ETA; the phase and the stop window stay.
 *
 * @param s The state.
 * @param columns The terminal's width.
 * @param now The time (`performance.now()`).
 * @returns The line, without control characters.
 */
export function statusLine(s: StatusState, columns: number, now: number): string {
  const width = Math.max(10, columns - 1);
  const elapsed = now - s.phaseStart;
  // Fields keep their width from one redraw to the next, so that the bar does not jump.
  const stop = s.stoppedAt !== undefined
    ? `FROZEN ${humanDuration(now - s.stoppedAt).padStart(7)}`
    : s.stoppedMs !== undefined
    ? `was frozen ${humanDuration(s.stoppedMs)}`
    : "";
  const counted = s.total !== undefined && s.total > 0;
  const frac = counted ? Math.min(1, s.done / s.total!) : 0;
  // Floor: 99.6% is not done. 100% only when every byte is.
  const pct = counted
    ? `${s.done >= s.total! ? 100 : Math.min(99, Math.floor(frac * 100))}%`.padStart(4)
    : "";
  const bytes = counted ? `${humanBytes(s.done)}/${humanBytes(s.total!)}`.padStart(19) : "";
  const rate = counted && elapsed > 500 ? recentRate(s) : undefined;
  const rateText = counted ? (rate !== undefined ? `${humanBytes(rate)}/s` : "").padStart(12) : "";
  const left = eta(s, now);
  const etaText = counted ? (left !== undefined ? `ETA ${humanDuration(left)}` : "").padEnd(12) : "";
  // An uncounted step: a spinner, its elapsed time, and the bytes it has seen when it reports them.
  const step = counted
    ? ""
    : `${SPIN[Math.floor(now / 250) % SPIN.length]} ${humanDuration(elapsed)}${
      s.done > 0 ? ` ${humanBytes(s.done)}` : ""
    }`;
  const variants: { head: string; bar: boolean; parts: string[] }[] = [
    { head: `${s.command} ${s.phase ?? ""}`, bar: true, parts: [pct, bytes, rateText, etaText] },
    { head: `${s.command} ${s.phase ?? ""}`, bar: true, parts: [pct, bytes, etaText] },
    { head: `${s.command} ${s.phase ?? ""}`, bar: true, parts: [pct, etaText] },
    { head: s.phase ?? s.command, bar: true, parts: [pct, etaText] },
    { head: s.phase ?? s.command, bar: false, parts: [pct, etaText] },
    { head: s.phase ?? s.command, bar: false, parts: [pct] },
  ];
  for (const v of variants) {
    const fixed = [v.head.trim(), stop, step, ...v.parts].filter((x) => x);
    const text = fixed.join(" "); // with the blank slots of a rate or ETA not known yet: the bar keeps its width
    if (!counted || !v.bar) {
      if (text.trimEnd().length <= width) return text.trimEnd();
      continue;
    }
    const room = width - text.length - 3; // " [" before the bar, "]" after
    if (room < 8) continue;
    const cells = Math.min(30, room);
    const filled = Math.floor(frac * cells);
    const bar = `[${"#".repeat(filled)}${"-".repeat(cells - filled)}]`;
    const before = [v.head.trim(), stop].filter((x) => x).join(" ");
    return [before, bar, ...v.parts.filter((x) => x)].join(" ").trimEnd();
  }
  const last = [s.phase ?? s.command, stop, step, pct].filter((x) => x).join(" ");
  return last.length <= width ? last : last.slice(0, width);
}

/** The terminal's width: `CRYO_COLUMNS`, else the console's, else 80. */
function columns(): number {
  const forced = Number(Deno.env.get("CRYO_COLUMNS"));
  if (Number.isInteger(forced) && forced > 0) return forced;
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}

/**
 * A progress line for command `command`, or {@link silentProgress} when stderr is not a terminal or `quiet` is
 * set.
 *
 * @param command What is being done, e.g. `checkpoint`.
 * @param quiet Draw nothing.
 * @param delayMs Draw only once the command has run this long (default 300 ms, or `CRYO_PROGRESS_DELAY_MS`).
 * @returns The progress sink.
 */
export function progressBar(command: string, quiet = false, delayMs?: number): Progress {
  if (quiet || !Deno.stderr.isTerminal()) return silentProgress;
  const delay = delayMs ?? (Number(Deno.env.get("CRYO_PROGRESS_DELAY_MS") ?? "300") || 0);
  const color = !Deno.env.get("NO_COLOR");
  const enc = new TextEncoder();
  const created = performance.now();
  const s: StatusState = { command, phaseStart: created, done: 0, samples: [] };
  let drawn = false;
  let last = 0;
  let timer: ReturnType<typeof setInterval> | undefined;
  const draw = (force = false) => {
    const now = performance.now();
    if (now - created < delay || (!force && now - last < 100)) return;
    last = now;
    let line = statusLine(s, columns(), now);
    if (color) line = line.replace(/FROZEN +\S+ \S+/, (m) => `\x1b[7m${m}\x1b[27m`);
    Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${line}`));
    drawn = true;
  };
  const tick = () => {
    if (timer !== undefined) return;
    // Redraw while nothing advances (an uncounted step, a stopped target); it never keeps cryo alive.
    const t = setInterval(() => draw(), 250);
    Deno.unrefTimer(t);
    timer = t;
  };
  const sample = (now: number) => {
    s.samples.push({ t: now, done: s.done });
    while (s.samples.length > 2 && now - s.samples[1].t > RATE_WINDOW) s.samples.shift();
  };
  return {
    total(bytes) {
      s.total = bytes;
      tick();
    },
    advance(bytes) {
      s.done += bytes;
      sample(performance.now());
      tick();
      draw();
    },
    done() {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      if (drawn) Deno.stderr.writeSync(enc.encode("\r\x1b[2K"));
      drawn = false;
    },
    phase(name: PhaseName, total?: number) {
      const now = performance.now();
      s.phase = name;
      s.total = total;
      s.done = 0;
      s.phaseStart = now;
      s.samples = [{ t: now, done: 0 }];
      tick();
      draw(true);
    },
    stopped(frozen: boolean, at = performance.now()) {
      if (frozen) s.stoppedAt ??= at; // the earliest: a hibernated process was stopped before its wake froze it
      else if (s.stoppedAt !== undefined) {
        s.stoppedMs = at - s.stoppedAt;
        s.stoppedAt = undefined;
      }
      if (s.phase) draw(true); // else the first phase draws it
    },
  };
}
