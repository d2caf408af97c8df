/**
 * What the kernel keeps per thread beyond its registers and rseq: the signal mask, the thread's own pending
 * signals, its alternate signal stack (`sigaltstack`) and its robust futex list. A checkpoint records them for
 * every thread while the process is frozen (the "threads" section, version 2); a restore sets them on a thread
 * it creates again (lib/kernel/threads_fix.ts), each by a system call injected into that thread.
 *
 * How each is read, from the thread that froze the process:
 * - the signal mask: `PTRACE_GETSIGMASK`;
 * - pending signals: `SigPnd` of `/proc/PID/task/TID/status` (the thread's own queue, not the process's);
 * - the robust list: `get_robust_list(tid)`, a system call of ours that reads another thread's;
 * - the alternate signal stack: an injected `sigaltstack(NULL, old)` on the thread (the kernel reports it
 *   nowhere else), `old` a few bytes below the thread's red zone, whose bytes are put back afterwards; only for
 *   threads blocked in a system call (the only ones a restore creates again, apart from threads just born,
 *   which have none yet). Each costs a single step of the thread while the process is stopped.
 *
 * @module
 */

import { addrOf, libc, processVmRead, processVmWrite } from "../../ffi/libc.ts";
import type { Frozen } from "./freeze.ts";
import { findSyscallInstruction, Injector, SYS } from "./inject.ts";
import { rawSyscall } from "./syscall.ts";
import { type AltStack, register, type ThreadKernelState, type ThreadState } from "./threads.ts";

const PTRACE_GETSIGMASK = 0x420a;
const SIG_SETMASK = 2;
const SS_DISABLE = 2;
/** SIGKILL and SIGSTOP cannot be blocked; glibc's SIGCANCEL (32) and SIGSETXID (33) are left as they are. */
const UNBLOCKABLE = (1n << 8n) | (1n << 18n);
/** SIGKILL, SIGCONT and SIGSTOP pending on a thread are not sent again (they act on the whole process). */
const NOT_REQUEUED = new Set([9, 18, 19]);

/**
 * Read one frozen thread's signal mask (`PTRACE_GETSIGMASK`).
 *
 * @param tid A thread this thread has seized and that is stopped.
 * @returns The mask, or `null` when the kernel refuses.
 */
export function readSigmask(tid: number): bigint | null {
  const out = new BigUint64Array(1);
  const r = libc.ptrace(PTRACE_GETSIGMASK, tid, Deno.UnsafePointer.create(8n), Deno.UnsafePointer.of(out));
  return r === -1n ? null : out[0];
}

/**
 * One thread's own pending signals, from `SigPnd` of its status file.
 *
 * @param pid The process.
 * @param tid The thread.
 * @returns The set (0n when the file cannot be read).
 */
export function readPending(pid: number, tid: number): bigint {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`);
    const hexSet = /^SigPnd:\s+([0-9a-f]+)/m.exec(text)?.[1];
    return hexSet ? BigInt(`0x${hexSet}`) : 0n;
  } catch {
    return 0n;
  }
}

/**
 * Another thread's robust list (`get_robust_list`).
 *
 * @param tid The thread.
 * @returns Head and length, or `null` when the kernel refuses.
 */
export function readRobustList(tid: number): { head: bigint; length: bigint } | null {
  const head = new BigUint64Array(1), length = new BigUint64Array(1);
  const r = rawSyscall(
    SYS.get_robust_list,
    BigInt(tid),
    addrOf(Deno.UnsafePointer.of(head)),
    addrOf(Deno.UnsafePointer.of(length)),
  );
  return r < 0n ? null : { head: head[0], length: length[0] };
}

/** `stack_t` from 24 bytes. */
function altStackFrom(b: Uint8Array): AltStack {
  const v = new DataView(b.buffer, b.byteOffset, 24);
  return { sp: v.getBigUint64(0, true), flags: v.getInt32(8, true) >>> 0, size: v.getBigUint64(16, true) };
}

/** 24 bytes of `stack_t`. */
function altStackBytes(s: AltStack): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, s.sp, true);
  v.setInt32(8, s.flags | 0, true);
  v.setBigUint64(16, s.size, true);
  return b;
}

/**
 * Record the per-thread kernel state of every frozen thread whose registers were recorded. Best effort per
 * field: what the kernel refuses for one thread is recorded as unknown (`altstack: null`) or empty.
 *
 * @param frozen The frozen process (frozen by this thread, with registers).
 * @param altStacks Whether to read alternate stacks, by an injected `sigaltstack` on each thread blocked in a
 *   system call (default false: `altstack` is null, unknown).
 * @returns The state of each thread, by tid.
 */
export function readThreadKernelStates(frozen: Frozen, altStacks = false): Map<number, ThreadKernelState> {
  const states = new Map<number, ThreadKernelState>();
  let syscallAt = 0n;
  try {
    if (altStacks) syscallAt = findSyscallInstruction(frozen.pid);
  } catch { /* no vDSO: the alternate stacks stay unknown */ }
  const saved = new Uint8Array(24), got = new Uint8Array(24);
  for (const t of frozen.threads) {
    if (!t.general.length) continue;
    const robust = readRobustList(t.tid);
    let altstack: AltStack | null = null;
    // Only a thread blocked in a system call can be created again (lib/kernel/threads_fix.ts): the others'
    // alternate stacks would never be used, and each read costs a step of the thread.
    const rax = BigInt.asIntN(64, register(t, "rax"));
    const blocked = register(t, "orig_rax") < 0x8000000000000000n &&
      ((rax <= -512n && rax >= -516n) || rax === -4n /* a poll the freeze made return EINTR */);
    if (syscallAt && blocked) {
      // Below the red zone, where a signal frame would go: its bytes are put back after.
      const at = (register(t, "rsp") - 128n - 64n) & ~15n;
      try {
        processVmRead(frozen.pid, addrOf(Deno.UnsafePointer.of(saved)), at, 24n);
        const inj = new Injector(frozen, t.tid, syscallAt, 2_000);
        try {
          if (inj.raw(SYS.sigaltstack, 0, at) === 0n) {
            processVmRead(frozen.pid, addrOf(Deno.UnsafePointer.of(got)), at, 24n);
            altstack = altStackFrom(got);
          }
        } finally {
          inj.close();
          processVmWrite(frozen.pid, addrOf(Deno.UnsafePointer.of(saved)), at, 24n);
        }
      } catch { /* its stack is not where rsp says (or the injection failed): unknown */ }
    }
    states.set(t.tid, {
      sigmask: readSigmask(t.tid) ?? 0n,
      pending: readPending(frozen.pid, t.tid),
      altstack,
      robustHead: robust?.head ?? 0n,
      robustLength: robust?.length ?? 0n,
    });
  }
  return states;
}

/**
 * Set a recorded thread's per-thread kernel state on the thread an injector runs in (a thread just created
 * again): its signal mask (`rt_sigprocmask`), its alternate signal stack (`sigaltstack`), its robust list
 * (`set_robust_list`), each injected into that thread; then its own pending signals are sent to it again
 * (`tgkill`; their `siginfo` is a `tgkill`'s), where they stay pending while blocked.
 *
 * @param inj An injector on the thread (its scratch area carries the arguments).
 * @param t The recorded thread (its `kernel` state; nothing is done without one).
 * @returns What was set, one word each (for a dry run's or a test's eyes).
 * @throws {SystemError} When the kernel refuses one of them in the thread.
 */
export function applyThreadKernelState(inj: Injector, t: ThreadState): string[] {
  const k = t.kernel;
  if (!k) return [];
  const done: string[] = [];
  const mask = new Uint8Array(new BigUint64Array([k.sigmask & ~UNBLOCKABLE]).buffer);
  inj.syscall(SYS.rt_sigprocmask, SIG_SETMASK, inj.write(mask), 0, 8);
  done.push("sigmask");
  if (k.altstack && !(k.altstack.flags & SS_DISABLE)) {
    // SS_ONSTACK (1) is a report, not a request: the thread was on its stack; it is set up all the same.
    const flags = k.altstack.flags & ~1;
    inj.syscall(SYS.sigaltstack, inj.write(altStackBytes({ ...k.altstack, flags })), 0);
    done.push("sigaltstack");
  }
  if (k.robustHead) {
    inj.syscall(SYS.set_robust_list, k.robustHead, k.robustLength);
    done.push("robust list");
  }
  for (let sig = 1; sig <= 64; sig++) {
    if (!(k.pending & (1n << BigInt(sig - 1))) || NOT_REQUEUED.has(sig)) continue;
    if (rawSyscall(SYS.tgkill, BigInt(inj.pid), BigInt(inj.tid), BigInt(sig)) === 0n) {
      done.push(`signal ${sig}`);
    }
  }
  return done;
}
