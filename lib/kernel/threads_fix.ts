/**
 * Make a frozen target's threads follow the image: a thread of the checkpoint that has ended since is created
 * again by an injected `clone3`, with its old thread id (`set_tid`; root), its TLS base, its rseq registration,
 * its signal mask, alternate signal stack and robust list, and its recorded registers. A runtime that ended an idle pool thread (Deno's blocking pool ends one
 * idle for ~10 s) would otherwise be rolled back to memory that counts on that thread waiting for work, and
 * hang when it hands it some.
 *
 * What the kernel keeps per thread is set on the new thread as the image recorded it (lib/kernel/thread_kernel.ts:
 * the signal mask, the alternate signal stack, the robust futex list, its own pending signals sent again); an
 * image from before the threads section's version 2 has none of it, and the new thread then keeps the injecting
 * thread's signal mask, no alternate stack and no robust list. A thread
 * that was inside a system call at the checkpoint restarts it (its registers say so), except a call restarted
 * through `restart_syscall` (a `nanosleep` or a futex wait with a timeout), which returns `EINTR` instead: the
 * kernel's restart record of the old thread is gone; callers of those retry.
 *
 * @module
 */

import { addrOf, PAGE_SIZE, processVmRead, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { CryoError, SystemError } from "../errors.ts";
import type { Frozen } from "./freeze.ts";
import { register, resumable, type ThreadState } from "./threads.ts";
import { inject, type Injector, SYS } from "./inject.ts";
import { applyThreadKernelState } from "./thread_kernel.ts";

/** `sizeof(struct robust_list_head)`: the only length `set_robust_list` accepts. */
const ROBUST_LIST_HEAD_SIZE = 24;
const PR_SET_NAME = 15;
const CLONE = {
  VM: 0x100,
  FS: 0x200,
  FILES: 0x400,
  SIGHAND: 0x800,
  THREAD: 0x10000,
  SYSVSEM: 0x40000,
  SETTLS: 0x80000,
  CHILD_CLEARTID: 0x200000,
} as const;

/**
 * System calls a thread waits in with a timeout when it is idle (futex, poll, epoll, select, sleeps): their
 * callers retry an `EINTR`.
 */
const WAITS = new Set([202, 7, 271, 232, 281, 441, 23, 270, 35, 230]);
/** poll, ppoll, epoll_wait, epoll_pwait, epoll_pwait2, select, pselect6: interrupted, they return EINTR. */
const POLLS = new Set([7, 271, 232, 281, 441, 23, 270]);

/**
 * Why a recorded thread cannot be created again, or `null` when it can. Its registers, rseq registration and
 * per-thread kernel state (signal mask, alternate stack, robust list; lib/kernel/thread_kernel.ts) are what the
 * kernel holds for a thread beyond the shared memory. Created again:
 * - a thread **blocked in a system call** the freeze interrupted: a wait with a timeout (an idle pool thread's
 *   keep-alive; `-ERESTART_RESTARTBLOCK`: it comes back as `EINTR`, which callers of waits retry, since the
 *   kernel's restart record stayed with the old thread), or a call the kernel makes again from the start
 *   (`-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`: a lock's futex wait, a read, a poll), or a poll
 *   or epoll wait the freeze made return `EINTR` (retried by its caller);
 * - a thread **just born** (the child side of `clone`/`clone3`, before it registered rseq: on a new thread,
 *   which has no registration, it registers itself).
 *
 * Refused, with the reason: a thread caught running user code, or stopped just after a system call returned.
 * Nothing known is missing for them, but a stress run (tests/fixtures/target.c `lockloop`: short-lived threads
 * contending for a mutex, rolled back 40 times a run) crashed the target about once in 100 rollbacks when they
 * were created again (a jump to a stack-size value: a stack that did not match its registers; not understood
 * yet), and none in over 1,500 recreations of the two kinds above.
 *
 * @param t The recorded thread.
 * @returns The reason (for a refusal that names the thread), or `null`.
 */
export function whyNotRecreatable(t: ThreadState): string | null {
  if (!t.general.length) return "its registers were not recorded";
  const nr = Number(BigInt.asIntN(64, register(t, "orig_rax")));
  const rax = BigInt.asIntN(64, register(t, "rax"));
  if (nr < 0) {
    return "it was caught running user code (only threads blocked in a system call are created again)";
  }
  if (rax === -516n) {
    return WAITS.has(nr)
      ? null
      : `it was interrupted in system call ${nr}, which the kernel would restart from ` +
        `a record that ended with the thread (-ERESTART_RESTARTBLOCK)`;
  }
  if (rax === -512n || rax === -513n || rax === -514n) return null;
  if ((nr === 435 || nr === 56) && rax === 0n && !t.rseq?.abiPointer) return null; // just born
  if (POLLS.has(nr) && rax === -4n) return null; // a poll the freeze interrupted returns EINTR, retried
  return `it was stopped just after system call ${nr} returned ${rax} (only threads blocked in a system call ` +
    `are created again)`;
}

/**
 * Whether a recorded thread can be created again ({@link whyNotRecreatable} has no reason).
 *
 * @param t The recorded thread.
 * @returns Whether {@link recreateThread} may recreate it.
 */
export function recreatable(t: ThreadState): boolean {
  return whyNotRecreatable(t) === null;
}

/** glibc's `struct pthread` keeps the thread id at this offset from the TCB (x86_64, glibc 2.35-2.40). */
export const PTHREAD_TID_OFFSET = 0x2d0n;

/**
 * Where the kernel should clear thread `t`'s id when it exits (glibc's `pthread.tid`, the TCB (fs_base) plus
 * glibc's offset), read from the target's memory once it holds the image's bytes: used only when the thread id
 * is there (another libc, or none: no clear-tid).
 *
 * @param pid The target (its memory already rolled back).
 * @param t The recorded thread.
 * @returns The address, or `undefined`.
 */
export function clearTidInTarget(pid: number, t: ThreadState): bigint | undefined {
  const at = register(t, "fs_base") + PTHREAD_TID_OFFSET;
  const word = new Int32Array(1);
  try {
    processVmRead(pid, addrOf(Deno.UnsafePointer.of(word)), at, 4n);
  } catch {
    return undefined;
  }
  return word[0] === t.tid ? at : undefined;
}

const NAP = new Int32Array(new SharedArrayBuffer(4));

/** How to recreate one thread. */
export interface RecreateOptions {
  /** Its name (`/proc/PID/task/TID/comm`), set with `prctl(PR_SET_NAME)`. */
  name?: string;
  /**
   * Where the kernel clears the thread id and wakes a joiner when the thread exits (glibc's `pthread.tid`,
   * `CLONE_CHILD_CLEARTID`); omitted when unknown.
   */
  clearTid?: bigint;
}

/**
 * Create a thread of the checkpoint again in the frozen target, stopped, with its recorded registers.
 *
 * @param frozen The frozen target (the new thread is adopted into it).
 * @param inj An injector on a live thread of the target.
 * @param t The thread's recorded state.
 * @param opts Its name and clear-tid address.
 * @returns The new thread's id (the recorded one).
 * @throws {SystemError} When the kernel refuses (`EEXIST`: the thread id is taken; `EPERM`: not root).
 */
export function recreateThread(
  frozen: Frozen,
  inj: Injector,
  t: ThreadState,
  opts: RecreateOptions = {},
): number {
  const tls = register(t, "fs_base");
  const args = new BigUint64Array(12);
  args[0] = BigInt(
    CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD | CLONE.SYSVSEM | CLONE.SETTLS |
      (opts.clearTid ? CLONE.CHILD_CLEARTID : 0),
  );
  args[2] = opts.clearTid ?? 0n; // child_tid
  args[7] = tls;
  const scratch = inj.scratch(PAGE_SIZE);
  args[8] = scratch + 96n; // set_tid: one pid_t
  args[9] = 1n;
  const bytes = new Uint8Array(104);
  bytes.set(new Uint8Array(args.buffer, 0, 88));
  new DataView(bytes.buffer).setInt32(96, t.tid, true);
  inj.write(bytes);
  let tid: number;
  try {
    // A thread that has just exited leaves /proc before the kernel frees its id: EEXIST for a moment (bounded).
    for (let waited = 0;; waited++) {
      const r = inj.raw(SYS.clone3, scratch, 88);
      if (r >= 0n) {
        tid = Number(r);
        break;
      }
      if (r !== -17n /* EEXIST */ || waited >= 50) {
        throw systemError("clone3", -Number(r), `in pid ${frozen.pid} (set_tid ${t.tid})`);
      }
      Atomics.wait(NAP, 0, 0, 2);
    }
  } catch (e) {
    if (e instanceof SystemError) {
      throw new CryoError(
        `Cannot recreate thread ${t.tid} of pid ${frozen.pid}: clone3 with set_tid failed: ${e.message}`,
        { cause: e },
      );
    }
    throw e;
  }
  frozen.adopt(tid);
  try {
    const own = inject(frozen, { tid });
    try {
      if (t.rseq && t.rseq.abiPointer) {
        const r = own.raw(SYS.rseq, t.rseq.abiPointer, t.rseq.abiSize, 0, t.rseq.signature);
        if (r < 0n && r !== -16n /* EBUSY: already */) {
          throw new CryoError(
            `Cannot register rseq ${hex(t.rseq.abiPointer)} for thread ${tid}: errno ${-r}`,
          );
        }
      }
      if (opts.name) {
        const at = own.write(new TextEncoder().encode(opts.name.slice(0, 15) + "\0"));
        own.prctl(PR_SET_NAME, at);
      }
      applyThreadKernelState(own, t); // signal mask, sigaltstack, robust list, pending signals
    } finally {
      own.close();
    }
    frozen.setRegisters(tid, resumable(t)); // its creator's restart record is not its own: a timed wait gets EINTR
  } catch (e) {
    endThread(frozen, tid);
    throw e;
  }
  return tid;
}

/**
 * End a thread of the frozen target with an injected `exit(0)` on it (its stack and TLS stay mapped), and drop
 * it from the frozen set.
 *
 * Its exit must not write into memory a restore put back: first it is told to forget its tid word
 * (`set_tid_address(NULL)`) and its robust futex list (`set_robust_list(NULL)`). glibc gives a new thread the
 * descriptor and stack of one joined before, so a thread born since a checkpoint often has the kernel clear, at
 * its exit, the tid word of a thread the restore created again: the program's `pthread_join` then returned at
 * once, as if that thread had ended (a Rust `JoinHandle` found no result and panicked).
 *
 * @param frozen The frozen target.
 * @param tid The thread.
 */
export function endThread(frozen: Frozen, tid: number): void {
  const inj = inject(frozen, { tid });
  try {
    inj.raw(SYS.set_tid_address, 0);
    inj.raw(SYS.set_robust_list, 0, ROBUST_LIST_HEAD_SIZE);
    inj.raw(SYS.exit, 0);
  } catch (e) {
    if (!(e instanceof SystemError && e.code === "ESRCH")) throw e; // ESRCH: it exited, as asked
  } finally {
    try {
      inj.close();
    } catch { /* it is gone */ }
  }
  frozen.forget(tid);
}
