/**
 * What identifies an open file's contents cheaply, without reading them: `statx` of the descriptor (device,
 * inode, size, and the modification and change times to the nanosecond). Every write to the file, through any
 * descriptor or mapping, moves its change time (which no caller can set back), so an image verified once and
 * held open is still the verified one while its stamp is the same.
 *
 * @module
 */

import { rawSyscall } from "../kernel/syscall.ts";
import { systemError } from "../../ffi/libc.ts";

const SYS_STATX = 332n;
const AT_EMPTY_PATH = 0x1000n;
const STATX_BASIC_STATS = 0x7ffn;
const EMPTY = new Uint8Array(1); // "": the descriptor itself

/**
 * The stamp of the file open as `fd`: `dev:ino:size:mtime:ctime`, times in nanoseconds.
 *
 * @param fd An open descriptor.
 * @param path The file, for errors.
 * @returns The stamp.
 * @throws {SystemError} When `statx` fails.
 */
export function fileStamp(fd: number, path: string): string {
  const buf = new Uint8Array(256);
  const r = rawSyscall(
    SYS_STATX,
    BigInt(fd),
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(EMPTY))),
    AT_EMPTY_PATH,
    STATX_BASIC_STATS,
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf))),
  );
  if (r < 0n) throw systemError("statx", Number(-r), path);
  const v = new DataView(buf.buffer);
  const time = (at: number) => `${v.getBigInt64(at, true)}.${v.getUint32(at + 8, true)}`;
  const dev = `${v.getUint32(136, true)},${v.getUint32(140, true)}`; // stx_dev_major, stx_dev_minor
  return `${dev}:${v.getBigUint64(32, true)}:${v.getBigUint64(40, true)}:${time(112)}:${time(96)}`;
}
