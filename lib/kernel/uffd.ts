/**
 * A userfaultfd on this process's memory or on another process's: created inside the target by an injected
 * `userfaultfd(2)`, copied into this process with `pidfd_getfd(2)` and closed in the target again. From then on
 * the `UFFDIO_*` ioctls issued here act on the target's memory (the descriptor carries the target's mm).
 * Write tracking of a range over one (`PAGEMAP_SCAN` reading and re-arming its write-protection) is
 * lib/kernel/range_tracking.ts's.
 *
 * The structures of linux/userfaultfd.h are declared here as `BigUint64Array`s (the headers on our machines
 * predate `UFFD_FEATURE_WP_ASYNC`).
 *
 * @module
 */

import {
  O_CLOEXEC,
  O_NONBLOCK,
  SYS_PIDFD_GETFD,
  SYS_PIDFD_OPEN,
  SYS_USERFAULTFD,
  UFFD_API,
  UFFD_USER_MODE_ONLY,
  UFFDIO,
} from "./uffd_abi.ts";
import { rawSyscall } from "./syscall.ts";
import { CryoError } from "../errors.ts";
import { type Injector, SYS } from "./inject.ts";
import { capabilities, requireCapabilities, UFFD_FEATURE } from "./capabilities.ts";
import { errno, libc, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { F } from "../../ffi/constants.ts";

const EEXIST = 17;
const EAGAIN = 11;
const EPERM = 1;

/** `UFFDIO.REGISTER` modes. */
export const UFFDIO_REGISTER_MODE = { MISSING: 1n, WP: 2n, MINOR: 4n } as const;

/** Options of {@link Userfaultfd.create} and {@link Userfaultfd.inTarget}. */
export interface UserfaultfdOptions {
  /** `UFFD_FEATURE_*` bits to ask for with `UFFDIO.API` (default none). */
  features?: bigint;
  /**
   * `UFFD_USER_MODE_ONLY`: handle only faults taken in user mode. Default: off when the kernel allows it (so a
   * `read()` into a registered missing page waits for its page instead of failing with EFAULT), on otherwise.
   */
  userModeOnly?: boolean;
  /**
   * {@link Userfaultfd.inTarget} only: leave the descriptor open in the target too (its number is
   * {@link Userfaultfd.targetFd}), so that the userfaultfd outlives this process: if it dies, threads faulting
   * on registered ranges wait instead of getting zero pages, and {@link Userfaultfd.adopt} takes it back. The
   * caller closes the target's copy (an injected `close`) when done. It is kept at a high number (the lowest
   * free one from {@link KEPT_FD_FROM}, when the process's limit allows), out of the numbers the program uses
   * and reuses: a program that names a descriptor by a number it closed since must not land on cryo's
   * userfaultfd after a rollback. Default false.
   */
  keepInTarget?: boolean;
}

/** Where a userfaultfd kept in a target is numbered from (`fcntl(F_DUPFD_CLOEXEC)`; 1024 is the usual limit). */
export const KEPT_FD_FROM = 1000;

/**
 * Move the target's descriptor `tfd` to the lowest free number from {@link KEPT_FD_FROM}; when the process's
 * limit refuses (EINVAL, EMFILE), it stays where it is.
 */
function keptHigh(inj: Injector, tfd: bigint): bigint {
  const high = inj.raw(SYS.fcntl, tfd, F.DUPFD_CLOEXEC, KEPT_FD_FROM);
  if (high < 0n) return tfd;
  inj.closeFd(Number(tfd));
  return high;
}

function featureNames(bits: bigint): string {
  return Object.entries(UFFD_FEATURE).filter(([, v]) => (bits & v) !== 0n).map(([k]) => `UFFD_FEATURE_${k}`)
    .join(", ");
}

/** `pidfd_getfd`: a copy of descriptor `targetFd` of `pid`, in this process. */
function copyFd(pid: number, targetFd: number): number {
  const pidfd = rawSyscall(SYS_PIDFD_OPEN, BigInt(pid));
  if (pidfd < 0n) throw systemError("pidfd_open", Number(-pidfd), `pid ${pid}`);
  const got = rawSyscall(SYS_PIDFD_GETFD, pidfd, BigInt(targetFd));
  libc.close(Number(pidfd));
  if (got < 0n) throw systemError("pidfd_getfd", Number(-got), `fd ${targetFd} of pid ${pid}`);
  return Number(got);
}

/**
 * Whether descriptor `fd` of `pid` is a userfaultfd (its `/proc/PID/fd` link reads `anon_inode:[userfaultfd]`).
 *
 * @param pid The process.
 * @param fd The descriptor's number.
 * @returns True when it is.
 */
export function isUserfaultfd(pid: number, fd: number): boolean {
  try {
    return Deno.readLinkSync(`/proc/${pid}/fd/${fd}`) === "anon_inode:[userfaultfd]";
  } catch {
    return false;
  }
}

/**
 * Whether process `pid` holds a userfaultfd (its own, or one cryo left in it for write tracking).
 *
 * @param pid The process.
 * @returns Whether one of its descriptors is a userfaultfd.
 */
export function holdsUserfaultfd(pid: number): boolean {
  try {
    for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) if (isUserfaultfd(pid, Number(e.name))) return true;
  } catch { /* gone */ }
  return false;
}

/**
 * A userfaultfd held by this process, on its own memory or another process's. Disposable: `close()` closes
 * the descriptor, which unregisters every range it registered.
 */
export class Userfaultfd implements Disposable {
  /** The descriptor, in this process. */
  readonly fd: number;
  /** Whose memory it acts on. */
  readonly pid: number | "self";
  /** The features enabled (asked for, and granted by `UFFDIO.API`). */
  readonly features: bigint;
  /** Whether it handles user-mode faults only. */
  readonly userModeOnly: boolean;
  /** The descriptor's number in the target when it was kept there (`keepInTarget`), else -1. */
  readonly targetFd: number;
  readonly #buf = new BigUint64Array(5);
  readonly #bufPtr = Deno.UnsafePointer.of(this.#buf);
  #closed = false;

  private constructor(
    fd: number,
    pid: number | "self",
    features: bigint,
    userModeOnly: boolean,
    targetFd = -1,
  ) {
    this.fd = fd;
    this.targetFd = targetFd;
    this.pid = pid;
    this.features = features;
    this.userModeOnly = userModeOnly;
  }

  /** `UFFDIO.API` on a fresh descriptor; closes it on failure. */
  static #handshake(
    fd: number,
    pid: number | "self",
    opts: UserfaultfdOptions,
    userModeOnly: boolean,
    targetFd = -1,
  ) {
    const want = opts.features ?? 0n;
    const api = new BigUint64Array([UFFD_API, want, 0n]);
    if (libc.ioctl(fd, UFFDIO.API, Deno.UnsafePointer.of(api)) !== 0) {
      const e = errno();
      libc.close(fd);
      const offered = capabilities().uffdFeatures;
      const lacking = want & ~offered;
      if (lacking) {
        throw new CryoError(
          `Cannot create a userfaultfd for ${
            pid === "self" ? "this process" : `pid ${pid}`
          }: this kernel lacks ` +
            featureNames(lacking),
        );
      }
      throw systemError("ioctl UFFDIO.API", e, `features ${hex(want)}`);
    }
    // On success api[1] lists every feature the kernel offers; those enabled are the ones asked for.
    return new Userfaultfd(fd, pid, want, userModeOnly, targetFd);
  }

  /**
   * A userfaultfd on this process's own memory (non-blocking, close-on-exec).
   *
   * @param opts Features and mode.
   * @returns The descriptor's owner.
   * @throws {CryoError} Naming a missing feature, or when userfaultfd is not allowed here.
   */
  static create(opts: UserfaultfdOptions = {}): Userfaultfd {
    requireCapabilities("create a userfaultfd", ["userfaultfd"]);
    const userModeOnly = opts.userModeOnly ?? !capabilities().userfaultfdKernelFaults;
    const flags = O_CLOEXEC | O_NONBLOCK | (userModeOnly ? UFFD_USER_MODE_ONLY : 0);
    const r = rawSyscall(SYS_USERFAULTFD, BigInt(flags));
    if (r < 0n) throw systemError("userfaultfd", Number(-r), userModeOnly ? "(user mode only)" : "");
    const fd = Number(r);
    return Userfaultfd.#handshake(fd, "self", opts, userModeOnly);
  }

  /**
   * A userfaultfd on a frozen process's memory: an injected `userfaultfd(2)` (non-blocking, close-on-exec),
   * copied here with `pidfd_getfd(2)`, then closed in the target (on every path). The target may be thawed
   * afterwards; the descriptor keeps acting on its memory.
   *
   * @param inj An injector on the frozen target.
   * @param opts Features and mode.
   * @returns The descriptor's owner.
   * @throws {CryoError} Naming a missing feature.
   * @throws {SystemError} When the target refuses `userfaultfd(2)` (EPERM: not allowed for it) or the copy fails.
   */
  static inTarget(inj: Injector, opts: UserfaultfdOptions = {}): Userfaultfd {
    requireCapabilities(`create a userfaultfd in pid ${inj.pid}`, ["userfaultfd", "pidfdGetfd"]);
    let userModeOnly = opts.userModeOnly ?? false;
    let tfd = inj.raw(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK | (userModeOnly ? UFFD_USER_MODE_ONLY : 0));
    if (tfd === -BigInt(EPERM) && opts.userModeOnly === undefined) {
      userModeOnly = true; // vm.unprivileged_userfaultfd=0 and the target lacks CAP_SYS_PTRACE
      tfd = inj.raw(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    }
    if (tfd < 0n) {
      throw systemError(
        "userfaultfd",
        -Number(tfd),
        `in pid ${inj.pid}${userModeOnly ? " (user mode only)" : ""}`,
      );
    }
    if (opts.keepInTarget) tfd = keptHigh(inj, tfd);
    let fd = -1;
    let kept = false;
    try {
      fd = copyFd(inj.pid, Number(tfd));
      const uffd = Userfaultfd.#handshake(
        fd,
        inj.pid,
        opts,
        userModeOnly,
        opts.keepInTarget ? Number(tfd) : -1,
      );
      kept = opts.keepInTarget ?? false;
      return uffd;
    } finally {
      if (!kept) inj.closeFd(Number(tfd));
    }
  }

  /**
   * Take back a userfaultfd that a process holds (one created with `keepInTarget` by an earlier cryo that
   * died): `pidfd_getfd`, no new `UFFDIO_API` (it was done when it was created). The target keeps its copy.
   *
   * @param pid The process.
   * @param targetFd The descriptor's number in it.
   * @returns The descriptor's owner (`features` reads 0: not known here).
   * @throws {CryoError} When that descriptor is not a userfaultfd.
   * @throws {SystemError} When it cannot be copied.
   */
  static adopt(pid: number, targetFd: number): Userfaultfd {
    if (!isUserfaultfd(pid, targetFd)) {
      throw new CryoError(`Cannot take the userfaultfd of pid ${pid} back: its fd ${targetFd} is not one`);
    }
    return new Userfaultfd(copyFd(pid, targetFd), pid, 0n, false, targetFd);
  }

  #ioctl(req: bigint, name: string, detail: string): void {
    if (this.#closed) throw new CryoError(`Cannot ${name} ${detail}: the userfaultfd is closed`);
    if (libc.ioctl(this.fd, req, this.#bufPtr) !== 0) {
      throw systemError(`ioctl ${name}`, errno(), `${detail} of ${this.#who()}`);
    }
  }

  #who(): string {
    return this.pid === "self" ? "this process" : `pid ${this.pid}`;
  }

  /**
   * `UFFDIO.REGISTER` a range.
   *
   * @param start First address, page aligned.
   * @param length Bytes, page aligned.
   * @param mode `UFFDIO_REGISTER_MODE` bits (MISSING, WP).
   * @returns The ioctls the range supports (`1 << _UFFDIO_*` bits).
   */
  register(start: bigint, length: bigint, mode: bigint): bigint {
    this.#buf.set([start, length, mode, 0n]);
    this.#ioctl(UFFDIO.REGISTER, "UFFDIO.REGISTER", `${hex(start)}+${length}`);
    return this.#buf[3];
  }

  /**
   * `UFFDIO.UNREGISTER` a range (threads waiting on a fault there are woken and fault again, unhandled).
   *
   * @param start First address.
   * @param length Bytes.
   */
  unregister(start: bigint, length: bigint): void {
    this.#buf.set([start, length]);
    this.#ioctl(UFFDIO.UNREGISTER, "UFFDIO.UNREGISTER", `${hex(start)}+${length}`);
  }

  /**
   * `UFFDIO.WAKE` threads waiting on faults in a range.
   *
   * @param start First address.
   * @param length Bytes.
   */
  wake(start: bigint, length: bigint): void {
    this.#buf.set([start, length]);
    this.#ioctl(UFFDIO.WAKE, "UFFDIO.WAKE", `${hex(start)}+${length}`);
  }

  /**
   * `UFFDIO.WRITEPROTECT` a range on or off (registered with `UFFDIO_REGISTER_MODE.WP`).
   *
   * @param start First address.
   * @param length Bytes.
   * @param protect True to protect, false to lift it (and wake waiters).
   */
  writeProtect(start: bigint, length: bigint, protect = true): void {
    this.#buf.set([start, length, protect ? 1n : 0n]);
    this.#ioctl(UFFDIO.WRITEPROTECT, "UFFDIO.WRITEPROTECT", `${hex(start)}+${length}`);
  }

  /**
   * `UFFDIO.COPY`: fill missing pages of a registered range from this process's memory, waking waiters.
   *
   * @param dst First address in the target, page aligned.
   * @param src Address of the data in this process.
   * @param length Bytes, page aligned.
   * @returns Bytes copied; less than `length` when a page already existed (EEXIST) partway.
   */
  copy(dst: bigint, src: bigint, length: bigint): bigint {
    this.#buf.set([dst, src, length, 0n, 0n]); // struct uffdio_copy: dst, src, len, mode, copy (out)
    return this.#fill(UFFDIO.COPY, "UFFDIO.COPY", dst, length, 4);
  }

  /**
   * `UFFDIO.ZEROPAGE`: fill missing pages of a registered range with zeros, waking waiters.
   *
   * @param dst First address, page aligned.
   * @param length Bytes, page aligned.
   * @returns Bytes filled; less than `length` when a page already existed partway.
   */
  zeropage(dst: bigint, length: bigint): bigint {
    this.#buf.set([dst, length, 0n, 0n]); // struct uffdio_zeropage: range (start, len), mode, zeropage (out)
    return this.#fill(UFFDIO.ZEROPAGE, "UFFDIO.ZEROPAGE", dst, length, 3);
  }

  /**
   * Issue a filling ioctl (`COPY`, `ZEROPAGE`) whose argument is in place, trying again while the mapping is
   * changing (EAGAIN with nothing done); a page that already existed (EEXIST) ends it early.
   *
   * @param req The request.
   * @param name Its name, for errors.
   * @param dst First address filled, for errors.
   * @param length Bytes asked for.
   * @param doneAt The argument's word where the kernel reports the bytes done.
   * @returns Bytes filled.
   */
  #fill(req: bigint, name: string, dst: bigint, length: bigint, doneAt: number): bigint {
    if (this.#closed) throw new CryoError(`Cannot ${name} at ${hex(dst)}: the userfaultfd is closed`);
    for (let tries = 0;; tries++) {
      if (libc.ioctl(this.fd, req, this.#bufPtr) === 0) return length;
      const e = errno();
      const done = BigInt.asIntN(64, this.#buf[doneAt]);
      if (e === EEXIST) return done > 0n ? done : 0n;
      if (e === EAGAIN && done <= 0n && tries < 1000) continue; // the mapping is changing: try again
      if (e === EAGAIN && done > 0n) return done;
      throw systemError(`ioctl ${name}`, e, `${length} bytes at ${hex(dst)} of ${this.#who()}`);
    }
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Close the descriptor (the kernel unregisters its ranges). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
