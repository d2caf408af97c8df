/**
 * Regions of any process: `/proc/<pid>/maps` parsed into {@link Region}s with `bigint` addresses, and, where
 * asked, the per-region facts of `/proc/<pid>/smaps` (VmFlags, Rss, Anonymous, Swap, AnonHugePages) merged in.
 *
 * The files are read with libc `open`/`read`, so a failure is a {@link SystemError} carrying errno and naming
 * the file (which names the pid): `Cannot open /proc/4242/maps: ENOENT (No such file or directory)`.
 *
 * @module
 */

import { MapsParseError } from "../errors.ts";
import { compareAddress, parsePerms, type Region, type RegionKind } from "./region.ts";
import { systemError } from "../../ffi/libc.ts";
import { procPath, readProcText } from "./procfs.ts";
import { markStacks, threadStacks } from "./stacks.ts";

/** A region with the facts `/proc/<pid>/smaps` adds. Sizes are in bytes. */
export interface SmapsRegion extends Region {
  /** The two-letter VmFlags, e.g. `["rd", "wr", "mr", "mw", "me", "ac", "dd"]`. */
  vmFlags: string[];
  /** Bytes resident in RAM. */
  rss: number;
  /** Resident bytes that are anonymous (including private copies of file pages). */
  anonymous: number;
  /** Bytes swapped out. */
  swap: number;
  /** Anonymous bytes backed by transparent huge pages. */
  anonHugePages: number;
  /** Resident private bytes that were written (anonymous or copied-on-write). */
  privateDirty: number;
  /** Resident shared bytes that were written. */
  sharedDirty: number;
  /** Page size the kernel uses for this region (4096, or a huge page size for hugetlb). */
  kernelPageSize: number;
}

/** Options of {@link readRegions}. */
export interface ReadRegionsOptions {
  /** Read `/proc/<pid>/smaps` instead of `maps` and return {@link SmapsRegion}s (slower: walks page tables). */
  smaps?: boolean;
  /**
   * Find the stacks of the process's blocked threads (from `/proc/<pid>/task/<tid>/syscall`) and mark their
   * regions kind `"stack"`; without it only the main thread's `[stack]` is one.
   */
  stacks?: boolean;
}

// start-end perms offset major:minor inode [padding path]; the kernel prints at least one space after the inode.
const LINE =
  /^([0-9a-f]{1,16})-([0-9a-f]{1,16}) (\S{4}) ([0-9a-f]{1,16}) ([0-9a-f]{1,8}):([0-9a-f]{1,8}) (\d{1,20})(?: +(.*))?$/;
const PERMS = /^[r-][w-][x-][ps]$/;
const DELETED = " (deleted)";
/** The smaps size fields cryo reads, and where they go (in bytes). */
const SIZE_FIELDS: Record<
  string,
  "rss" | "anonymous" | "swap" | "anonHugePages" | "privateDirty" | "sharedDirty" | "kernelPageSize"
> = {
  Rss: "rss",
  Anonymous: "anonymous",
  Swap: "swap",
  AnonHugePages: "anonHugePages",
  Private_Dirty: "privateDirty",
  Shared_Dirty: "sharedDirty",
  KernelPageSize: "kernelPageSize",
};

const FIELD = /^([A-Za-z_]+):\s*(.*)$/;

/**
 * The kind of a region from its maps path (already stripped of ` (deleted)`, with `deleted` saying whether it was).
 *
 * @param path The path or pseudo-path.
 * @param deleted Whether maps said ` (deleted)`.
 * @returns The kind.
 */
export function kindOf(path: string, deleted = false): RegionKind {
  if (path === "") return "anonymous";
  if (path.startsWith("/")) return deleted ? "deleted" : "file";
  if (path === "[heap]") return "heap";
  if (path === "[stack]" || path.startsWith("[stack:")) return "stack";
  if (path === "[vdso]") return "vdso";
  if (path === "[vvar]" || path === "[vvar_vclock]") return "vvar";
  if (path === "[vsyscall]") return "vsyscall";
  if (path.startsWith("[anon:") || path.startsWith("[anon_shmem:")) return "named";
  return "special";
}

/** Parse one maps header line, or return the reason it is not one. */
function parseLine(line: string): Region | string {
  const m = LINE.exec(line);
  if (!m) return "not a maps line";
  const [, s, e, perms, off, major, minor, inode, rest = ""] = m;
  if (!PERMS.test(perms)) return `bad perms ${JSON.stringify(perms)}`;
  const start = BigInt(`0x${s}`);
  const end = BigInt(`0x${e}`);
  if (start >= end) return `start ${s} is not below end ${e}`;
  const ino = BigInt(inode);
  if (ino > 0xffffffffffffffffn) return `inode ${inode} exceeds 64 bits`;
  let path = rest;
  const deleted = path.endsWith(DELETED) && path.startsWith("/");
  if (deleted) path = path.slice(0, -DELETED.length);
  return {
    start,
    end,
    perms: parsePerms(perms),
    offset: BigInt(`0x${off}`),
    device: `${major}:${minor}`,
    inode: ino,
    path,
    kind: kindOf(path, deleted),
  };
}

function sortAndCheck<R extends Region>(regions: R[], lines: number[], texts: string[], source: string): R[] {
  const order = regions.map((_, i) => i).sort((a, b) => compareAddress(regions[a].start, regions[b].start));
  for (let k = 1; k < order.length; k++) {
    const prev = regions[order[k - 1]];
    const cur = regions[order[k]];
    if (cur.start < prev.end) {
      const i = order[k];
      throw new MapsParseError(
        source,
        lines[i],
        texts[i],
        `overlaps the region ending at 0x${prev.end.toString(16)}`,
      );
    }
  }
  return order.map((i) => regions[i]);
}

/**
 * Parse the text of `/proc/<pid>/maps`.
 *
 * @param text The file's text.
 * @param source Where it came from, for errors (default `"maps"`).
 * @returns The regions, sorted by start.
 * @throws {MapsParseError} On a line that is not a maps line, or regions that overlap.
 * @example
 * ```ts
 * import { parseMaps } from "./maps.ts";
 * const [r] = parseMaps("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n");
 * if (r.kind !== "anonymous" || r.end - r.start !== 4096n) throw new Error("unexpected");
 * ```
 */
export function parseMaps(text: string, source = "maps"): Region[] {
  const regions: Region[] = [];
  const lines: number[] = [];
  const texts: string[] = [];
  const all = text.split("\n");
  if (all.at(-1) === "") all.pop();
  for (let i = 0; i < all.length; i++) {
    const r = parseLine(all[i]);
    if (typeof r === "string") throw new MapsParseError(source, i + 1, all[i], r);
    regions.push(r);
    lines.push(i + 1);
    texts.push(all[i]);
  }
  return sortAndCheck(regions, lines, texts, source);
}

function kib(value: string, source: string, line: number, text: string): number {
  const m = /^(\d+) kB$/.exec(value);
  if (!m) throw new MapsParseError(source, line, text, "expected a size in kB");
  return Number(m[1]) * 1024;
}

/**
 * Parse the text of `/proc/<pid>/smaps`: each maps header line followed by `Key: value` lines.
 *
 * @param text The file's text.
 * @param source Where it came from, for errors (default `"smaps"`).
 * @returns The regions with their smaps facts, sorted by start.
 * @throws {MapsParseError} On a malformed header or field line, or a field before the first header.
 */
export function parseSmaps(text: string, source = "smaps"): SmapsRegion[] {
  const regions: SmapsRegion[] = [];
  const lines: number[] = [];
  const texts: string[] = [];
  const all = text.split("\n");
  if (all.at(-1) === "") all.pop();
  let cur: SmapsRegion | undefined;
  for (let i = 0; i < all.length; i++) {
    const line = all[i];
    const f = FIELD.exec(line);
    if (f) {
      if (!cur) throw new MapsParseError(source, i + 1, line, "field before the first region");
      const [, key, value] = f;
      if (key === "VmFlags") cur.vmFlags = value.trim() === "" ? [] : value.trim().split(/\s+/);
      else if (key in SIZE_FIELDS) cur[SIZE_FIELDS[key]] = kib(value, source, i + 1, line);
      continue;
    }
    const r = parseLine(line);
    if (typeof r === "string") throw new MapsParseError(source, i + 1, line, r);
    cur = {
      ...r,
      vmFlags: [],
      rss: 0,
      anonymous: 0,
      swap: 0,
      anonHugePages: 0,
      privateDirty: 0,
      sharedDirty: 0,
      kernelPageSize: 4096,
    };
    regions.push(cur);
    lines.push(i + 1);
    texts.push(line);
  }
  return sortAndCheck(regions, lines, texts, source);
}

/**
 * The regions of a process, from `/proc/<pid>/maps` (or `smaps` with `{ smaps: true }`).
 *
 * @param pid A pid, or `"self"` for this process.
 * @param opts `smaps: true` to merge in the smaps facts; `stacks: true` to mark every blocked thread's stack.
 * @returns The regions, sorted by start.
 * @throws {SystemError} When the file cannot be read (ENOENT: no such pid; EACCES: not allowed), naming it.
 * @throws {SystemError} ESRCH when the file is empty (the process exited, or is a kernel thread).
 * @throws {MapsParseError} When a line does not parse.
 * @example
 * ```ts
 * import { readRegions } from "./maps.ts";
 * const regions = readRegions("self");
 * if (!regions.some((r) => r.kind === "stack")) throw new Error("no stack");
 * ```
 */
export function readRegions(pid: number | "self", opts: ReadRegionsOptions & { smaps: true }): SmapsRegion[];
/**
 * The regions of a process, from `/proc/<pid>/maps` (or `smaps` with `{ smaps: true }`).
 *
 * @param pid A pid, or `"self"` for this process.
 * @param opts `smaps: true` to merge in the smaps facts; `stacks: true` to mark every blocked thread's stack.
 * @returns The regions, sorted by start.
 */
export function readRegions(pid: number | "self", opts?: ReadRegionsOptions): Region[];
export function readRegions(pid: number | "self", opts: ReadRegionsOptions = {}): Region[] {
  const path = procPath(pid, opts.smaps ? "smaps" : "maps");
  const text = readProcText(path);
  if (text === "") {
    throw systemError(
      "read",
      3, /* ESRCH */
      `${path} (pid ${pid} has no memory map: it exited or is a kernel thread)`,
    );
  }
  const regions = opts.smaps ? parseSmaps(text, path) : parseMaps(text, path);
  return opts.stacks ? markStacks(regions, threadStacks(pid, regions)) : regions;
}
