/**
 * Hibernate another process: freeze it, persist its memory into an image (lib/checkpoint.ts, kept frozen),
 * **finalize and fsync the image before a single page is released**, record the hibernation in a marker, then
 * release the persisted pages inside the target (an injected `madvise(MADV_DONTNEED)` on every private region
 * the image holds) and leave it stopped by a SIGSTOP that outlives cryo (`Frozen.hold()` + `thaw(true)`).
 * `wake` (lib/ops/wake.ts) brings it back.
 *
 * A failure before the release point releases nothing, removes the image and thaws the target as it was. A
 * failure during the release leaves the target stopped and the marker in place: `cryo wake` brings it back
 * (everything the image holds is written back, released or not).
 *
 * @module
 */

import { checkpoint, type CheckpointOptions } from "./checkpoint.ts";
import { CryoError } from "../errors.ts";
import { readPrivateMarker, removePrivateMarker, writePrivateMarker } from "./recovery.ts";
import {
  type ProcessMemory,
  processMemory,
  processState,
  settleStopped,
  startTimeOf,
} from "../kernel/process_status.ts";
import { inject } from "../kernel/inject.ts";
import { MemoryLoader } from "../image/loader.ts";
import type { Footer } from "../image/footer.ts";
import type { ImageRegion } from "../image/format.ts";
import { MADV } from "../../ffi/constants.ts";
import { startPhase } from "./progress.ts";

/** What a hibernation marker records. */
export interface HibernationMarker {
  /** The target. */
  pid: number;
  /** Its start time (field 22 of `/proc/PID/stat`): a later process with the same pid is not it. */
  startTime: string;
  /** The image, an absolute path. */
  image: string;
  /** The image's identity ({@link imageIdentity}): a replaced image is refused. */
  identity: string;
  /** `hibernated`: stopped, pages released; `waking`: a lazy wake resumed it and was still loading. */
  state: "hibernated" | "waking";
  /**
   * The userfaultfd a lazy wake left open in the target (its descriptor number there), so that a killed wake
   * can be continued; absent otherwise.
   */
  uffdFd?: number;
  /** The cryo process that wrote the marker (pid and start time): a wake still running is not continued. */
  owner?: { pid: number; startTime: string };
  /** When it was written (Unix ms). */
  time: number;
}

function hibernationName(pid: number): string {
  return `hibernate-${pid}.json`;
}

/**
 * The identity of an image: the checksums of its header, index and section table (which cover, through the
 * index, every record's checksum) and its size.
 *
 * @param image The image's footer (an open image, or its head: `MemoryLoader.head()`).
 * @returns A string that changes when any of them does.
 */
export function imageIdentity(image: { readonly footer: Footer }): string {
  const f = image.footer;
  const h = (v: bigint) => v.toString(16).padStart(16, "0");
  return `${h(f.headerChecksum)}-${h(f.indexChecksum)}-${h(f.sectionsChecksum)}-${f.fileSize}`;
}

/**
 * Record that `pid` is hibernated into an image (in the private marker directory of lib/recovery.ts).
 *
 * @param marker What to record (its `startTime` is the process's own).
 */
export function writeHibernationMarker(
  marker: Omit<HibernationMarker, "startTime" | "time" | "owner">,
): void {
  const full: HibernationMarker = {
    ...marker,
    startTime: startTimeOf(marker.pid),
    time: Date.now(),
    owner: { pid: Deno.pid, startTime: startTimeOf(Deno.pid) },
  };
  writePrivateMarker(hibernationName(marker.pid), "hibernation", full);
}

/**
 * The hibernation marker of `pid`, if one names this very process (same start time) and is a private file
 * of this user.
 *
 * @param pid The process.
 * @returns The marker, or undefined.
 */
export function readHibernationMarker(pid: number): HibernationMarker | undefined {
  const m = readPrivateMarker<HibernationMarker>(hibernationName(pid), pid);
  return m && typeof m.image === "string" && typeof m.identity === "string" ? m : undefined;
}

/**
 * Whether the cryo process that wrote `marker` still runs (and is not this one).
 *
 * @param marker A marker.
 * @returns True when its owner is alive.
 */
export function ownerAlive(marker: HibernationMarker): boolean {
  const o = marker.owner;
  if (!o || o.pid === Deno.pid) return false;
  try {
    return startTimeOf(o.pid) === o.startTime;
  } catch {
    return false;
  }
}

/**
 * Remove the hibernation marker of `pid`. Idempotent.
 *
 * @param pid The process.
 */
export function removeHibernationMarker(pid: number): void {
  removePrivateMarker(hibernationName(pid));
}

/** Options of {@link hibernate}: those of a checkpoint (filters, codec, sealer, progress, abort). */
export type HibernateOptions = Omit<CheckpointOptions, "keepFrozen" | "leaveStopped" | "fsync">;

/** What {@link hibernate} did. */
export interface HibernateResult {
  /** The process. */
  pid: number;
  /** The image (absolute path). */
  path: string;
  /** The image's identity, as recorded in the marker. */
  identity: string;
  /** Bytes of data persisted (decoded). */
  dataBytes: number;
  /** Bytes of holes. */
  holeBytes: number;
  /** The image's size in bytes. */
  imageBytes: number;
  /** Regions whose pages were released. */
  regionsReleased: number;
  /** Bytes of address space released (`madvise` lengths). */
  releasedBytes: number;
  /** `/proc/PID/status` before the freeze. */
  before: ProcessMemory;
  /** `/proc/PID/status` after the release. */
  after: ProcessMemory;
  /** Resident memory freed, measured: `before.rss - after.rss`. */
  freedBytes: number;
  /** Resident anonymous memory freed, measured: `before.rssAnon - after.rssAnon`. */
  freedAnonBytes: number;
  /** How long cryo held the target frozen (freeze to release done); it stays stopped afterwards. */
  stoppedMs: number;
  /** How long releasing took (injected calls), in milliseconds. */
  releaseMs: number;
  /** How long the whole hibernation took, in milliseconds. */
  totalMs: number;
}

/**
 * Hibernate process `pid` into the image at `path`: persist, fsync, record, release its pages, leave it
 * stopped. Bring it back with `wake`.
 *
 * @example Free an idle process's memory and bring it back
 * ```ts ignore
 * import { hibernate, wake } from "./mod.ts";
 *
 * const h = await hibernate(pid, "/var/lib/app.cryo");
 * console.log(`freed ${h.freedBytes} bytes`);
 * await wake(pid, "/var/lib/app.cryo", { lazy: true });
 * ```
 *
 * @param pid The process (not this one).
 * @param path The image path (a file: not `-`).
 * @param opts Filters, codec, sealer, progress, abort.
 * @returns What was persisted and freed.
 * @throws {CryoError} When the process is already hibernated, or the release failed part-way (then it is left
 *   stopped and hibernated: `wake` brings it back).
 * @throws {SystemError} When the process cannot be frozen, read or written (nothing released, thawed).
 */
export async function hibernate(
  pid: number,
  path: string,
  opts: HibernateOptions = {},
): Promise<HibernateResult> {
  const started = performance.now();
  if (path === "-") throw new TypeError("Cannot hibernate into a stream: wake needs the image file");
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const existing = readHibernationMarker(pid);
  if (existing?.state === "waking") {
    throw new CryoError(
      `Cannot hibernate pid ${pid}: a lazy wake of it has not finished (\`cryo wake\` finishes it)`,
    );
  }
  if (existing && processState(pid) === "T") {
    throw new CryoError(`Cannot hibernate pid ${pid}: it is hibernated already, into ${existing.image}`);
  }
  const before = processMemory(pid);
  const taken = await checkpoint(pid, abs, { ...opts, fsync: true, keepFrozen: true });
  const frozen = taken.frozen!;
  const frozenAt = performance.now() - taken.stoppedMs;
  let identity: string;
  let regions: readonly ImageRegion[];
  try {
    opts.signal?.throwIfAborted();
    // Its footer and header only: opening it checks every record, and for an image of half a million records
    // that cost this process 12 MiB more than the checkpoint had (97-100 MiB of RSS, past the 96 MiB goal).
    const head = await MemoryLoader.head(abs);
    identity = imageIdentity(head);
    regions = head.regions;
    // From here the target must not run half-released: a stop that outlives cryo, then the marker.
    frozen.hold();
    writeHibernationMarker({ pid, image: abs, identity, state: "hibernated" });
  } catch (e) {
    frozen.thaw();
    removeHibernationMarker(pid);
    try {
      Deno.removeSync(abs);
    } catch { /* already gone */ }
    throw e;
  }
  // The release point: the image is complete and synced, the marker written.
  const releaseStarted = performance.now();
  if (opts.progress) startPhase(opts.progress, "release");
  let regionsReleased = 0;
  let releasedBytes = 0n;
  try {
    using inj = inject(frozen);
    for (const g of regions) {
      if (g.relocatable || g.perms.shared) continue; // shared memory is not freed by dropping our mapping
      inj.madvise(g.start, g.end - g.start, MADV.DONTNEED);
      regionsReleased++;
      releasedBytes += g.end - g.start;
    }
  } catch (e) {
    frozen.thaw(true); // stays stopped; the marker says how to bring it back
    throw new CryoError(
      `Cannot hibernate pid ${pid}: releasing its pages failed (${
        (e as Error).message
      }); it is left stopped, ` +
        `hibernated into ${abs}: a wake from that image brings it back`,
      { cause: e },
    );
  }
  const releaseMs = performance.now() - releaseStarted;
  opts.progress?.done();
  frozen.thaw(true); // the hold stays: the process is stopped (state T) until wake sends SIGCONT
  const stoppedMs = performance.now() - frozenAt;
  await settleStopped(pid);
  const after = processMemory(pid);
  return {
    pid,
    path: abs,
    identity,
    dataBytes: taken.dataBytes,
    holeBytes: taken.holeBytes,
    imageBytes: taken.imageBytes,
    regionsReleased,
    releasedBytes: Number(releasedBytes),
    before,
    after,
    freedBytes: before.rss - after.rss,
    freedAnonBytes: before.rssAnon - after.rssAnon,
    stoppedMs,
    releaseMs,
    totalMs: performance.now() - started,
  };
}
