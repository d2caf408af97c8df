/**
 * Reading `/proc/<pid>/` files with libc, so a failure is a {@link SystemError} carrying errno and naming the
 * file (which names the pid).
 *
 * @module
 */

import { errno, libc, open, systemError } from "../../ffi/libc.ts";
import { O } from "../../ffi/constants.ts";

/**
 * The path of a file under `/proc/<pid>/`, validating the pid.
 *
 * @param pid A positive pid, or `"self"`.
 * @param file The file name, e.g. `"maps"`.
 * @returns The path, e.g. `/proc/42/maps`.
 * @throws {TypeError} When `pid` is not `"self"` nor a positive integer.
 */
export function procPath(pid: number | "self", file: string): string {
  if (pid !== "self" && !(Number.isInteger(pid) && pid > 0 && pid <= 0x7fffffff)) {
    throw new TypeError(`Cannot use pid ${String(pid)}: expected a positive integer or "self"`);
  }
  return `/proc/${pid}/${file}`;
}

/**
 * Read a whole `/proc` text file with libc, so a failure carries errno.
 *
 * @param path The file.
 * @returns Its text.
 * @throws {SystemError} When it cannot be opened or read, naming the file.
 */
export function readProcText(path: string): string {
  const fd = open(path, O.RDONLY | O.CLOEXEC);
  try {
    const chunks: Uint8Array[] = [];
    let total = 0;
    const chunk = new Uint8Array(1 << 16);
    const p = Deno.UnsafePointer.of(chunk);
    for (;;) {
      const n = Number(libc.read(fd, p, BigInt(chunk.length)));
      if (n < 0) {
        const e = errno();
        if (e === 4 /* EINTR */) continue;
        throw systemError("read", e, path);
      }
      if (n === 0) break;
      chunks.push(chunk.slice(0, n));
      total += n;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    return new TextDecoder().decode(all);
  } finally {
    libc.close(fd);
  }
}
