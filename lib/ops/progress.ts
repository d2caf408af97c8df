/**
 * How long operations report progress: {@link Progress}, which the command line draws as a bar
 * (lib/cli/progress.ts) and a library caller may implement or leave {@link silentProgress}.
 *
 * @module
 */

/** Receives progress from long operations. */
export interface Progress {
  /** Set the total number of bytes expected. */
  total(bytes: number): void;
  /** Add bytes done. */
  advance(bytes: number): void;
  /** Erase the bar. */
  done(): void;
  /** Start a new phase of the work (e.g. `encode` after `checkpoint`): a new label and total, nothing done yet. */
  phase?(label: string, total: number): void;
}

/** A progress sink that draws nothing. */
export const silentProgress: Progress = { total() {}, advance() {}, done() {} };
