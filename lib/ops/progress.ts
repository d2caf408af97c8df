/**
 * How long operations report progress: {@link Progress}, which the command line draws as one status line
 * (lib/cli/progress.ts) and a library caller may implement or leave {@link silentProgress}.
 *
 * An operation names each phase of its work as it starts it ({@link PHASES}), says how many bytes the phase
 * will count (or nothing, for a step whose progress cannot be counted truthfully, such as an fsync), and says
 * when the target process is stopped and when it runs again, so that a reader can show the stop window.
 *
 * @module
 */

/**
 * The phases operations report, in the order they can happen: `verify` (every checksum of an image), `decode`
 * (every compressed record decoded, before anything is written), `freeze` (stopping the target's threads),
 * `read` (copying the target's memory into an image), `transcode` (compressing or encrypting a raw image
 * taken while the target was stopped), `write` (writing an image's memory into a process), `sync` (the
 * index, fsync and rename that make an image visible), `release` (freeing a hibernated process's pages),
 * `fill` (a lazy wake's background copy, while the process runs), `compare` (two images, page by page).
 */
export const PHASES = [
  "verify",
  "decode",
  "freeze",
  "read",
  "transcode",
  "write",
  "sync",
  "release",
  "fill",
  "compare",
] as const;

/** One of {@link PHASES}. */
export type PhaseName = typeof PHASES[number];

/** Receives progress from long operations. */
export interface Progress {
  /** Set the number of bytes the current phase counts. */
  total(bytes: number): void;
  /** Add bytes done in the current phase. */
  advance(bytes: number): void;
  /** The operation is over (or failed): erase what was drawn. */
  done(): void;
  /**
   * Start a new phase: its name and the bytes it will count with {@link advance}; without `total`, a step
   * whose progress is not counted (it is shown with its elapsed time, never as a percentage).
   */
  phase?(name: PhaseName, total?: number): void;
  /**
   * The target process was stopped (`true`) or runs again (`false`), at `at` (a `performance.now()` time,
   * default now): the stop window a reader shows.
   */
  stopped?(frozen: boolean, at?: number): void;
}

/** A progress sink that draws nothing. */
export const silentProgress: Progress = { total() {}, advance() {}, done() {} };

/**
 * Start phase `name` on `p`: `p.phase` when it has one; a sink without it (one bar, no phases) is given the
 * total of a counted phase only.
 *
 * @param p The progress sink.
 * @param name The phase.
 * @param total The bytes it counts; omitted for an uncounted step.
 */
export function startPhase(p: Progress, name: PhaseName, total?: number): void {
  if (p.phase) p.phase(name, total);
  else if (total !== undefined) p.total(total);
}

/**
 * Adapt a reader's running counts (`(phase, bytesSoFar)`, as `MemoryLoader.verify()` reports them) to `p`: a
 * phase is started when its first count arrives, with its total from `totals`, and advanced by the difference.
 *
 * @param p The progress sink.
 * @param totals The bytes each phase counts to.
 * @returns The callback.
 */
export function phaseCounter(
  p: Progress,
  totals: Partial<Record<PhaseName, number>>,
): (phase: PhaseName, bytesSoFar: number) => void {
  let current: PhaseName | undefined;
  let reported = 0;
  return (phase, bytesSoFar) => {
    if (phase !== current) {
      current = phase;
      reported = 0;
      startPhase(p, phase, totals[phase]);
    }
    if (bytesSoFar > reported) {
      p.advance(bytesSoFar - reported);
      reported = bytesSoFar;
    }
  };
}
