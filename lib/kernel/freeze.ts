/**
 * Freeze another process: seize and interrupt every thread with ptrace, catching threads born meanwhile, and
 * record each thread's registers and rseq configuration while it stands still; thaw detaches them all.
 *
 * ptrace belongs to the thread that attached, so everything here is synchronous: the freeze loop runs in one
 * helper call on the calling thread, and register reads, writes and the detach must come from that same thread
 * (they throw if they do not). Wait statuses are consumed exactly once, inside the helper.
 *
 * @module
 */

import { CryoError, SystemError, TracedError } from "../errors.ts";
import { readThreadState, type Registers, type ThreadState, writeRegisters } from "./threads.ts";
import { helper } from "../../ffi/helper.ts";
import { errno, errnoDescription, errnoName, libc, systemError, unwrap } from "../../ffi/libc.ts";

const ESRCH = 3;
const EPERM = 1;
const ENOSPC = 28;
const ETIMEDOUT = 110;

/** Options of {@link freeze}. */
export interface FreezeOptions {
  /** How long every thread may take to stop, in milliseconds (default 2000). */
  timeoutMs?: number;
  /** Record registers and rseq of every thread while frozen (default true). */
  registers?: boolean;
  /**
   * Make threads that do not stop at once `SCHED_FIFO` until they stop, then give their scheduling attributes
   * back before they run again, and run the freeze and thaw loops `SCHED_FIFO` too (default true; needs
   * CAP_SYS_NICE, else it changes nothing). Without it, each of hundreds of spinning threads on few cores waits
   * for its turn in the run queue before it can stop, and resumed threads preempt the thaw loop.
   */
  boost?: boolean;
}

const live = new Set<Frozen>();

/** A frozen process: every thread stopped under ptrace by this thread. Disposing it thaws it. */
export class Frozen implements Disposable {
  /** The frozen process. */
  readonly pid: number;
  /** The frozen thread ids, leader first when it is among them. */
  tids: readonly number[];
  /** Each thread's registers and rseq configuration, recorded while frozen (empty with `registers: false`). */
  readonly threads: readonly ThreadState[];
  /** How long the freeze took, in milliseconds (seize to every thread stopped and recorded). */
  readonly freezeMs: number;
  readonly #tracer: number;
  #tids: Int32Array<ArrayBuffer>;
  #sigs: Int32Array<ArrayBuffer>;
  readonly #boost: number;
  readonly #beforeThaw = new Set<() => void>();
  #thawed = false;
  #held = false;

  /** @internal Use {@link freeze}. */
  constructor(
    pid: number,
    tids: Int32Array<ArrayBuffer>,
    sigs: Int32Array<ArrayBuffer>,
    tracer: number,
    threads: ThreadState[],
    freezeMs: number,
    boost: number,
  ) {
    this.pid = pid;
    this.#boost = boost;
    this.#tids = tids;
    this.#sigs = sigs;
    this.#tracer = tracer;
    this.tids = [...tids];
    this.threads = threads;
    this.freezeMs = freezeMs;
    live.add(this);
  }

  /** The thread id that froze the process: ptrace calls on it must come from this thread. */
  get tracer(): number {
    return this.#tracer;
  }

  /**
   * Run `fn` when {@link thaw} starts, before any thread is detached (an injector unmaps its scratch area), on
   * every thaw path, `thawAll()` included. Errors it throws are ignored.
   *
   * @param fn What to run, on the thread that froze.
   * @returns A function that cancels it.
   */
  beforeThaw(fn: () => void): () => void {
    this.#beforeThaw.add(fn);
    return () => this.#beforeThaw.delete(fn);
  }

  /** Whether {@link thaw} has run. */
  get thawed(): boolean {
    return this.#thawed;
  }

  #sameThread(what: string): void {
    const me = libc.gettid();
    if (me !== this.#tracer) {
      throw new CryoError(
        `Cannot ${what} pid ${this.pid} from thread ${me}: thread ${this.#tracer} froze it and ptrace belongs to it`,
      );
    }
  }

  /**
   * Put registers back into one frozen thread (`PTRACE_SETREGSET`, general then FP/vector).
   *
   * @param tid One of {@link tids}.
   * @param regs Registers as recorded in {@link threads} (possibly changed with `setRegister`).
   * @throws {RangeError} When `tid` is not frozen here or the registers have the wrong size.
   * @throws {SystemError} When the kernel refuses them.
   */
  setRegisters(tid: number, regs: Registers): void {
    if (this.#thawed) throw new CryoError(`Cannot set registers of tid ${tid}: pid ${this.pid} is thawed`);
    if (!this.tids.includes(tid)) throw new RangeError(`Cannot set registers of tid ${tid}: not frozen here`);
    this.#sameThread("set registers of");
    writeRegisters(tid, regs);
  }

  /**
   * Take in a thread the process started while frozen (an injected `clone3`): ptrace attached it to this
   * thread (`PTRACE_O_TRACECLONE`); its first stop is consumed here, and it is thawed with the others.
   *
   * @param tid The new thread.
   * @throws {SystemError} When it does not stop as expected.
   */
  adopt(tid: number): void {
    this.#sameThread("adopt a thread of");
    if (this.tids.includes(tid)) return;
    const status = new Int32Array(1);
    const r = libc.waitpid(tid, status, 0x40000000 /* __WALL */);
    if (r !== tid) throw systemError("waitpid", errno(), `the new thread ${tid} of pid ${this.pid}`);
    if ((status[0] & 0xff) !== 0x7f) {
      throw new CryoError(
        `Cannot adopt thread ${tid} of pid ${this.pid}: wait status ${status[0]}, not a stop`,
      );
    }
    this.#tids = Int32Array.from([...this.#tids, tid]);
    this.#sigs = Int32Array.from([...this.#sigs, 0]);
    this.tids = [...this.tids, tid];
  }

  /**
   * Drop a thread that has exited (an injected `exit`) from the frozen set, reaping it.
   *
   * @param tid The thread.
   */
  forget(tid: number): void {
    const i = this.tids.indexOf(tid);
    if (i < 0) return;
    libc.waitpid(tid, new Int32Array(1), 0x40000000 | 1 /* __WALL | WNOHANG */);
    this.#tids = Int32Array.from([...this.#tids].filter((_, k) => k !== i));
    this.#sigs = Int32Array.from([...this.#sigs].filter((_, k) => k !== i));
    this.tids = this.tids.filter((t) => t !== tid);
  }

  /** Whether {@link hold} is in force. */
  get held(): boolean {
    return this.#held;
  }

  /**
   * Back the ptrace freeze with a stop that outlives this process: send the target SIGSTOP while every thread
   * is in a ptrace stop, so that the signal stays pending. If cryo dies (even by SIGKILL), the kernel detaches
   * the threads and the first to run takes the SIGSTOP before any user code: the whole process stays stopped
   * (state `T`) until it is recovered and sent SIGCONT. {@link thaw} takes the SIGSTOP back first (it is never
   * delivered), so a normal thaw leaves no trace. Idempotent.
   *
   * @throws {SystemError} When the signal cannot be sent.
   */
  hold(): void {
    if (this.#thawed) throw new CryoError(`Cannot hold pid ${this.pid}: it is thawed`);
    if (this.#held) return;
    this.#sameThread("hold");
    if (libc.kill(this.pid, 19 /* SIGSTOP */) !== 0) {
      throw systemError("kill", errno(), `SIGSTOP to pid ${this.pid}`);
    }
    this.#held = true;
  }

  /** Take the pending SIGSTOP of {@link hold} back: one thread runs until it stops to take it, suppressed. */
  #release(): void {
    const delivered = new Int32Array(1);
    for (let i = 0; i < this.#tids.length; i++) {
      const r = Number(helper().cryo_hold_release(this.#tids[i], this.#sigs[i], 1_000_000_000n, delivered));
      if (r === 0) {
        this.#sigs[i] = 0; // detached with 0: the SIGSTOP is suppressed (any earlier signal was delivered)
        this.#held = false;
        return;
      }
      if (r !== -ESRCH) {
        throw systemError("ptrace", -r, `taking back the SIGSTOP of pid ${this.pid} (tid ${this.#tids[i]})`);
      }
    }
    // Every thread died: nothing is left to stop.
    this.#held = false;
  }

  /**
   * Detach every thread, handing back any signal that arrived while frozen. Idempotent, and safe to call from
   * a signal listener on the thread that froze. Threads that died meanwhile are reaped. A {@link hold} is
   * taken back first, unless `keepHeld` is set: then the process stays stopped after the detach.
   *
   * @param keepHeld Leave a {@link hold} in force: the process stays stopped (for a later recovery).
   * @returns How many threads were detached alive (0 on a second call).
   * @throws {CryoError} When called from another thread than the one that froze (nothing is changed).
   */
  thaw(keepHeld = false): number {
    if (this.#thawed) return 0;
    this.#sameThread("thaw");
    for (const fn of [...this.#beforeThaw]) {
      try {
        fn();
      } catch { /* best effort: the threads must be detached whatever happens */ }
    }
    this.#beforeThaw.clear();
    let failed: unknown;
    if (this.#held && !keepHeld) {
      try {
        this.#release();
      } catch (e) {
        failed = e; // detach anyway: the process then stays stopped by the SIGSTOP, which is safe
      }
    }
    this.#thawed = true;
    live.delete(this);
    const r = helper().cryo_thaw(
      this.pid,
      this.#tids,
      this.#sigs,
      this.#tids.length,
      1_000_000_000n,
      this.#boost,
    );
    const n = Number(unwrap(r, "thaw", `pid ${this.pid}`));
    if (failed) throw failed;
    return n;
  }

  /** Same as {@link thaw}. */
  [Symbol.dispose](): void {
    this.thaw();
  }
}

/**
 * Thaw every process this thread has frozen and not yet thawed: for an exit path (SIGINT, SIGTERM, an uncaught
 * error) where the `Frozen` objects are out of reach.
 *
 * @returns How many processes were thawed.
 */
export function thawAll(): number {
  let n = 0;
  const me = libc.gettid();
  for (const f of [...live]) {
    try {
      f.thaw();
      n++;
    } catch (e) {
      if (libc.gettid() !== me) throw e;
      // Another thread froze it: leave it to that thread (its exit detaches it anyway).
    }
  }
  return n;
}

function readStatusField(pid: number, tid: number, field: string): string | undefined {
  try {
    const text = Deno.readTextFileSync(tid > 0 ? `/proc/${pid}/task/${tid}/status` : `/proc/${pid}/status`);
    return text.match(new RegExp(`^${field}:\\s*(.*)$`, "m"))?.[1];
  } catch {
    return undefined;
  }
}

/** When ptrace said EPERM because another process traces `pid` (TracerPid), the error naming it. */
function tracedError(pid: number, tid: number): TracedError | undefined {
  const tracer = Number(readStatusField(pid, tid, "TracerPid") ?? readStatusField(pid, 0, "TracerPid") ?? 0);
  if (!tracer) return undefined;
  const tgid = Number(readStatusField(tracer, 0, "Tgid") ?? tracer);
  let command: string[] = [];
  try {
    command = Deno.readTextFileSync(`/proc/${tgid}/cmdline`).split("\0").filter((a, i, all) =>
      a !== "" || i < all.length - 1
    );
  } catch { /* it has exited meanwhile */ }
  return new TracedError(
    pid,
    tgid,
    command,
    errnoName(EPERM),
    EPERM,
    errnoDescription(EPERM),
    tgid === tracer ? undefined : tracer,
  );
}

/** Why ptrace said EPERM when nobody traces the process: not root, or Yama. */
function whyNotPermitted(pid: number): string {
  let yama = -1;
  try {
    yama = Number(Deno.readTextFileSync("/proc/sys/kernel/yama/ptrace_scope").trim());
  } catch { /* no Yama */ }
  const uid = Deno.uid() ?? -1;
  if (yama === 3) return "Yama ptrace_scope is 3: no process may be traced";
  const targetUid = Number(readStatusField(pid, 0, "Uid")?.split(/\s+/)[0] ?? -1);
  if (uid !== 0 && targetUid !== uid) {
    return `not root (uid ${uid}) and the process belongs to uid ${targetUid}`;
  }
  if (uid !== 0 && yama >= 1) {
    return `Yama ptrace_scope is ${yama}: only descendants (or a PR_SET_PTRACER grant) may be traced without root`;
  }
  if (uid !== 0) return `not root (uid ${uid}) and lacking CAP_SYS_PTRACE (or the process is not dumpable)`;
  return "the kernel refused (another user namespace, or the process is exiting)";
}

/**
 * Freeze every thread of `pid`: `PTRACE_SEIZE` (with `PTRACE_O_TRACECLONE`) and `PTRACE_INTERRUPT` each thread
 * of `/proc/<pid>/task`, repeating until a scan finds no new thread; threads that exit meanwhile are dropped.
 * Then record each thread's registers and rseq configuration. Call it on the thread that will thaw.
 *
 * @example Freeze, read the stack pointers, thaw on every path
 * ```ts ignore
 * import { freeze } from "./freeze.ts";
 * import { register } from "./threads.ts";
 *
 * using frozen = freeze(pid);
 * for (const t of frozen.threads) console.log(t.tid, register(t, "rsp"));
 * ```
 *
 * @param pid The process to freeze (not this one: park its threads instead).
 * @param opts Timeout and whether to record registers.
 * @returns The frozen process; dispose or `thaw()` it.
 * @throws {RangeError} When `pid` is not a positive integer or is this process.
 * @throws {SystemError} ESRCH when there is no such process or it exited during the freeze; EPERM saying why
 *   (already traced by another pid, not root, Yama); ETIMEDOUT when a thread would not stop. Nothing is left
 *   attached.
 */
export function freeze(pid: number, opts: FreezeOptions = {}): Frozen {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new RangeError(`Cannot freeze pid ${pid}: not a pid`);
  if (pid === Deno.pid) {
    throw new RangeError(`Cannot freeze pid ${pid}: it is this process; park its threads`);
  }
  const timeoutMs = opts.timeoutMs ?? 2000;
  if (!(timeoutMs > 0)) {
    throw new RangeError(`Cannot freeze pid ${pid}: timeout ${timeoutMs} ms is not positive`);
  }
  const h = helper();
  const started = performance.now();
  let max = 256;
  try {
    max = Math.max(256, 2 * Deno.readDirSync(`/proc/${pid}/task`).toArray().length + 64);
  } catch { /* the helper reports ESRCH */ }
  for (;;) {
    const tids = new Int32Array(max);
    const sigs = new Int32Array(max);
    const info = new Int32Array(4);
    const boost = opts.boost ?? true ? 1 : 0;
    const r = Number(h.cryo_freeze(pid, tids, sigs, max, BigInt(Math.round(timeoutMs * 1e6)), info, boost));
    if (r === -ENOSPC && info[2] > max) {
      max = info[2] * 2;
      continue;
    }
    if (r < 0) throw freezeError(pid, -r, info, timeoutMs);
    const tracer = libc.gettid();
    const frozenTids = tids.slice(0, r);
    const frozenSigs = sigs.slice(0, r);
    const leader = frozenTids.indexOf(pid);
    if (leader > 0) {
      frozenTids.copyWithin(1, 0, leader);
      frozenTids[0] = pid;
      const s = frozenSigs[leader];
      frozenSigs.copyWithin(1, 0, leader);
      frozenSigs[0] = s;
    }
    const threads: ThreadState[] = [];
    if (opts.registers ?? true) {
      try {
        for (const tid of frozenTids) threads.push(readThreadState(tid));
      } catch (e) {
        h.cryo_thaw(pid, frozenTids, frozenSigs, frozenTids.length, 1_000_000_000n, boost);
        const gone = (readStatusField(pid, 0, "State") ?? "Z").startsWith("Z");
        if (e instanceof SystemError && e.code === "ESRCH" && gone) throw exitedError(pid);
        throw e;
      }
    }
    return new Frozen(pid, frozenTids, frozenSigs, tracer, threads, performance.now() - started, boost);
  }
}

function exitedError(pid: number): SystemError {
  return systemError("freeze", ESRCH, `pid ${pid}: the process exited during the freeze`);
}

function freezeError(pid: number, e: number, info: Int32Array, timeoutMs: number): SystemError {
  if (e === ESRCH && info[0] === 2) {
    return systemError("freeze", ESRCH, `pid ${pid}: the process has exited (zombie)`);
  }
  if (e === ESRCH) return info[0] ? exitedError(pid) : systemError("freeze", ESRCH, `pid ${pid}`);
  if (e === EPERM) {
    return tracedError(pid, info[1]) ?? systemError("freeze", EPERM, `pid ${pid} (${whyNotPermitted(pid)})`);
  }
  if (e === ETIMEDOUT) {
    return systemError("freeze", ETIMEDOUT, `pid ${pid}: a thread did not stop within ${timeoutMs} ms`);
  }
  return systemError("freeze", e, `pid ${pid}${info[1] ? ` (tid ${info[1]})` : ""}`);
}
