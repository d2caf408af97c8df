/**
 * Wake a process that `hibernate` (lib/ops/hibernate.ts) left stopped with its pages released.
 *
 * Before anything is written: the marker must name this very process (pid and start time), the image must be
 * the one recorded (path and identity) and verify (every checksum, every record decoded; a key means it must
 * be encrypted and authenticate), and the process must be stopped.
 *
 * - **Eager** (default): the restore machinery (lib/restore.ts: frozen, layout and threads checked, held,
 *   every overwritten byte journaled, all or nothing) writes every page back; then SIGCONT.
 * - **Lazy** (lib/ops/wake_lazy.ts): frozen again, a userfaultfd is created inside the target and the released
 *   anonymous regions are registered in missing mode; private file regions (their copied-on-write pages) are
 *   written at once; a fault server (lib/kernel/fault_server.ts) serves every page the process touches from the
 *   image, read with `pread` (a compressed image is decoded into a scratch file first; an encrypted one is
 *   refused: wake it eagerly). The process is resumed at once while the remaining pages are filled in the
 *   background (`UFFDIO_COPY`, skipping those already served). It returns when every page is back and the
 *   userfaultfd is closed. An abort (Ctrl-C) finishes the loading eagerly, then returns.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { restore } from "./restore.ts";
import { MemoryLoader } from "../image/loader.ts";
import { isUserfaultfd } from "../kernel/uffd.ts";
import {
  type HibernationMarker,
  imageIdentity,
  ownerAlive,
  readHibernationMarker,
  removeHibernationMarker,
} from "./hibernate.ts";
import { processMemory, processState, settleStopped } from "../kernel/process_status.ts";
import { closeTargetFd, lazyWake } from "./wake_lazy.ts";
import type { WakeOptions, WakeResult } from "./wake_options.ts";

function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The marker's state as far as waking goes: what {@link wake} does next. */
type Found = { abs: string; marker: HibernationMarker; resume: boolean };

/**
 * Every check before the wake: marker, image path and identity, stopped state. `resume` says that a lazy wake
 * whose cryo died left its userfaultfd in the target: the wake continues it.
 */
async function checkHibernated(pid: number, path: string): Promise<Found> {
  const marker = readHibernationMarker(pid);
  if (!marker) {
    throw new CryoError(
      `Cannot wake pid ${pid}: it is not hibernated (no hibernation of this process is recorded, or the pid ` +
        `now belongs to another process)`,
    );
  }
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  if (!sameFile(abs, marker.image)) {
    throw new CryoError(`Cannot wake pid ${pid} from ${abs}: it was hibernated into ${marker.image}`);
  }
  {
    // Its footer only (opening it checks every record: the wake opens it once, to verify it).
    if (imageIdentity(await MemoryLoader.head(abs)) !== marker.identity) {
      throw new CryoError(
        `Cannot wake pid ${pid} from ${abs}: the image is not the one it was hibernated into (it was replaced)`,
      );
    }
  }
  if (marker.state === "waking" && ownerAlive(marker)) {
    throw new CryoError(`Cannot wake pid ${pid}: cryo pid ${marker.owner!.pid} is waking it right now`);
  }
  const kept = marker.uffdFd !== undefined && isUserfaultfd(pid, marker.uffdFd);
  if (marker.state === "waking") {
    if (kept) return { abs, marker, resume: true };
    throw new CryoError(
      `Cannot wake pid ${pid}: a lazy wake resumed it and did not finish, and its userfaultfd is gone, so the ` +
        `pages it had not loaded read as zero since; if it is still alive, a restore from ${marker.image} ` +
        `rolls it back to the hibernation point (what it did since is lost), else restart it`,
    );
  }
  if (!(await settleStopped(pid, 500))) {
    const state = processState(pid);
    throw new CryoError(
      `Cannot wake pid ${pid}: it is not stopped (state ${state}): it was resumed since it was hibernated`,
    );
  }
  if (kept) closeTargetFd(pid, marker.uffdFd!); // left by a lazy wake killed before it resumed the process
  return { abs, marker, resume: false };
}

/**
 * Wake process `pid`, hibernated into `path`: write every page back and resume it (eager), or resume it at
 * once and serve its pages on demand (lazy). A lazy wake whose cryo was killed is continued (lazily, whatever
 * `lazy` says): its userfaultfd stayed in the target, and the threads that fault meanwhile wait for it.
 *
 * @param pid The hibernated process.
 * @param path Its image.
 * @param opts Lazy, key, progress, abort.
 * @returns What was loaded, the stop window, and for a lazy wake the fault server's counters.
 * @throws {CryoError} When the process is not hibernated into this image, or not stopped (nothing written).
 * @throws {ImageError} When the image does not verify (nothing written).
 * @throws {KeyError} When the key is missing, wrong, or given for a plaintext image (nothing written).
 * @throws {LayoutMismatchError} When the process's layout or threads changed (nothing written).
 */
export async function wake(pid: number, path: string, opts: WakeOptions = {}): Promise<WakeResult> {
  const started = performance.now();
  const found = await checkHibernated(pid, path);
  const abs = found.abs;
  if (found.resume) return await lazyWake(pid, abs, opts, started, found.marker.uffdFd);
  if (!opts.lazy) {
    opts.progress?.stopped?.(true, started); // hibernated: stopped since then
    const r = await restore(pid, abs, {
      key: opts.key,
      codecs: opts.codecs,
      freezeTimeoutMs: opts.freezeTimeoutMs,
      progress: opts.progress,
      signal: opts.signal,
      memoryBudget: opts.memoryBudget,
    });
    const stoppedMs = performance.now() - started;
    Deno.kill(pid, "SIGCONT"); // it is in group stop since the hibernation
    removeHibernationMarker(pid);
    return {
      pid,
      path: abs,
      lazy: false,
      dataBytes: r.dataBytes,
      holeBytes: r.holeBytes,
      stoppedMs,
      firstFaultMs: 0,
      backgroundBytes: 0,
      finishedEagerly: false,
      resumed: false,
      after: processMemory(pid),
      totalMs: performance.now() - started,
    };
  }
  return await lazyWake(pid, abs, opts, started);
}
