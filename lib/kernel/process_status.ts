/**
 * A process's state as `/proc/<pid>/stat` and `/proc/<pid>/status` tell it: its state letter, its start time
 * (which tells it from a later process with the same pid), its resident memory, and a bounded wait for it to
 * stop.
 *
 * @module
 */

import { CryoError } from "../errors.ts";

/**
 * The text of `/proc/<pid>/<file>`.
 *
 * @param pid The process.
 * @param file `stat` or `status`.
 * @returns The text.
 * @throws {CryoError} When the process does not exist.
 */
function procText(pid: number | "self", file: string): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/${file}`);
  } catch {
    throw new CryoError(`Cannot read /proc/${pid}/${file}: no such process`);
  }
}

/**
 * The fields of a `/proc/<pid>/stat` text from field 3 (the state) on. The command name (field 2) may hold
 * spaces and parentheses: fields are counted after its last ")".
 *
 * @param stat The file's text.
 * @returns Field 3 at index 0, field N at index N - 3.
 */
export function parseStat(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/**
 * The fields of `/proc/<pid>/stat` from field 3 (the state) on ({@link parseStat}).
 *
 * @param pid The process.
 * @returns Field 3 at index 0, field N at index N - 3.
 * @throws {CryoError} When the process does not exist.
 */
export function statFields(pid: number | "self"): string[] {
  return parseStat(procText(pid, "stat"));
}

/**
 * The start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks since boot), which tells a process from a
 * later one with the same pid.
 *
 * @param pid The process.
 * @returns The field, as text.
 * @throws {CryoError} When the process does not exist.
 */
export function startTimeOf(pid: number | "self"): string {
  return statFields(pid)[22 - 3];
}

/** Memory figures of a process, from `/proc/PID/status`, in bytes. */
export interface ProcessMemory {
  /** Resident set size (VmRSS). */
  rss: number;
  /** Resident anonymous memory (RssAnon). */
  rssAnon: number;
  /** Resident file-backed memory (RssFile). */
  rssFile: number;
  /** Resident shared memory (RssShmem). */
  rssShmem: number;
}

/**
 * Read a process's resident memory from `/proc/PID/status`.
 *
 * @param pid The process.
 * @returns VmRSS, RssAnon, RssFile, RssShmem in bytes.
 * @throws {CryoError} When the process does not exist.
 */
export function processMemory(pid: number): ProcessMemory {
  const text = procText(pid, "status");
  const kb = (field: string) =>
    Number(text.match(new RegExp(`^${field}:\\s*(\\d+) kB`, "m"))?.[1] ?? 0) * 1024;
  return { rss: kb("VmRSS"), rssAnon: kb("RssAnon"), rssFile: kb("RssFile"), rssShmem: kb("RssShmem") };
}

/**
 * The state letter of a process (field 3 of `/proc/PID/stat`): `T` stopped, `t` traced, `R`, `S`, `Z`, ….
 *
 * @param pid The process.
 * @returns The letter, or undefined when there is no such process.
 */
export function processState(pid: number): string | undefined {
  try {
    return statFields(pid)[0];
  } catch {
    return undefined;
  }
}

/**
 * Wait until `pid` is stopped (state `T`): after a detach with a pending SIGSTOP, its threads take it as they
 * leave their ptrace stops, a moment later.
 *
 * @param pid The process.
 * @param timeoutMs How long to wait.
 * @returns Whether it is stopped.
 */
export async function settleStopped(pid: number, timeoutMs = 2000): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const s = processState(pid);
    if (s === "T") return true;
    if (s === undefined || s === "Z" || performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 1));
  }
}
