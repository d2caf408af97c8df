/**
 * The files an image is written through, so that a writer killed at any moment (even by SIGKILL, which runs no
 * cleanup) leaves nothing behind but a complete image or nothing:
 *
 * - An image is written into an unnamed file (`O_TMPFILE`, mode 0600) in its directory, fsynced, and only then
 *   given its name with `linkat` through `/proc/self/fd` (atomic: the name appears with the whole image behind
 *   it). When an image of that name already exists, the file is linked under a temporary name and renamed over
 *   it (atomic replace); only that instant has a named temporary file.
 * - Where a file system has no `O_TMPFILE`, the image is written to a named temporary file that carries its
 *   writer's boot, pid namespace, pid and start time (`.NAME.cryo-BOOT-NS-PID-START-RAND.tmp`), and the next
 *   writer to the same directory removes those whose writer no longer runs ({@link sweepStale}).
 * - Scratch files (a raw image taken before it is compressed) are unnamed from the start ({@link scratchFile}).
 *
 * @module
 */

import { AT, O } from "../../ffi/constants.ts";
import { check, cstr, errno, libc, open, systemError } from "../../ffi/libc.ts";
import { startTimeOf } from "../kernel/process_status.ts";

const EEXIST = 17;
const EISDIR = 21;
const EINVAL = 22;
const EOPNOTSUPP = 95;

/** The directory of `path`, as `open()` takes it (`.` for a bare name). */
export function dirOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
}

/**
 * Open an unnamed file (`O_TMPFILE`, mode 0600, close-on-exec) in `dir`.
 *
 * @param dir The directory (its file system holds the file).
 * @param access `O.WRONLY` or `O.RDWR`.
 * @returns The fd, or undefined when the file system has no `O_TMPFILE`.
 * @throws {SystemError} On any other failure (ENOENT, EACCES, …).
 */
export function openUnnamed(dir: string, access: number): number | undefined {
  const fd = libc.open(cstr(dir), O.TMPFILE | access | O.CLOEXEC, 0o600);
  if (fd >= 0) return fd;
  const e = errno();
  if (e === EOPNOTSUPP || e === EISDIR || e === EINVAL) return undefined;
  throw systemError("open", e, `an unnamed file in ${dir}`);
}

/**
 * A read-write scratch file in `dir` that no name points to, so it is gone when its fd is closed or its
 * process dies: `O_TMPFILE`, or (without it) a file created and unlinked at once. Read it again through
 * `/proc/self/fd/FD`.
 *
 * @param dir The directory (its file system holds the data).
 * @returns The fd (close it when done).
 */
export function scratchFile(dir: string): number {
  const fd = openUnnamed(dir, O.RDWR);
  if (fd !== undefined) return fd;
  const name = tempName(`${dir}/.cryo-scratch`);
  const named = open(name, O.RDWR | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
  libc.unlink(cstr(name));
  return named;
}

function readOr(read: () => string, fallback: string): string {
  try {
    return read();
  } catch {
    return fallback;
  }
}

/** This boot (8 hex digits of the boot id) and this pid namespace (its inode): where a pid means a process. */
const where = `${
  readOr(() => Deno.readTextFileSync("/proc/sys/kernel/random/boot_id"), "0").replace(/-/g, "").slice(0, 8)
}-${readOr(() => Deno.readLinkSync("/proc/self/ns/pid").replace(/\D/g, ""), "0")}`;

/** A temporary name: `.NAME.cryo-BOOT-NS-PID-START-RAND.tmp`. */
const TEMP_NAME = /^\..*\.cryo-([0-9a-f]+-\d+)-(\d+)-(\d+)-[0-9a-f]{8}\.tmp$/;

/**
 * A temporary name next to `path` that says who writes it: `.NAME.cryo-BOOT-NS-PID-START-RAND.tmp`.
 *
 * @param path The final path.
 * @returns The temporary path.
 */
export function tempName(path: string): string {
  const slash = path.lastIndexOf("/");
  const mark = `${where}-${Deno.pid}-${readOr(() => startTimeOf("self"), "0")}-${
    crypto.randomUUID().slice(0, 8)
  }`;
  return `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}.cryo-${mark}.tmp`;
}

/**
 * Remove the temporary files of image writers that died in `dir`: names from {@link tempName} whose writer ran
 * on this boot in this pid namespace and no longer runs (its pid is gone, or belongs to a process started at
 * another time). Files of live writers, of other machines or containers, and anything else are left alone.
 *
 * @param dir The directory.
 * @returns The names removed.
 */
export function sweepStale(dir: string): string[] {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return removed;
  }
  for (const e of entries) {
    const m = TEMP_NAME.exec(e.name);
    if (!m || !e.isFile || m[1] !== where) continue;
    if (readOr(() => startTimeOf(Number(m[2])), "") === m[3]) continue; // its writer runs
    try {
      Deno.removeSync(`${dir}/${e.name}`);
      removed.push(e.name);
    } catch { /* gone already, or not ours to remove */ }
  }
  return removed;
}

/**
 * Give the unnamed file `fd` (from {@link openUnnamed}, written and fsynced) the name `path`, atomically: it
 * appears whole or not at all, replacing an image already there.
 *
 * @param fd The file.
 * @param path Its name.
 * @throws {SystemError} When it cannot be linked or renamed (the file stays unnamed: closing it discards it).
 */
export function linkUnnamed(fd: number, path: string): void {
  const proc = cstr(`/proc/self/fd/${fd}`);
  if (libc.linkat(AT.FDCWD, proc, AT.FDCWD, cstr(path), AT.SYMLINK_FOLLOW) === 0) return;
  const e = errno();
  if (e !== EEXIST) throw systemError("linkat", e, `the image to ${path}`);
  // An image is there already: name ours next to it, then rename it over (rename replaces atomically).
  const temp = tempName(path);
  check(
    libc.linkat(AT.FDCWD, proc, AT.FDCWD, cstr(temp), AT.SYMLINK_FOLLOW),
    "linkat",
    `the image to ${temp}`,
  );
  if (libc.rename(cstr(temp), cstr(path)) !== 0) {
    const e = errno();
    libc.unlink(cstr(temp));
    throw systemError("rename", e, `${temp} to ${path}`);
  }
}
