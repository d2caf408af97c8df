/**
 * The libc symbol table, bound once at module load, and typed wrappers that turn a failure into a
 * {@link SystemError} carrying errno, its name and the call.
 *
 * errno is read with `__errno_location()` right after the failing call, on the same thread: calls here are
 * synchronous (not `nonblocking`), so nothing runs in between. The `nonblocking` variants (`waitpid_nb`) run on
 * a pool thread and must not rely on errno; the wrappers say so where it matters. A system call that glibc has
 * no wrapper for is not bound here: it goes through the helper's `cryo_syscall6`, which returns `-errno`.
 *
 * @module
 */

import { SystemError } from "../lib/errors.ts";
import { hex } from "../lib/hex.ts";
import { MAP_FAILED } from "./constants.ts";
import { buf, int, long, off_t, pid_t, ptr, size_t, ssize_t, uint, ulong } from "./types.ts";

const symbols = {
  // int *__errno_location(void);
  __errno_location: { parameters: [], result: ptr },
  // const char *strerrorname_np(int errnum);
  strerrorname_np: { parameters: [int], result: ptr },
  // const char *strerrordesc_np(int errnum);
  strerrordesc_np: { parameters: [int], result: ptr },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
  mmap: { parameters: [ptr, size_t, int, int, int, off_t], result: ptr },
  // int munmap(void *addr, size_t length);
  munmap: { parameters: [ptr, size_t], result: int },
  // int mprotect(void *addr, size_t len, int prot);
  mprotect: { parameters: [ptr, size_t, int], result: int },
  // int madvise(void *addr, size_t length, int advice);
  madvise: { parameters: [ptr, size_t, int], result: int },
  // ssize_t process_vm_readv(pid_t pid, const struct iovec *local_iov, unsigned long liovcnt,
  //                          const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
  process_vm_readv: { parameters: [pid_t, buf, ulong, buf, ulong, ulong], result: ssize_t },
  // process_vm_readv on a pool thread (errno is not readable: retry synchronously for it)
  process_vm_readv_nb: {
    name: "process_vm_readv",
    parameters: [pid_t, buf, ulong, buf, ulong, ulong],
    result: ssize_t,
    nonblocking: true,
  },
  // ssize_t process_vm_writev(pid_t pid, const struct iovec *local_iov, unsigned long liovcnt,
  //                           const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
  process_vm_writev: { parameters: [pid_t, buf, ulong, buf, ulong, ulong], result: ssize_t },
  // int open(const char *pathname, int flags, mode_t mode);
  open: { parameters: [buf, int, uint], result: int },
  // int close(int fd);
  close: { parameters: [int], result: int },
  // int memfd_create(const char *name, unsigned int flags);
  memfd_create: { parameters: [buf, uint], result: int },
  // ssize_t read(int fd, void *buf, size_t count);
  read: { parameters: [int, ptr, size_t], result: ssize_t },
  // ssize_t write(int fd, const void *buf, size_t count);
  write: { parameters: [int, ptr, size_t], result: ssize_t },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset);
  pread: { parameters: [int, ptr, size_t, off_t], result: ssize_t },
  // ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset);
  pwrite: { parameters: [int, ptr, size_t, off_t], result: ssize_t },
  // ssize_t writev(int fd, const struct iovec *iov, int iovcnt);
  writev: { parameters: [int, buf, int], result: ssize_t },
  // ssize_t writev(int fd, const struct iovec *iov, int iovcnt);  (on a pool thread: errno is not readable)
  writev_nb: { name: "writev", parameters: [int, buf, int], result: ssize_t, nonblocking: true },
  // off_t lseek(int fd, off_t offset, int whence);
  lseek: { parameters: [int, off_t, int], result: off_t },
  // int fsync(int fd);
  fsync: { parameters: [int], result: int },
  // int ftruncate(int fd, off_t length);
  ftruncate: { parameters: [int, off_t], result: int },
  // int fallocate(int fd, int mode, off_t offset, off_t len);
  fallocate: { parameters: [int, int, off_t, off_t], result: int },
  // int rename(const char *oldpath, const char *newpath);
  rename: { parameters: [buf, buf], result: int },
  // int unlink(const char *pathname);
  unlink: { parameters: [buf], result: int },
  // int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags);
  linkat: { parameters: [int, buf, int, buf, int], result: int },
  // int ioctl(int fd, unsigned long request, void *arg);
  ioctl: { parameters: [int, ulong, ptr], result: int },
  // int memcmp(const void *s1, const void *s2, size_t n);
  memcmp: { parameters: [ptr, ptr, size_t], result: int },
  // void *memcpy(void *dest, const void *src, size_t n);
  memcpy: { parameters: [ptr, ptr, size_t], result: ptr },
  // void *memset(void *s, int c, size_t n);
  memset: { parameters: [ptr, int, size_t], result: ptr },
  // int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
  prctl: { parameters: [int, ulong, ulong, ulong, ulong], result: int },
  // int kill(pid_t pid, int sig);
  kill: { parameters: [pid_t, int], result: int },
  // pid_t waitpid(pid_t pid, int *wstatus, int options);
  waitpid: { parameters: [pid_t, buf, int], result: pid_t },
  // pid_t waitpid(pid_t pid, int *wstatus, int options);  (on a pool thread: errno is not readable)
  waitpid_nb: { name: "waitpid", parameters: [pid_t, buf, int], result: pid_t, nonblocking: true },
  // long ptrace(enum __ptrace_request request, pid_t pid, void *addr, void *data);
  ptrace: { parameters: [int, pid_t, ptr, ptr], result: long },
  // pid_t getpid(void);
  getpid: { parameters: [], result: pid_t },
  // pid_t gettid(void);
  gettid: { parameters: [], result: pid_t },
  // long sysconf(int name);
  sysconf: { parameters: [int], result: long },
} as const satisfies Deno.ForeignLibraryInterface;

type LibcSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
let opened: LibcSymbols | undefined;

/** Open libc (once): on first use, so that importing cryo to parse a maps file needs no `--allow-ffi`. */
function open_(): LibcSymbols {
  if (opened) return opened;
  const lib = Deno.dlopen("libc.so.6", symbols).symbols;
  const page = Number(lib.sysconf(30 /* _SC_PAGESIZE */));
  if (page !== PAGE_SIZE) {
    throw new Error(
      `Cannot use cryo here: the page size is ${page} bytes, cryo supports ${PAGE_SIZE} (x86_64)`,
    );
  }
  return opened = lib;
}

/** The raw libc symbols, opened on first use. Prefer the wrappers below, which check for errors. */
export const libc: LibcSymbols = new Proxy({} as LibcSymbols, {
  get: (_, name) => open_()[name as keyof LibcSymbols],
});

let errnoView: Deno.UnsafePointerView | undefined;

/** The calling thread's errno right now. Read it immediately after the failing call. */
export function errno(): number {
  errnoView ??= new Deno.UnsafePointerView(open_().__errno_location()!);
  return errnoView.getInt32();
}

/** The symbolic name of an errno value, e.g. `EPERM`. */
export function errnoName(e: number): string {
  const p = libc.strerrorname_np(e);
  return p ? Deno.UnsafePointerView.getCString(p) : `errno ${e}`;
}

/** The description of an errno value, e.g. `Operation not permitted`. */
export function errnoDescription(e: number): string {
  const p = libc.strerrordesc_np(e);
  return p ? Deno.UnsafePointerView.getCString(p) : `unknown error ${e}`;
}

/** Build the {@link SystemError} for `call` failing with `e`. */
export function systemError(call: string, e: number, detail?: string): SystemError {
  return new SystemError(call, e, errnoName(e), errnoDescription(e), detail);
}

/**
 * `pread` (`call` "pread") or `pwrite` (`call` "pwrite") all of `bytes` at `offset` of `fd`, a short transfer
 * continued where it stopped.
 *
 * @param call Which.
 * @param fd The file.
 * @param bytes Where the bytes come from or go.
 * @param offset The file offset.
 * @param what What the file holds, for errors (the offset reached is added).
 * @throws {SystemError} When the kernel refuses, or transfers nothing (EIO: the file ends before).
 */
export function transferAll(
  call: "pread" | "pwrite",
  fd: number,
  bytes: Uint8Array,
  offset: number,
  what: string,
): void {
  if (bytes.length === 0) return;
  const at = addressOf(bytes); // a view per call (a window of a buffer) leaves no pointer behind

  for (let done = 0; done < bytes.length;) {
    const n = libc[call](fd, ptrOf(at + BigInt(done)), BigInt(bytes.length - done), BigInt(offset + done));
    if (n <= 0n) throw systemError(call, n < 0n ? errno() : 5, `${what} at ${offset + done}`);
    done += Number(n);
  }
}

/**
 * Check a libc return value: `-1` means failure with errno set. Returns the value otherwise.
 *
 * @param ret What the call returned.
 * @param call The call's name, for the error.
 * @param detail What it was applied to, for the error.
 * @returns `ret`, when it is not `-1`.
 * @throws {SystemError} When `ret` is `-1`.
 */
export function check<T extends number | bigint>(ret: T, call: string, detail?: string): T {
  if (ret === -1 || ret === -1n) throw systemError(call, errno(), detail);
  return ret;
}

/**
 * Check a raw kernel-style result, where failure is `-errno` (the helper returns these).
 *
 * @throws {SystemError} When `ret` is negative.
 */
export function unwrap<T extends number | bigint>(ret: T, call: string, detail?: string): T {
  if (ret < 0) throw systemError(call, -Number(ret), detail);
  return ret;
}

/** A pointer from an address (null for 0). */
export function ptrOf(addr: bigint): Deno.PointerValue {
  return Deno.UnsafePointer.create(addr);
}

/** An address from a pointer (0n for null). */
export function addrOf(p: Deno.PointerValue): bigint {
  return p === null ? 0n : Deno.UnsafePointer.value(p);
}

/**
 * Each buffer whose base address {@link addressOf} has taken, and that address. `Deno.UnsafePointer.of()` keeps
 * every view it is given in a WeakMap of Deno's, whose entries outlive V8's scavenges: a fresh view per record
 * (a `subarray` of a ring buffer) made each scavenge copy them, and V8 grew its young generation to the maximum
 * (a loop of a million: 187 MB survived scavenges; none through this cache, which gains an entry per buffer).
 */
const bases = new WeakMap<ArrayBufferLike, bigint>();

/**
 * The address of the first byte of `bytes`, its buffer's base taken once and kept (see {@link bases}): for views
 * made per record of a few long-lived buffers.
 *
 * @param bytes A view.
 * @returns Its address.
 */
export function addressOf(bytes: Uint8Array): bigint {
  const buffer = bytes.buffer; // first: a small buffer held in V8's heap moves out of it here
  let base = bases.get(buffer);
  if (base === undefined) {
    base = addrOf(Deno.UnsafePointer.of(bytes)) - BigInt(bytes.byteOffset);
    bases.set(buffer, base);
  }
  return base + BigInt(bytes.byteOffset);
}

/** A NUL-terminated C string in a new buffer. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s + "\0");
}

/** This system's page size in bytes. */
export const PAGE_SIZE = 4096;

/**
 * Map memory. Throws with the arguments in the message on failure.
 *
 * @returns The mapping's address.
 */
export function mmap(addr: bigint, len: bigint, prot: number, flags: number, fd = -1, offset = 0n): bigint {
  const p = libc.mmap(ptrOf(addr), len, prot, flags, fd, offset);
  const at = addrOf(p);
  if (at === MAP_FAILED) throw systemError("mmap", errno(), `${len} bytes at ${hex(addr)}`);
  return at;
}

/** Unmap `len` bytes at `addr`. */
export function munmap(addr: bigint, len: bigint): void {
  check(libc.munmap(ptrOf(addr), len), "munmap", `${len} bytes at ${hex(addr)}`);
}

/** Change the protection of `len` bytes at `addr`. */
export function mprotect(addr: bigint, len: bigint, prot: number): void {
  check(libc.mprotect(ptrOf(addr), len, prot), "mprotect", `${len} bytes at ${hex(addr)}`);
}

/** Give the kernel advice about `len` bytes at `addr`. */
export function madvise(addr: bigint, len: bigint, advice: number): void {
  check(libc.madvise(ptrOf(addr), len, advice), "madvise", `${len} bytes at ${hex(addr)}`);
}

/**
 * Read `len` bytes at `remote` in process `pid` into local memory at `local`, in one call.
 * Partial reads are retried from where they stopped.
 */
export function processVmRead(pid: number, local: bigint, remote: bigint, len: bigint): void {
  processVm("process_vm_readv", pid, local, remote, len);
}

/** Write `len` bytes from local memory at `local` to `remote` in process `pid`. */
export function processVmWrite(pid: number, local: bigint, remote: bigint, len: bigint): void {
  processVm("process_vm_writev", pid, local, remote, len);
}

function processVm(
  call: "process_vm_readv" | "process_vm_writev",
  pid: number,
  local: bigint,
  remote: bigint,
  len: bigint,
): void {
  const liov = new BigUint64Array(2);
  const riov = new BigUint64Array(2);
  let done = 0n;
  while (done < len) {
    liov[0] = local + done;
    liov[1] = len - done;
    riov[0] = remote + done;
    riov[1] = len - done;
    const n = libc[call](pid, liov, 1n, riov, 1n, 0n);
    if (n < 0n) throw systemError(call, errno(), `pid ${pid} at ${hex(remote + done)} (${len - done} bytes)`);
    if (n === 0n) {
      throw systemError(call, 14, /* EFAULT */ `pid ${pid} at ${hex(remote + done)}: no progress`);
    }
    done += BigInt(n);
  }
}

/** Open a file; returns the fd. */
export function open(path: string, flags: number, mode = 0o600): number {
  return check(libc.open(cstr(path), flags, mode), "open", path);
}

/** Close an fd. */
export function close(fd: number): void {
  check(libc.close(fd), "close", `fd ${fd}`);
}

/**
 * An anonymous file in memory (`memfd_create`, close-on-exec): seekable and mappable, never on a disk.
 *
 * @param name Its name in `/proc/self/fd` (for debugging only).
 * @returns The fd.
 */
export function memfdCreate(name: string): number {
  return check(libc.memfd_create(cstr(name), 1 /* MFD_CLOEXEC */), "memfd_create", name);
}
