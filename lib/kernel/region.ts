/**
 * A region (a VMA) and the address comparator everything sorts with. Addresses are `bigint`: a 64-bit address
 * does not fit a double. Comparators return a sign, never a difference.
 *
 * @module
 */

/** Every region kind, in the order the image's region table numbers them. */
export const REGION_KINDS = [
  "anonymous",
  "heap",
  "stack",
  "file",
  "deleted",
  "named",
  "vdso",
  "vvar",
  "vsyscall",
  "special",
] as const;

/** What a region is, from its path in `/proc/<pid>/maps`. */
export type RegionKind = typeof REGION_KINDS[number];

/** Protection and sharing of a region, as the `rwxp`/`rwxs` column of maps says. */
export interface Perms {
  /** Readable. */
  read: boolean;
  /** Writable. */
  write: boolean;
  /** Executable. */
  exec: boolean;
  /** Shared (`s`) rather than private (`p`). */
  shared: boolean;
}

/** One line of `/proc/<pid>/maps`: `[start, end)`, page aligned. */
export interface Region {
  /** First address. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
  /** Protection and sharing. */
  perms: Perms;
  /** Offset into the mapped file (0 for anonymous). */
  offset: bigint;
  /** Device, `major:minor` in hex as maps prints it. */
  device: string;
  /** Inode of the mapped file (0 for anonymous). */
  inode: bigint;
  /** Path or pseudo-path (`[heap]`, `[stack]`, `[anon:name]`), without a ` (deleted)` suffix; `""` if none. */
  path: string;
  /** What the region is. */
  kind: RegionKind;
}

/**
 * Compare two addresses: -1, 0 or 1. Never `a - b`: a difference of two 64-bit addresses loses bits as a
 * number.
 */
export function compareAddress(a: bigint, b: bigint): -1 | 0 | 1 {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The `rwxp` string of a region's perms, as maps prints it. */
export function permsString(p: Perms): string {
  return `${p.read ? "r" : "-"}${p.write ? "w" : "-"}${p.exec ? "x" : "-"}${p.shared ? "s" : "p"}`;
}

/** Parse an `rwxp` string. */
export function parsePerms(s: string): Perms {
  return { read: s[0] === "r", write: s[1] === "w", exec: s[2] === "x", shared: s[3] === "s" };
}
