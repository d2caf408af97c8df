/**
 * Run system calls inside a frozen process, as CRIU's compel and memcr's parasite do: one stopped thread's
 * registers are saved (general and XSAVE), RIP is pointed at a `syscall` instruction found in the target's
 * vDSO, the arguments go into rax/rdi/rsi/rdx/r10/r8/r9 with orig_rax = -1, the thread is single-stepped over
 * that one instruction, rax is read, and every register is put back (so a thread stopped inside an
 * interrupted system call restarts it exactly as it would have). The sequence is one helper call
 * (`ffi/helper/inject.c`), synchronous on the thread that froze the process.
 *
 * An {@link Injector} also owns a small scratch mapping in the target for arguments that need memory (a path
 * for `openat`), mapped by an injected `mmap` when first needed and unmapped by `close()`.
 *
 * @module
 */

import { CryoError, SystemError } from "../errors.ts";
import type { Frozen } from "./freeze.ts";
import { helper } from "../../ffi/helper.ts";
import { addrOf, libc, PAGE_SIZE, processVmRead, processVmWrite, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { MAP, PROT } from "../../ffi/constants.ts";

/** x86_64 system call numbers used by the typed wrappers. */
export const SYS = {
  read: 0,
  write: 1,
  close: 3,
  lseek: 8,
  fcntl: 72,
  dup3: 292,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  mremap: 25,
  madvise: 28,
  getpid: 39,
  gettid: 186,
  prctl: 157,
  openat: 257,
  memfd_create: 319,
  userfaultfd: 323,
  rseq: 334,
  exit: 60,
  set_tid_address: 218,
  set_robust_list: 273,
  get_robust_list: 274,
  sigaltstack: 131,
  rt_sigprocmask: 14,
  tgkill: 234,
  clone3: 435,
} as const;

/** `AT_FDCWD`: `openat` relative to the current directory. */
export const AT_FDCWD: number = -100;

/** Options of {@link inject}. */
export interface InjectOptions {
  /** The frozen thread that runs the calls (default the leader, or the first frozen thread). */
  tid?: number;
  /** How long one injected call may take before it is interrupted and abandoned (default 10000 ms). */
  timeoutMs?: number;
  /**
   * Where to map the scratch area (`MAP_FIXED_NOREPLACE`; the kernel's choice when that fails or it is 0n): a
   * caller about to map regions at fixed addresses keeps the scratch area out of their way.
   */
  scratchAt?: bigint;
}

/**
 * Find a `syscall` instruction (bytes `0f 05`) in the vDSO of `pid`. Any such byte pair will do: the CPU
 * decodes from where RIP points, whatever instruction the bytes belonged to, and the single step stops right
 * after it.
 *
 * @param pid The process.
 * @returns The instruction's address.
 * @throws {CryoError} When the process has no vDSO or it holds no such bytes.
 */
export function findSyscallInstruction(pid: number): bigint {
  const maps = Deno.readTextFileSync(`/proc/${pid}/maps`);
  const line = maps.split("\n").find((l) => l.endsWith("[vdso]"));
  if (!line) {
    throw new CryoError(`Cannot inject into pid ${pid}: it has no [vdso] mapping to find a syscall in`);
  }
  const [start, end] = line.split(" ")[0].split("-").map((h) => BigInt(`0x${h}`));
  const bytes = new Uint8Array(Number(end - start));
  processVmRead(pid, addrOf(Deno.UnsafePointer.of(bytes)), start, BigInt(bytes.length));
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 0x0f && bytes[i + 1] === 0x05) return start + BigInt(i);
  }
  throw new CryoError(`Cannot inject into pid ${pid}: its vDSO holds no syscall instruction`);
}

const SYSCALL_NAMES = new Map<number, string>(Object.entries(SYS).map(([k, v]) => [v, k]));

/**
 * Runs system calls inside one thread of a frozen process. Obtain it with {@link inject}; `close()` (or
 * leaving a `using` scope) unmaps the scratch area. Every method is synchronous and must be called on the
 * thread that froze the process.
 */
export class Injector implements Disposable {
  /** The frozen process. */
  readonly pid: number;
  /** The thread whose registers carry the calls. */
  readonly tid: number;
  /** The `syscall` instruction the calls run at (in the vDSO). */
  readonly syscallAddress: bigint;
  readonly #frozen: Frozen;
  readonly #timeoutNs: bigint;
  readonly #args = new BigInt64Array(6);
  readonly #out = new BigInt64Array(4);
  readonly #rseqField: bigint;
  readonly #rseqCs: bigint;
  readonly #cancelHook: () => void;
  #scratch = 0n;
  #scratchSize = 0;
  #scratchAt = 0n;
  #closed = false;
  #calls = 0;
  #requeued = 0;

  /** @internal Use {@link inject}. */
  constructor(frozen: Frozen, tid: number, syscallAddress: bigint, timeoutMs: number, scratchAt = 0n) {
    this.#frozen = frozen;
    this.#scratchAt = scratchAt;
    this.pid = frozen.pid;
    this.tid = tid;
    this.syscallAddress = syscallAddress;
    this.#timeoutNs = BigInt(Math.round(timeoutMs * 1e6));
    // A thread stopped inside an rseq critical section must still abort it when it resumes; running our call
    // at another RIP may make the kernel clear rseq->rseq_cs, so remember it and put it back.
    const rseq = frozen.threads.find((t) => t.tid === tid)?.rseq;
    this.#rseqField = rseq && rseq.abiPointer ? rseq.abiPointer + 8n : 0n;
    this.#rseqCs = this.#rseqField ? this.#readWord(this.#rseqField) : 0n;
    // A thaw (thawAll() from a signal listener included) unmaps the scratch area first.
    this.#cancelHook = frozen.beforeThaw(() => this.dispose());
  }

  /** How many calls ran. */
  get calls(): number {
    return this.#calls;
  }

  /**
   * How many signals arrived for the thread while calls ran: each was held, and queued again to the thread
   * (`tgkill`) once its registers were back, so it is delivered after the thaw (its `siginfo` becomes a
   * `tgkill`'s).
   */
  get signalsRequeued(): number {
    return this.#requeued;
  }

  #readWord(addr: bigint): bigint {
    const w = new BigUint64Array(1);
    try {
      processVmRead(this.pid, addrOf(Deno.UnsafePointer.of(w)), addr, 8n);
    } catch {
      return 0n;
    }
    return w[0];
  }

  #check(what: string): void {
    if (this.#frozen.thawed) throw new CryoError(`Cannot ${what} in pid ${this.pid}: it is thawed`);
    if (this.#closed) throw new CryoError(`Cannot ${what} in pid ${this.pid}: the injector is closed`);
    const me = libc.gettid();
    if (me !== this.#frozen.tracer) {
      throw new CryoError(
        `Cannot ${what} in pid ${this.pid} from thread ${me}: thread ${this.#frozen.tracer} froze it and ` +
          `ptrace belongs to it`,
      );
    }
  }

  /**
   * Run system call `nr` in the target and return its raw result: `-errno` on its failure.
   *
   * @param nr The x86_64 system call number (see {@link SYS}).
   * @param args Up to six arguments.
   * @returns The raw result (negative errno when the call failed in the target).
   * @throws {SystemError} When the injection itself failed: ESRCH (the thread exited), ETIMEDOUT (the call did
   *   not return in time; it was interrupted and its registers put back).
   */
  raw(nr: number, ...args: (bigint | number)[]): bigint {
    const name = SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
    this.#check(`inject ${name}`);
    if (args.length > 6) throw new RangeError(`Cannot inject ${name}: ${args.length} arguments (at most 6)`);
    const a = this.#args;
    for (let i = 0; i < 6; i++) a[i] = i < args.length ? BigInt.asIntN(64, BigInt(args[i])) : 0n;
    const r = helper().cryo_inject_syscall(
      this.pid,
      this.tid,
      this.syscallAddress,
      a,
      BigInt(nr),
      this.#timeoutNs,
      this.#out,
    );
    this.#calls++;
    this.#requeued += Number(this.#out[1]);
    if (r >= 0n && this.#rseqCs && this.#readWord(this.#rseqField) !== this.#rseqCs) {
      const w = new BigUint64Array([this.#rseqCs]);
      processVmWrite(this.pid, addrOf(Deno.UnsafePointer.of(w)), this.#rseqField, 8n);
    }
    if (r < 0n) {
      const e = -Number(r);
      const why = e === 3 ? " (the thread exited)" : e === 110 ? " (it did not return; abandoned)" : "";
      throw systemError("inject", e, `${name} into pid ${this.pid} tid ${this.tid}${why}`);
    }
    return this.#out[0];
  }

  /**
   * Run system call `nr` in the target; throw when it fails there.
   *
   * @param nr The x86_64 system call number (see {@link SYS}).
   * @param args Up to six arguments.
   * @returns The result, non-negative.
   * @throws {SystemError} The call's errno (e.g. `Cannot mmap in pid 42 …: EEXIST (File exists)`), or the
   *   injection's (see {@link raw}).
   */
  syscall(nr: number, ...args: (bigint | number)[]): bigint {
    const r = this.raw(nr, ...args);
    if (r < 0n && r >= -4095n) {
      const name = SYSCALL_NAMES.get(nr) ?? `syscall ${nr}`;
      const shown = args.map((x) => (typeof x === "bigint" && x > 0xffffn ? hex(x) : String(x))).join(", ");
      throw systemError(name, -Number(r), `in pid ${this.pid} (${shown})`);
    }
    return r;
  }

  /**
   * `mmap` in the target.
   *
   * @param addr Where (0n: let the kernel choose; with `MAP.FIXED`/`MAP.FIXED_NOREPLACE`, exactly there).
   * @param length Bytes.
   * @param prot `PROT` bits.
   * @param flags `MAP` flags.
   * @param fd A descriptor in the target (see {@link openat}), or -1.
   * @param offset File offset, page aligned.
   * @returns The mapping's address.
   */
  mmap(addr: bigint, length: bigint, prot: number, flags: number, fd = -1, offset = 0n): bigint {
    return BigInt.asUintN(64, this.syscall(SYS.mmap, addr, length, prot, flags, fd, offset));
  }

  /**
   * `munmap` in the target.
   *
   * @param addr Start, page aligned.
   * @param length Bytes.
   */
  munmap(addr: bigint, length: bigint): void {
    this.syscall(SYS.munmap, addr, length);
  }

  /**
   * `mprotect` in the target.
   *
   * @param addr Start, page aligned.
   * @param length Bytes.
   * @param prot `PROT` bits.
   */
  mprotect(addr: bigint, length: bigint, prot: number): void {
    this.syscall(SYS.mprotect, addr, length, prot);
  }

  /**
   * `madvise` in the target (e.g. `MADV.DONTNEED` to release memory, which `process_madvise` refuses).
   *
   * @param addr Start, page aligned.
   * @param length Bytes.
   * @param advice `MADV` value.
   */
  madvise(addr: bigint, length: bigint, advice: number): void {
    this.syscall(SYS.madvise, addr, length, advice);
  }

  /**
   * `brk` in the target: the raw system call, which never fails but returns the current break.
   *
   * @param addr The new break, or 0n to ask for the current one.
   * @returns The break after the call.
   */
  brk(addr: bigint): bigint {
    return this.syscall(SYS.brk, addr);
  }

  /**
   * `close` in the target (named so as not to clash with {@link close}, which ends the injector).
   *
   * @param fd A descriptor of the target.
   */
  closeFd(fd: number): void {
    this.syscall(SYS.close, fd);
  }

  /** Unmap the scratch area; idempotent. Same as `[Symbol.dispose]()`. */
  close(): void {
    this.dispose();
  }

  /**
   * `prctl` in the target.
   *
   * @param option The `PR_*` option.
   * @param args Up to four more arguments.
   * @returns The result.
   */
  prctl(option: number, ...args: (bigint | number)[]): bigint {
    return this.syscall(SYS.prctl, option, ...args);
  }

  /**
   * `openat` in the target, with the path written into the scratch area.
   *
   * @param path The path, as the target sees it.
   * @param flags `O` flags (add `O.CLOEXEC`).
   * @param mode Mode for `O.CREAT`.
   * @param dirfd Directory descriptor in the target (default {@link AT_FDCWD}).
   * @returns The target's new descriptor.
   */
  openat(path: string, flags: number, mode = 0, dirfd = AT_FDCWD): number {
    const at = this.write(new TextEncoder().encode(path + "\0"));
    return Number(this.syscall(SYS.openat, dirfd, at, flags, mode));
  }

  /**
   * Map a file in the target: an injected `openat`, `mmap` and `close` (the descriptor is closed on every
   * path).
   *
   * @param path The file, as the target sees it.
   * @param addr Where (with `MAP.FIXED` or `MAP.FIXED_NOREPLACE` in `flags`), or 0n.
   * @param length Bytes.
   * @param prot `PROT` bits; the file is opened read-write when `PROT.WRITE` is asked with `MAP.SHARED`.
   * @param flags `MAP` flags (`MAP.PRIVATE` or `MAP.SHARED`, plus placement).
   * @param offset File offset, page aligned.
   * @returns The mapping's address.
   */
  mapFile(path: string, addr: bigint, length: bigint, prot: number, flags: number, offset = 0n): bigint {
    const rw = (prot & PROT.WRITE) !== 0 && (flags & MAP.SHARED) !== 0;
    const fd = this.openat(path, (rw ? 2 : 0) | 0o2000000 /* O_CLOEXEC */);
    try {
      return this.mmap(addr, length, prot, flags, fd, offset);
    } finally {
      this.syscall(SYS.close, fd);
    }
  }

  /**
   * The scratch area's address, mapped (read-write, private, anonymous) by an injected `mmap` on first use and
   * grown as needed. It is unmapped by {@link close}.
   *
   * @param bytes How many bytes are needed.
   * @returns Its address in the target.
   */
  scratch(bytes = PAGE_SIZE): bigint {
    if (bytes <= this.#scratchSize) return this.#scratch;
    const size = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    const rw = PROT.READ | PROT.WRITE, anon = MAP.PRIVATE | MAP.ANONYMOUS;
    let at = this.#scratchAt
      ? BigInt.asUintN(64, this.raw(SYS.mmap, this.#scratchAt, size, rw, anon | MAP.FIXED_NOREPLACE, -1, 0))
      : 0n;
    if (at !== this.#scratchAt || at === 0n) {
      if (at < 0xfffffffffffff001n && at !== 0n) this.munmap(at, BigInt(size)); // an old kernel's hint
      at = this.mmap(0n, BigInt(size), rw, anon);
    }
    if (this.#scratch) {
      try {
        this.munmap(this.#scratch, BigInt(this.#scratchSize));
      } catch (e) {
        this.munmap(at, BigInt(size));
        throw e;
      }
    }
    this.#scratch = at;
    this.#scratchSize = size;
    return at;
  }

  /** The scratch area's extent, or `undefined` while none is mapped. */
  get scratchRange(): { start: bigint; length: number } | undefined {
    return this.#scratch ? { start: this.#scratch, length: this.#scratchSize } : undefined;
  }

  /**
   * Write bytes at the start of the scratch area (with `process_vm_writev`).
   *
   * @param data What to write.
   * @returns Its address in the target.
   */
  write(data: Uint8Array): bigint {
    const at = this.scratch(Math.max(1, data.length));
    processVmWrite(
      this.pid,
      addrOf(Deno.UnsafePointer.of(data as Uint8Array<ArrayBuffer>)),
      at,
      BigInt(data.length),
    );
    return at;
  }

  /**
   * Unmap the scratch area (if the target is still frozen and alive). Idempotent; never throws for a target
   * that exited. A thaw of the process runs it first, so an injector left open leaves nothing behind.
   */
  dispose(): void {
    if (this.#closed) return;
    this.#cancelHook();
    const scratch = this.#scratch;
    this.#scratch = 0n;
    const size = this.#scratchSize;
    this.#scratchSize = 0;
    try {
      if (scratch && !this.#frozen.thawed) this.munmap(scratch, BigInt(size));
    } catch (e) {
      if (!(e instanceof SystemError && e.code === "ESRCH")) throw e;
    } finally {
      this.#closed = true;
    }
  }

  /** Same as {@link dispose}. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Prepare to run system calls inside a frozen process.
 *
 * @example Release memory of another process (which `process_madvise` refuses)
 * ```ts ignore
 * import { freeze } from "./lib/freeze.ts";
 * import { inject } from "./lib/kernel/inject.ts";
 * import { MADV } from "./ffi/constants.ts";
 *
 * using frozen = freeze(pid);
 * using inj = inject(frozen);
 * inj.madvise(addr, 256n << 20n, MADV.DONTNEED);
 * ```
 *
 * @param frozen A process frozen by this thread.
 * @param opts Which thread carries the calls, and the timeout of one call.
 * @returns The injector; close it (or `using`) to unmap its scratch area.
 * @throws {CryoError} When the process is thawed, was frozen by another thread, or has no vDSO.
 * @throws {RangeError} When `tid` is not frozen there.
 */
export function inject(frozen: Frozen, opts: InjectOptions = {}): Injector {
  if (frozen.thawed) throw new CryoError(`Cannot inject into pid ${frozen.pid}: it is thawed`);
  const tid = opts.tid ?? frozen.tids[0];
  if (tid === undefined || !frozen.tids.includes(tid)) {
    throw new RangeError(`Cannot inject into pid ${frozen.pid}: tid ${tid} is not frozen`);
  }
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (!(timeoutMs > 0)) throw new RangeError(`Cannot inject into pid ${frozen.pid}: timeout ${timeoutMs} ms`);
  return new Injector(frozen, tid, findSyscallInstruction(frozen.pid), timeoutMs, opts.scratchAt);
}
