/**
 * Thread stacks: which region each thread of a process runs its stack in. Only the main thread's stack is
 * named `[stack]` in maps; every other thread's stack (a Worker's, a pool thread's) is an anonymous mapping.
 * A thread's stack pointer is read from `/proc/<pid>/task/<tid>/syscall`, which the kernel fills for a thread
 * that is blocked (in a system call, or stopped by ptrace); a thread running on a CPU right now has none.
 *
 * @module
 */

import type { Region } from "./region.ts";
import { procPath, readProcText } from "./procfs.ts";
import { SystemError } from "../errors.ts";
import { systemError } from "../../ffi/libc.ts";

/** A thread and the stack region its stack pointer is in. */
export interface ThreadStack {
  /** The thread id. */
  tid: number;
  /** The thread's name (`/proc/<pid>/task/<tid>/comm`), e.g. `worker-1`. */
  name: string;
  /** Its stack pointer when it last blocked. */
  sp: bigint;
  /** The region holding `sp`. */
  region: Region;
}

function gone(e: unknown): boolean {
  return e instanceof SystemError && (e.code === "ENOENT" || e.code === "ESRCH");
}

/** The stack pointer in a `syscall` file's text, if the thread is blocked. */
function stackPointer(text: string): bigint | undefined {
  const f = text.trim().split(" ");
  // "NR a1 a2 a3 a4 a5 a6 SP PC" in a system call, "-1 SP PC" blocked outside one, "running" on a CPU.
  if (f.length === 9) return BigInt(f[7]);
  if (f.length === 3 && f[0] === "-1") return BigInt(f[1]);
  return undefined;
}

/** Binary search for the region holding `addr`. */
function regionAt(regions: readonly Region[], addr: bigint): Region | undefined {
  let lo = 0;
  let hi = regions.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = regions[mid];
    if (addr < r.start) hi = mid - 1;
    else if (addr >= r.end) lo = mid + 1;
    else return r;
  }
  return undefined;
}

/**
 * The stacks of the blocked threads of `pid`. Threads running on a CPU, and threads that exit meanwhile, are
 * left out; freeze the process first to see every thread.
 *
 * @param pid A pid, or `"self"`.
 * @param regions The process's regions, sorted by start (from `readRegions`).
 * @returns One entry per blocked thread, by tid.
 * @throws {SystemError} When the task list or a thread's `syscall` file cannot be read (EACCES: not allowed).
 */
export function threadStacks(pid: number | "self", regions: readonly Region[]): ThreadStack[] {
  const dir = procPath(pid, "task");
  let tids: number[];
  try {
    tids = [...Deno.readDirSync(dir)].map((e) => Number(e.name)).filter(Number.isInteger).sort((a, b) =>
      a - b
    );
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw systemError("open", 2, /* ENOENT */ dir);
    if (e instanceof Deno.errors.PermissionDenied) throw systemError("open", 13, /* EACCES */ dir);
    throw e;
  }
  const stacks: ThreadStack[] = [];
  for (const tid of tids) {
    let text: string;
    let name: string;
    try {
      text = readProcText(`${dir}/${tid}/syscall`);
      name = readProcText(`${dir}/${tid}/comm`).trimEnd();
    } catch (e) {
      if (gone(e)) continue; // the thread exited
      throw e;
    }
    const sp = stackPointer(text);
    if (sp === undefined) continue;
    const region = regionAt(regions, sp);
    if (region) stacks.push({ tid, name, sp, region });
  }
  return stacks;
}

/**
 * Mark the regions that hold a thread's stack as kind `"stack"`.
 *
 * @param regions Regions sorted by start.
 * @param stacks The thread stacks found in them.
 * @returns New region objects; unchanged regions are the same objects.
 */
export function markStacks<R extends Region>(regions: readonly R[], stacks: readonly ThreadStack[]): R[] {
  const starts = new Set(stacks.map((s) => s.region.start));
  return regions.map((r) => (starts.has(r.start) && r.kind === "anonymous" ? { ...r, kind: "stack" } : r));
}

/**
 * {@link markStacks} from the threads' stack pointers as a freeze read them (their registers), with no read of
 * `/proc/<pid>/task` (two files per thread, in a live checkpoint's stop).
 *
 * @param regions The regions, sorted by address.
 * @param sps Each thread's stack pointer.
 * @returns The regions, those holding a stack pointer with kind `stack` when anonymous.
 */
export function markStacksAt<R extends Region>(regions: readonly R[], sps: readonly bigint[]): R[] {
  const starts = new Set<bigint>();
  for (const sp of sps) {
    const r = regionAt(regions, sp);
    if (r) starts.add(r.start);
  }
  return regions.map((r) => (starts.has(r.start) && r.kind === "anonymous" ? { ...r, kind: "stack" } : r));
}
