/**
 * Snapshots for test suites: checkpoint a child process under test once, run a case, roll the child back before
 * the next one. The image lives in a private temporary directory and is removed on dispose.
 *
 * @module
 */

import { checkpoint, type CheckpointOptions, type CheckpointResult } from "./checkpoint.ts";
import { restore, type RestoreOptions } from "./restore.ts";
import { HeldImage } from "./held_image.ts";
import type { RestoreResult } from "./restore_commit.ts";
import { trackingUnavailable } from "../kernel/tracking.ts";
import { releaseTracking } from "./tracked.ts";

/** Options of {@link snapshot}: the checkpoint's, and how long to wait for the target to settle. */
export interface SnapshotOptions extends CheckpointOptions {
  /**
   * The target has settled when its thread set and its map stay the same for this long (default 200 ms): a
   * program that is still starting threads or mapping memory is not snapshotted half-way.
   */
  settleMs?: number;
  /** Wait at most this long for it to settle, then snapshot it anyway (default 5000 ms). */
  settleTimeoutMs?: number;
  /**
   * Track the writes of the target from the snapshot on (default true where the kernel can,
   * lib/kernel/tracking.ts), so that a rollback writes back only the pages written since (and releases the
   * pages first populated since). Without it, or where the kernel cannot, every rollback takes the full path;
   * its result's `tracking.reason` says why.
   */
  track?: boolean;
}

/** What can be compared of a process's thread set and layout, cheaply. */
function shape(pid: number): string {
  const tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name).sort().join(",");
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`).split("\n").map((l) => l.split(" ", 2).join(" "));
  return `${tids}\n${maps.join("\n")}`;
}

/**
 * Wait until `pid`'s thread set and map have stayed the same for `quietMs`, or `timeoutMs` has passed.
 *
 * @returns Whether it settled.
 */
async function settle(pid: number, quietMs: number, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  let last = shape(pid);
  let since = performance.now();
  while (performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, Math.min(50, quietMs)));
    const now = shape(pid);
    if (now !== last) {
      last = now;
      since = performance.now();
    } else if (performance.now() - since >= quietMs) return true;
  }
  return false;
}

/** A checkpoint of a process that it can be rolled back to, any number of times. */
export class Snapshot implements AsyncDisposable {
  /** The process. */
  readonly pid: number;
  /** The image file. */
  readonly path: string;
  /** What the checkpoint persisted. */
  readonly taken: CheckpointResult;
  readonly #dir: string;
  readonly #untracked: string | undefined;
  #held: HeldImage | undefined;
  #closed = false;

  private constructor(
    pid: number,
    dir: string,
    path: string,
    taken: CheckpointResult,
    untracked: string | undefined,
  ) {
    this.pid = pid;
    this.#dir = dir;
    this.path = path;
    this.taken = taken;
    this.#untracked = untracked;
  }

  /** Whether write tracking was armed at the snapshot (rollbacks then write back only what was written since). */
  get tracked(): boolean {
    return this.#untracked === undefined;
  }

  /** @internal Use {@link snapshot}. */
  static async take(pid: number, opts: SnapshotOptions = {}): Promise<Snapshot> {
    await settle(pid, opts.settleMs ?? 200, opts.settleTimeoutMs ?? 5000);
    const dir = await Deno.makeTempDir({ prefix: "cryo-snapshot-" });
    const path = `${dir}/${pid}.cryo`;
    // Armed inside the checkpoint's own freeze (lib/ops/incremental.ts), kept in the target: a second freeze
    // just before the checkpoint would leave threads restarting their timed waits (restart_syscall) when their
    // registers are recorded, and a rollback could not create such a thread again once it ended.
    const track = opts.track !== false && !trackingUnavailable();
    try {
      const taken = await checkpoint(pid, path, { fsync: false, ...opts, track });
      const untracked = opts.track === false
        ? "not asked (track: false)"
        : !track
        ? trackingUnavailable()
        : taken.incremental?.armed
        ? undefined
        : taken.incremental?.reason ?? "tracking was not armed";
      return new Snapshot(pid, dir, path, taken, untracked);
    } catch (e) {
      await Deno.remove(dir, { recursive: true });
      throw e;
    }
  }

  /**
   * Roll the process back to the snapshot: memory and (by default) registers. With tracking, only the pages
   * written since the snapshot are written back, the pages first populated since are released, and the
   * tracking is armed again; the result's `tracking` says which path was taken.
   *
   * @param opts Restore options (registers, codecs).
   * @returns What was written.
   */
  async rollback(opts: RestoreOptions = {}): Promise<RestoreResult> {
    if (this.#closed) throw new Error(`Cannot roll back pid ${this.pid}: the snapshot is closed`);
    if (!this.#held?.stands(this.path)) {
      // Verified once, in full, and held open; later rollbacks check that the held file is unchanged (its
      // statx stamp, lib/ops/held_image.ts) and read only the pages they write back from it.
      this.#held?.close();
      this.#held = undefined;
      this.#held = await HeldImage.open(this.path, opts.codecs);
    }
    const result = await restore(this.pid, this.path, {
      tracking: this.tracked ? "auto" : false,
      held: this.#held,
      ...opts,
    });
    if (!this.tracked) result.tracking = { used: false, reason: this.#untracked };
    return result;
  }

  /** Remove the image. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#held?.close();
    if (this.tracked) {
      try {
        releaseTracking(this.pid); // the target's userfaultfd closed (by an injected close), the marker removed
      } catch { /* the process is gone */ }
    }
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Take a snapshot of process `pid` (a child under test): `await using snap = await snapshot(pid)`, then
 * `await snap.rollback()` before each case. Images are written without fsync (they are scratch). It first waits
 * (bounded, `settleTimeoutMs`) until the target's thread set and map have stopped changing (`settleMs`), so a
 * program still starting up is not snapshotted half-way.
 *
 * @param pid The process (not this one).
 * @param opts Checkpoint options (filters, registers), and how long to wait for the target to settle.
 * @returns The snapshot; dispose it to remove the image.
 *
 * @example Roll a child back between cases
 * ```ts ignore
 * import { snapshot } from "../mod.ts";
 *
 * const child = new Deno.Command("./server", { stdin: "piped" }).spawn();
 * try {
 *   await using snap = await snapshot(child.pid);
 *   // … case 1 changes the child …
 *   await snap.rollback();
 *   // … case 2 starts from the same state …
 * } finally {
 *   child.kill("SIGKILL");
 *   await child.status;
 * }
 * ```
 */
export function snapshot(pid: number, opts: SnapshotOptions = {}): Promise<Snapshot> {
  return Snapshot.take(pid, opts);
}
