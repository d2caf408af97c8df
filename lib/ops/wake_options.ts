/**
 * What `wake` (lib/ops/wake.ts) takes and returns, eagerly or lazily (lib/ops/wake_lazy.ts).
 *
 * @module
 */

import type { Codec } from "../codecs/codec.ts";
import type { SealKey } from "../codecs/keys.ts";
import type { FaultServerStats } from "../kernel/fault_server.ts";
import type { ProcessMemory } from "../kernel/process_status.ts";
import type { Progress } from "./progress.ts";

/** Options of `wake()`. */
export interface WakeOptions {
  /** Resume at once and serve pages on demand while the rest loads in the background (default false). */
  lazy?: boolean;
  /** The key of an encrypted image. */
  key?: SealKey;
  /** Codecs beyond raw, zstd and lz4. */
  codecs?: readonly Codec[];
  /** How long the freeze may take, in milliseconds. */
  freezeTimeoutMs?: number;
  /** Receives bytes loaded. */
  progress?: Progress;
  /** Eager: bytes of buffers the write may hold at once, whatever the image's size (lib/image/budget.ts). */
  memoryBudget?: number;
  /**
   * Eager: before the write nothing is done, during it everything is undone (the process stays hibernated).
   * Lazy: before the resume the process stays hibernated; after it, the loading is finished eagerly.
   */
  signal?: AbortSignal;
  /** Lazy: the largest prefetch window of the fault server (default 1 MiB). */
  maxPrefetch?: number;
  /** Lazy: how many bytes the background fill copies per `UFFDIO_COPY` (default 2 MiB). */
  chunkBytes?: number;
  /** Lazy: called once the process runs again (before the background fill). */
  onResumed?: () => void | Promise<void>;
}

/** What `wake()` did. */
export interface WakeResult {
  /** The process. */
  pid: number;
  /** The image. */
  path: string;
  /** Whether the wake was lazy. */
  lazy: boolean;
  /** Bytes of data written back (eager) or served and filled (lazy). */
  dataBytes: number;
  /** Bytes of holes (zero). */
  holeBytes: number;
  /** How long the process stayed stopped during the wake (from the start of the wake to its SIGCONT). */
  stoppedMs: number;
  /** Lazy: from the SIGCONT to the first fault seen served (sampled between background copies); else 0. */
  firstFaultMs: number;
  /** Lazy: the fault server's counters at the end. */
  faults?: FaultServerStats;
  /** Lazy: bytes filled by the background copy (the rest was served on faults). */
  backgroundBytes: number;
  /** Lazy: whether an abort switched the loading to eager. */
  finishedEagerly: boolean;
  /** Whether this continued a lazy wake whose cryo had died (its userfaultfd taken back from the target). */
  resumed: boolean;
  /** `/proc/PID/status` at the end. */
  after: ProcessMemory;
  /** How long the whole wake took, in milliseconds. */
  totalMs: number;
}
