/**
 * Per-thread facts recorded while a thread is stopped under ptrace: its general registers (`NT_PRSTATUS`), its
 * FP/vector state (`NT_X86_XSTATE`, or `NT_PRFPREG` where XSAVE is missing) and its rseq configuration
 * (`PTRACE_GET_RSEQ_CONFIGURATION`), plus the byte encoding a checkpoint stores as its "threads" section.
 *
 * Every ptrace call here must come from the thread that attached (see lib/kernel/freeze.ts); they are synchronous.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { check, errno, libc, systemError } from "../../ffi/libc.ts";

const PTRACE_GETREGSET = 0x4204;
const PTRACE_SETREGSET = 0x4205;
const PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;
const NT_PRSTATUS = 1;
const NT_PRFPREG = 2;
const NT_X86_XSTATE = 0x202;
const XSTATE_MAX = 16384;

/** The fields of x86_64 `struct user_regs_struct`, in order: 27 little-endian 64-bit words. */
export const GENERAL_REGISTERS = [
  "r15",
  "r14",
  "r13",
  "r12",
  "rbp",
  "rbx",
  "r11",
  "r10",
  "r9",
  "r8",
  "rax",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "orig_rax",
  "rip",
  "cs",
  "eflags",
  "rsp",
  "ss",
  "fs_base",
  "gs_base",
  "ds",
  "es",
  "fs",
  "gs",
] as const;

/** The name of one general register. */
export type RegisterName = typeof GENERAL_REGISTERS[number];

/** The kernel's `struct ptrace_rseq_configuration` for one thread. */
export interface RseqConfig {
  /** Address of the thread's registered `struct rseq` (0 when none is registered). */
  abiPointer: bigint;
  /** Registered size of the rseq area (32 with glibc's registration; 0 when none). */
  abiSize: number;
  /** The abort signature (`0x53053053` on x86). */
  signature: number;
  /** Registration flags. */
  flags: number;
}

/** The registers a restore puts back into a thread. */
export interface Registers {
  /** `struct user_regs_struct` bytes (216 on x86_64). */
  general: Uint8Array;
  /** FP/vector state: the XSAVE area (`xstate`) or the 512-byte FXSAVE area (`fpregs`). */
  vector: Uint8Array;
  /** Which regset `vector` came from. */
  vectorKind: "xstate" | "fpregs";
}

/** What was recorded about one stopped thread. */
export interface ThreadState extends Registers {
  /** The thread id. */
  tid: number;
  /** Its rseq configuration, or `null` when the kernel does not report one. */
  rseq: RseqConfig | null;
  /**
   * What the kernel keeps for it beyond registers (signal mask, pending signals, alternate stack, robust list;
   * lib/kernel/thread_kernel.ts), when recorded (images before the threads section's version 2 have none).
   */
  kernel?: ThreadKernelState | null;
}

/** A thread's alternate signal stack (`stack_t`). */
export interface AltStack {
  /** `ss_sp`. */
  sp: bigint;
  /** `ss_size`. */
  size: bigint;
  /** `ss_flags` (`SS_DISABLE` 2 when there is none, `SS_AUTODISARM` bit 31). */
  flags: number;
}

/** Per-thread kernel state recorded at a checkpoint. */
export interface ThreadKernelState {
  /** Blocked signals (bit n-1 for signal n). */
  sigmask: bigint;
  /** Signals pending for this thread alone (bit n-1 for signal n). */
  pending: bigint;
  /** Its alternate signal stack, or `null` when it could not be read. */
  altstack: AltStack | null;
  /** Its robust futex list head (`set_robust_list`), 0n when none. */
  robustHead: bigint;
  /** The length passed with it. */
  robustLength: bigint;
}

/** The bytes one thread's state takes in the threads section. */
export const THREAD_KERNEL_BYTES = 64;

/**
 * The 64 bytes of one thread's state in the threads section: `sigmask u64 | pending u64 | altstack sp u64 |
 * altstack size u64 | altstack flags u32 | has altstack u32 | robust head u64 | robust length u64 | 8 zero`.
 *
 * @param s The state.
 * @returns Its bytes.
 */
export function encodeThreadKernel(s: ThreadKernelState): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(THREAD_KERNEL_BYTES);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, s.sigmask, true);
  v.setBigUint64(8, s.pending, true);
  if (s.altstack) {
    v.setBigUint64(16, s.altstack.sp, true);
    v.setBigUint64(24, s.altstack.size, true);
    v.setUint32(32, s.altstack.flags, true);
    v.setUint32(36, 1, true);
  }
  v.setBigUint64(40, s.robustHead, true);
  v.setBigUint64(48, s.robustLength, true);
  return b;
}

/**
 * Decode what {@link encodeThreadKernel} wrote.
 *
 * @param b 64 bytes.
 * @returns The state.
 */
export function decodeThreadKernel(b: Uint8Array): ThreadKernelState {
  const v = new DataView(b.buffer, b.byteOffset, THREAD_KERNEL_BYTES);
  return {
    sigmask: v.getBigUint64(0, true),
    pending: v.getBigUint64(8, true),
    altstack: v.getUint32(36, true)
      ? { sp: v.getBigUint64(16, true), size: v.getBigUint64(24, true), flags: v.getUint32(32, true) }
      : null,
    robustHead: v.getBigUint64(40, true),
    robustLength: v.getBigUint64(48, true),
  };
}

/**
 * Read one general register out of recorded registers.
 *
 * @param regs Registers recorded by {@link readThreadState}.
 * @param name The register, e.g. `"rip"` or `"rsp"`.
 * @returns Its value.
 */
export function register(regs: Pick<Registers, "general">, name: RegisterName): bigint {
  const i = GENERAL_REGISTERS.indexOf(name);
  return new DataView(regs.general.buffer, regs.general.byteOffset, regs.general.byteLength)
    .getBigUint64(i * 8, true);
}

/**
 * Change one general register in recorded registers (in memory; {@link writeRegisters} applies them).
 *
 * @param regs Registers to change.
 * @param name The register.
 * @param value Its new value.
 */
export function setRegister(regs: Pick<Registers, "general">, name: RegisterName, value: bigint): void {
  const i = GENERAL_REGISTERS.indexOf(name);
  new DataView(regs.general.buffer, regs.general.byteOffset, regs.general.byteLength)
    .setBigUint64(i * 8, BigInt.asUintN(64, value), true);
}

/** `-ERESTART_RESTARTBLOCK`: the interrupted call resumes through `restart_syscall` and the thread's restart record. */
const ERESTART_RESTARTBLOCK = -516n;
const EINTR = -4n;
/** The registers that say which call a thread is in, with which arguments, from where. */
const CALL_REGISTERS: readonly RegisterName[] = [
  "orig_rax",
  "rax",
  "rip",
  "rsp",
  "rdi",
  "rsi",
  "rdx",
  "r10",
  "r8",
  "r9",
];

/**
 * The registers to put back on a thread so that the system call they were recorded in resumes as that call.
 *
 * A call interrupted with `-ERESTART_RESTARTBLOCK` (a `nanosleep`, a `poll` or a futex wait with a timeout)
 * resumes through `restart_syscall`, which the kernel runs from the thread's restart record: the record of the
 * wait the thread is in **now**, not of the one the registers describe, and a rollback cannot put a record back.
 * Put back as they were, such registers made a thread that had moved on to another wait resume that one (waiting
 * on another futex word while the program woke the first: a hang until its timeout), or the record of the
 * thread that created it (a thread created again inherits its creator's). Unless the thread is in that very
 * call now (`now` agrees in every register that names it: the record is that call's), the call returns `EINTR`
 * instead, which the callers of waits take for an early wake and retry (a `nanosleep` caller may sleep its
 * whole request again). Every other register set is returned as it is.
 *
 * @param recorded The registers of the image.
 * @param now The thread's registers now, or `undefined` for a thread created again.
 * @returns `recorded`, or a copy whose interrupted call returns `EINTR`.
 */
export function resumable<T extends Registers>(recorded: T, now?: Pick<Registers, "general">): T {
  if (BigInt.asIntN(64, register(recorded, "rax")) !== ERESTART_RESTARTBLOCK) return recorded;
  if (BigInt.asIntN(64, register(recorded, "orig_rax")) < 0n) return recorded;
  if (now && CALL_REGISTERS.every((r) => register(now, r) === register(recorded, r))) return recorded;
  const copy = { ...recorded, general: recorded.general.slice() };
  setRegister(copy, "rax", EINTR);
  return copy;
}

/** `PTRACE_GETREGSET`/`PTRACE_SETREGSET` of regset `type` through an iovec over `data`; the bytes moved. */
function regset(request: number, tid: number, type: number, data: Uint8Array<ArrayBuffer>): number {
  const iov = new BigUint64Array([
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(data))),
    BigInt(data.length),
  ]);
  const r = libc.ptrace(request, tid, Deno.UnsafePointer.create(BigInt(type)), Deno.UnsafePointer.of(iov));
  const name = request === PTRACE_GETREGSET ? "PTRACE_GETREGSET" : "PTRACE_SETREGSET";
  check(r, `ptrace(${name})`, `tid ${tid} regset 0x${type.toString(16)}`);
  return Number(iov[1]);
}

function getRegset(tid: number, type: number, size: number): Uint8Array<ArrayBuffer> {
  const data = new Uint8Array(size);
  return data.slice(0, regset(PTRACE_GETREGSET, tid, type, data));
}

function setRegset(tid: number, type: number, bytes: Uint8Array): void {
  regset(PTRACE_SETREGSET, tid, type, new Uint8Array(bytes));
}

/**
 * Read a stopped tracee's rseq configuration.
 *
 * @param tid A thread this thread has seized and that is in a ptrace-stop.
 * @returns Its configuration, or `null` when the kernel lacks `PTRACE_GET_RSEQ_CONFIGURATION` (EIO).
 * @throws {SystemError} When the call fails otherwise.
 */
export function readRseqConfig(tid: number): RseqConfig | null {
  const out = new Uint8Array(24);
  const r = libc.ptrace(
    PTRACE_GET_RSEQ_CONFIGURATION,
    tid,
    Deno.UnsafePointer.create(24n),
    Deno.UnsafePointer.of(out),
  );
  if (r === -1n) {
    const e = errno();
    if (e === 5 /* EIO: the kernel predates it */) return null;
    throw systemError("ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", e, `tid ${tid}`);
  }
  return rseqFromBytes(out);
}

/**
 * Decode a 24-byte `struct ptrace_rseq_configuration`.
 *
 * @param b The bytes.
 * @returns The configuration.
 */
export function rseqFromBytes(b: Uint8Array): RseqConfig {
  const v = new DataView(b.buffer, b.byteOffset, 24);
  return {
    abiPointer: v.getBigUint64(0, true),
    abiSize: v.getUint32(8, true),
    signature: v.getUint32(12, true),
    flags: v.getUint32(16, true),
  };
}

/**
 * Record a stopped tracee's registers and rseq configuration.
 *
 * @param tid A thread this thread has seized and that is in a ptrace-stop.
 * @returns Its registers (general and FP/vector) and rseq configuration.
 * @throws {SystemError} When a ptrace call fails (ESRCH: not stopped, or traced from another thread).
 */
export function readThreadState(tid: number): ThreadState {
  const general = getRegset(tid, NT_PRSTATUS, GENERAL_REGISTERS.length * 8);
  let vector: Uint8Array;
  let vectorKind: "xstate" | "fpregs" = "xstate";
  try {
    vector = getRegset(tid, NT_X86_XSTATE, XSTATE_MAX);
  } catch (e) {
    if ((e as { code?: string }).code !== "ENODEV" && (e as { code?: string }).code !== "EINVAL") throw e;
    vector = getRegset(tid, NT_PRFPREG, 512);
    vectorKind = "fpregs";
  }
  return { tid, general, vector, vectorKind, rseq: readRseqConfig(tid) };
}

/**
 * Put registers back into a stopped tracee (`PTRACE_SETREGSET`): the general registers, then FP/vector state.
 *
 * @param tid A thread this thread has seized and that is in a ptrace-stop.
 * @param regs The registers, as {@link readThreadState} recorded them.
 * @throws {RangeError} When the general registers are not 216 bytes.
 * @throws {SystemError} When the kernel refuses them.
 */
export function writeRegisters(tid: number, regs: Registers): void {
  if (regs.general.byteLength !== GENERAL_REGISTERS.length * 8) {
    throw new RangeError(
      `Cannot set registers of tid ${tid}: general registers are ${regs.general.byteLength} bytes, expected ${
        GENERAL_REGISTERS.length * 8
      }`,
    );
  }
  setRegset(tid, NT_PRSTATUS, regs.general);
  setRegset(tid, regs.vectorKind === "xstate" ? NT_X86_XSTATE : NT_PRFPREG, regs.vector);
}

// The "threads" section: magic "CRYOTHRD", u32 version, u32 count, then per thread a 48-byte head
// (i32 tid, u32 general length, u32 vector length, u8 vector kind, u8 has rseq, u8 has kernel state (version 2;
// 0 in version 1), u8 zero, u64 rseq pointer, u32 rseq size, u32 signature, u32 flags, 12 zero bytes), the
// general bytes, the vector bytes, zero padding to 8, then (version 2, when flagged) the 64 bytes of
// encodeThreadKernel. All little-endian. Version 1 images load as before (no kernel state).
const MAGIC = "CRYOTHRD";
const VERSION = 2;
const HEAD = 48;

const pad8 = (n: number) => (n + 7) & ~7;

/**
 * Encode thread states as the bytes of a "threads" image section.
 *
 * @param threads The states, as recorded while frozen.
 * @returns The section's bytes.
 */
export function encodeThreads(threads: readonly ThreadState[]): Uint8Array<ArrayBuffer> {
  let size = 16;
  for (const t of threads) {
    size += HEAD + pad8(t.general.byteLength) + pad8(t.vector.byteLength) +
      (t.kernel ? THREAD_KERNEL_BYTES : 0);
  }
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  out.set(new TextEncoder().encode(MAGIC), 0);
  v.setUint32(8, VERSION, true);
  v.setUint32(12, threads.length, true);
  let at = 16;
  for (const t of threads) {
    v.setInt32(at, t.tid, true);
    v.setUint32(at + 4, t.general.byteLength, true);
    v.setUint32(at + 8, t.vector.byteLength, true);
    v.setUint8(at + 12, t.vectorKind === "xstate" ? 1 : 2);
    v.setUint8(at + 13, t.rseq ? 1 : 0);
    v.setUint8(at + 14, t.kernel ? 1 : 0);
    if (t.rseq) {
      v.setBigUint64(at + 16, t.rseq.abiPointer, true);
      v.setUint32(at + 24, t.rseq.abiSize, true);
      v.setUint32(at + 28, t.rseq.signature, true);
      v.setUint32(at + 32, t.rseq.flags, true);
    }
    at += HEAD;
    out.set(t.general, at);
    at += pad8(t.general.byteLength);
    out.set(t.vector, at);
    at += pad8(t.vector.byteLength);
    if (t.kernel) {
      out.set(encodeThreadKernel(t.kernel), at);
      at += THREAD_KERNEL_BYTES;
    }
  }
  return out;
}

/**
 * Decode a "threads" image section, checking every length against the bytes before reading.
 *
 * @param bytes The section's bytes.
 * @param source The image the section came from, for errors (`"-"` for a stream).
 * @param base The section's offset in the image, so errors name absolute offsets.
 * @returns The thread states, in stored order.
 * @throws {ImageError} When the section is truncated, has another magic or version, or is malformed.
 */
export function decodeThreads(bytes: Uint8Array, source = "-", base = 0): ThreadState[] {
  const fail = (offset: number, message: string) => new ImageError(source, base + offset, message);
  if (bytes.byteLength < 16) {
    throw fail(0, `threads section is ${bytes.byteLength} bytes, expected at least 16`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== MAGIC) {
    throw fail(0, `threads section magic is ${JSON.stringify(magic)}, expected "${MAGIC}"`);
  }
  const version = v.getUint32(8, true);
  if (version !== 1 && version !== VERSION) {
    throw fail(8, `threads section version is ${version}, expected 1 or ${VERSION}`);
  }
  const count = v.getUint32(12, true);
  const threads: ThreadState[] = [];
  let at = 16;
  for (let i = 0; i < count; i++) {
    if (at + HEAD > bytes.byteLength) {
      throw fail(at, `thread ${i} of ${count}: header runs past the section end`);
    }
    const tid = v.getInt32(at, true);
    const generalLength = v.getUint32(at + 4, true);
    const vectorLength = v.getUint32(at + 8, true);
    const kind = v.getUint8(at + 12);
    const hasRseq = v.getUint8(at + 13);
    if (generalLength !== GENERAL_REGISTERS.length * 8) {
      throw fail(at + 4, `thread ${tid}: general registers are ${generalLength} bytes, expected 216`);
    }
    if (kind !== 1 && kind !== 2) throw fail(at + 12, `thread ${tid}: vector kind ${kind}, expected 1 or 2`);
    if (hasRseq > 1) throw fail(at + 13, `thread ${tid}: rseq flag ${hasRseq}, expected 0 or 1`);
    const hasKernel = v.getUint8(at + 14);
    if (hasKernel > (version === 1 ? 0 : 1)) {
      throw fail(
        at + 14,
        `thread ${tid}: kernel state flag ${hasKernel}, expected 0${version === 1 ? "" : " or 1"}`,
      );
    }
    const rseq = hasRseq
      ? {
        abiPointer: v.getBigUint64(at + 16, true),
        abiSize: v.getUint32(at + 24, true),
        signature: v.getUint32(at + 28, true),
        flags: v.getUint32(at + 32, true),
      }
      : null;
    const body = at + HEAD;
    const kernelAt = body + pad8(generalLength) + pad8(vectorLength);
    const end = kernelAt + (hasKernel ? THREAD_KERNEL_BYTES : 0);
    if (end > bytes.byteLength) throw fail(at + 8, `thread ${tid}: registers run past the section end`);
    threads.push({
      tid,
      general: bytes.slice(body, body + generalLength),
      vector: bytes.slice(body + pad8(generalLength), body + pad8(generalLength) + vectorLength),
      vectorKind: kind === 1 ? "xstate" : "fpregs",
      rseq,
      ...(hasKernel ? { kernel: decodeThreadKernel(bytes.subarray(kernelAt, end)) } : {}),
    });
    at = end;
  }
  if (at !== bytes.byteLength) {
    throw fail(at, `${bytes.byteLength - at} trailing bytes after ${count} threads`);
  }
  return threads;
}
