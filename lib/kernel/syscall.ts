/**
 * Raw system calls from this process, for calls glibc has no wrapper for (`userfaultfd`, `pidfd_open`,
 * `pidfd_getfd`): through the helper's one `-errno` wrapper (`cryo_syscall6`, ffi/helper/abi.c), so that
 * errno is returned with the result and never read afterwards.
 *
 * @module
 */

import { helper } from "../../ffi/helper.ts";
import { systemError } from "../../ffi/libc.ts";

/**
 * Run system call `nr` in this process.
 *
 * @param nr The call's number (x86_64).
 * @param args Up to six arguments.
 * @returns The kernel's result: `-errno` on failure.
 */
export function rawSyscall(nr: bigint | number, ...args: bigint[]): bigint {
  const a = [...args, 0n, 0n, 0n, 0n, 0n, 0n];
  return BigInt(helper().cryo_syscall6(BigInt(nr), a[0], a[1], a[2], a[3], a[4], a[5]));
}

/**
 * Run system call `nr` in this process and throw on failure.
 *
 * @param name The call's name, for the error.
 * @param nr Its number.
 * @param args Up to six arguments.
 * @returns The result.
 * @throws {SystemError} With the errno, naming the call.
 */
export function syscallOrThrow(name: string, nr: bigint | number, ...args: bigint[]): bigint {
  const r = rawSyscall(nr, ...args);
  if (r < 0n) throw systemError(name, Number(-r));
  return r;
}
