/**
 * The record of a restore in progress, for recovery after cryo itself was killed. While a restore writes, the
 * target is held stopped by a pending SIGSTOP (see `Frozen.hold`) and this small marker names the target (pid
 * and start time, so a reused pid is not mistaken for it) and the image. Should cryo die by SIGKILL, the
 * target stays stopped, and `cryo restore --recover --pid P` (or the same restore run again) reads the marker,
 * writes the whole image again (a restore is idempotent), puts registers back and sends SIGCONT.
 *
 * Markers live in a directory only their user can enter: `/run/cryo` for root, else
 * `$XDG_RUNTIME_DIR/cryo` (or `/tmp/cryo-UID`), mode 0700; a marker that is not a regular 0600 file of this
 * user is ignored.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { processState, startTimeOf } from "../kernel/process_status.ts";

/** What a marker records. */
export interface RestoreMarker {
  /** The target. */
  pid: number;
  /** Its start time (field 22 of `/proc/PID/stat`, clock ticks since boot). */
  startTime: string;
  /** The image being restored (an absolute path; `-` for a stream). */
  image: string;
  /** When the write phase began (Unix ms). */
  time: number;
}

/** The directory markers live in. */
export function markerDir(): string {
  const uid = Deno.uid() ?? 0;
  if (uid === 0) return "/run/cryo";
  const runtime = Deno.env.get("XDG_RUNTIME_DIR");
  return runtime ? `${runtime}/cryo` : `/tmp/cryo-${uid}`;
}

/**
 * Write a marker file (JSON, mode 0600, written then renamed into place) in {@link markerDir}, which must be a
 * private directory of this user.
 *
 * @param name The file's name in the directory, e.g. `restore-42.json`.
 * @param what What the marker records, for the error.
 * @param value The marker.
 */
export function writePrivateMarker(name: string, what: string, value: unknown): void {
  const dir = markerDir();
  Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = Deno.statSync(dir);
  if (st.uid !== (Deno.uid() ?? 0) || ((st.mode ?? 0) & 0o077) !== 0) {
    throw new CryoError(`Cannot record the ${what} in ${dir}: it is not a private directory of this user`);
  }
  const path = `${dir}/${name}`;
  const tmp = `${path}.${Deno.pid}`;
  Deno.writeTextFileSync(tmp, JSON.stringify(value) + "\n", { mode: 0o600 });
  Deno.renameSync(tmp, path);
}

/**
 * A marker file's JSON if it is a regular 0600 file of this user and names process `pid` as it is now (same
 * start time); else undefined.
 *
 * @param name The file's name in {@link markerDir}.
 * @param pid The process it must name.
 * @returns The parsed marker.
 */
export function readPrivateMarker<T extends { pid: number; startTime: string }>(
  name: string,
  pid: number,
): T | undefined {
  const path = `${markerDir()}/${name}`;
  try {
    const st = Deno.lstatSync(path);
    if (!st.isFile || st.uid !== (Deno.uid() ?? 0) || ((st.mode ?? 0) & 0o077) !== 0) return undefined;
    const m = JSON.parse(Deno.readTextFileSync(path)) as T;
    if (m.pid !== pid || m.startTime !== startTimeOf(pid)) return undefined; // another process has this pid now
    return m;
  } catch {
    return undefined;
  }
}

/**
 * Remove a marker file. Idempotent.
 *
 * @param name The file's name in {@link markerDir}.
 */
export function removePrivateMarker(name: string): void {
  try {
    Deno.removeSync(`${markerDir()}/${name}`);
  } catch { /* none */ }
}

/**
 * Record that a restore of `pid` from `image` is writing.
 *
 * @param pid The target.
 * @param image The image (made absolute).
 */
export function writeMarker(pid: number, image: string): void {
  const abs = image === "-" || image.startsWith("/") ? image : `${Deno.cwd()}/${image}`;
  const marker: RestoreMarker = { pid, startTime: startTimeOf(pid), image: abs, time: Date.now() };
  writePrivateMarker(`restore-${pid}.json`, "restore", marker);
}

/**
 * The marker of an interrupted restore of `pid`, if one names this very process (same start time).
 *
 * @param pid The target.
 * @returns The marker, or undefined.
 */
export function readMarker(pid: number): RestoreMarker | undefined {
  const m = readPrivateMarker<RestoreMarker>(`restore-${pid}.json`, pid);
  return m && typeof m.image === "string" ? m : undefined;
}

/**
 * Remove the marker of `pid` (the restore finished or was undone). Idempotent.
 *
 * @param pid The target.
 */
export function removeMarker(pid: number): void {
  removePrivateMarker(`restore-${pid}.json`);
}

/**
 * Whether `pid` is waiting for an interrupted restore to be finished: a marker names it and it is stopped
 * (state `T`). Call it before freezing. A marker whose process runs is stale (cryo was killed just before
 * the hold, or just after the thaw) and is removed.
 *
 * @param pid The target.
 * @returns True when a restore must finish and then resume it.
 */
export function pendingRecovery(pid: number): boolean {
  if (!readMarker(pid)) return false;
  if (processState(pid) === "T") return true;
  removeMarker(pid);
  return false;
}
