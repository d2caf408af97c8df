/**
 * The rseq configuration of this process's own threads. A thread cannot ptrace its own process, so, as in-JVM
 * persistence did it, the helper forks a child (a raw `clone`, no atfork handlers), grants it ptrace over us
 * with `prctl(PR_SET_PTRACER, child)` (so it also works where Yama restricts ptrace to descendants), and the
 * child seizes, interrupts, reads (`PTRACE_GET_RSEQ_CONFIGURATION`) and detaches each thread in turn, using raw
 * system calls only, and reports through a pipe. Each thread stands still only for its own read.
 *
 * @module
 */

import { type RseqConfig, rseqFromBytes } from "./threads.ts";
import { helper } from "../../ffi/helper.ts";
import { systemError, unwrap } from "../../ffi/libc.ts";

export type { RseqConfig } from "./threads.ts";

/** One thread of this process and its rseq configuration. */
export interface SelfRseq {
  /** The thread id. */
  tid: number;
  /** Its configuration; `abiSize` 0 when the thread has no rseq registered. */
  rseq: RseqConfig;
}

const ESRCH = 3;

/**
 * Read the rseq configuration of this process's threads through a forked ptracing child.
 *
 * @param tids The threads to read (default: every thread in `/proc/self/task`). Threads that exit meanwhile
 *   are left out of the result.
 * @param timeoutMs How long the child may take, in milliseconds (default 2000); it is killed after that.
 * @returns One entry per thread read, in the order given.
 * @throws {SystemError} When the child cannot be started, times out, or a ptrace call fails (EPERM: the kernel
 *   or an LSM refused even with PR_SET_PTRACER).
 */
export function readSelfRseq(tids?: readonly number[], timeoutMs = 2000): SelfRseq[] {
  const list = tids ?? Deno.readDirSync("/proc/self/task").map((e) => Number(e.name)).toArray();
  for (const tid of list) {
    if (!Number.isSafeInteger(tid) || tid <= 0) {
      throw new RangeError(`Cannot read rseq of tid ${tid}: not a tid`);
    }
  }
  if (list.length === 0) return [];
  const out = new Uint8Array(24 * list.length);
  const r = helper().cryo_rseq_self(
    new Int32Array(list),
    list.length,
    out,
    BigInt(Math.round(timeoutMs * 1e6)),
  );
  unwrap(r, "read rseq", `of ${list.length} thread(s) of pid ${Deno.pid} through a ptracing child`);
  const view = new DataView(out.buffer);
  const result: SelfRseq[] = [];
  list.forEach((tid, i) => {
    const status = view.getInt32(i * 24 + 20, true);
    if (status === -ESRCH) return; // exited meanwhile
    if (status < 0) throw systemError("read rseq", -status, `of tid ${tid} of pid ${Deno.pid}`);
    result.push({ tid, rseq: rseqFromBytes(out.subarray(i * 24, i * 24 + 24)) });
  });
  return result;
}

/**
 * The calling thread's rseq area as glibc registered it (thread pointer + `__rseq_offset`).
 *
 * @returns Its address, or 0n when glibc registered none.
 */
export function rseqAreaOfThisThread(): bigint {
  return BigInt(helper().cryo_rseq_area());
}
