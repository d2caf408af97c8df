/**
 * The persistability policy: which regions a checkpoint persists, with a reason for every decision (like the
 * kernel's core-dump filter, but stating why).
 *
 * By default it persists private anonymous memory (anonymous, heap, stacks, named `[anon:…]`) and the private
 * dirty pages of private file mappings. It never persists the kernel's own mappings (vdso, vvar, vsyscall, other
 * `[…]` pseudo-mappings), PROT_NONE reservations (a Deno process reserves a 16 GiB PROT_NONE cage), I/O or PFN
 * mappings (`io`, `pf`); those cannot be overridden. By default it also skips `MADV_DONTDUMP` regions (`dd`),
 * shared mappings (unless `shared: true`), unreadable regions, and (with smaps facts) private file mappings with
 * no private dirty pages; `include` filters override these. `exclude` filters win over everything but never-rules.
 *
 * @module
 */

import { permsString, type Region, type RegionKind } from "./region.ts";
import { hex } from "../hex.ts";

/** Selects regions: a region matches when it matches every criterion given (`{}` matches every region). */
export interface RegionFilter {
  /** Regions overlapping `[start, end)`. */
  range?: { start: bigint; end: bigint };
  /** Regions of this kind, or of one of these kinds. */
  kind?: RegionKind | readonly RegionKind[];
  /**
   * Regions whose path matches: a RegExp (tested against the whole path), or a glob (`*`, `?`, `**`); a glob
   * without `/` is matched against the last path component, e.g. `"libc.so*"` or `"[anon:*]"`.
   */
  path?: RegExp | string;
}

/** Options of {@link classify}. */
export interface PolicyOptions {
  /** Persist shared mappings too (their pages, which other processes also see). Default false. */
  shared?: boolean;
  /** Persist the regions these select, overriding the default skips (not the never-rules). */
  include?: readonly RegionFilter[];
  /** Never persist the regions these select. Wins over `include`. */
  exclude?: readonly RegionFilter[];
}

/**
 * What the policy decided for one region.
 *
 * `pages` says which pages of a persisted region hold its data: `"all"` (every present or swapped page) or
 * `"anon"` (only private anonymous pages: for a private file mapping, its copied-on-write pages; the rest is the
 * file's). Pass `anonOnly: pages === "anon"` to `scanPages`.
 */
export interface Decision<R extends Region = Region> {
  /** The region. */
  region: R;
  /** Whether to persist it. */
  persist: boolean;
  /** Why, e.g. `"PROT_NONE reservation: no data"`. */
  reason: string;
  /** Which of its pages hold its data. */
  pages: "all" | "anon";
}

/**
 * Turn a glob into an anchored RegExp: `**` matches anything, `*` anything but `/`, `?` one character but `/`;
 * everything else (including `[` and `]`) is literal.
 *
 * @param glob The glob, e.g. `"/usr/lib/**\/*.so*"`.
 * @returns The RegExp.
 */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      re += ".*";
      i++;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\\/-]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

interface CompiledFilter {
  text: string;
  test: (r: Region) => boolean;
}

function compile(f: RegionFilter, name: string): CompiledFilter {
  if (typeof f !== "object" || f === null) {
    throw new TypeError(`Cannot use ${name}: expected a filter object`);
  }
  const parts: string[] = [];
  const tests: ((r: Region) => boolean)[] = [];
  if (f.range !== undefined) {
    const { start, end } = f.range;
    if (typeof start !== "bigint" || typeof end !== "bigint" || start >= end) {
      throw new RangeError(`Cannot use ${name}.range: expected bigint start < end`);
    }
    parts.push(`range ${hex(start)}-${hex(end)}`);
    tests.push((r) => r.start < end && start < r.end);
  }
  if (f.kind !== undefined) {
    const kinds = new Set<RegionKind>(typeof f.kind === "string" ? [f.kind] : f.kind);
    parts.push(`kind ${[...kinds].join("|")}`);
    tests.push((r) => kinds.has(r.kind));
  }
  if (f.path !== undefined) {
    if (typeof f.path === "string") {
      const re = globToRegExp(f.path);
      const base = !f.path.includes("/");
      parts.push(`path ${JSON.stringify(f.path)}`);
      tests.push((r) => re.test(base ? r.path.slice(r.path.lastIndexOf("/") + 1) : r.path));
    } else if (f.path instanceof RegExp) {
      const re = new RegExp(f.path.source, f.path.flags.replace(/[gy]/g, "")); // no lastIndex state
      parts.push(`path ${re}`);
      tests.push((r) => re.test(r.path));
    } else {
      throw new TypeError(`Cannot use ${name}.path: expected a RegExp or a glob string`);
    }
  }
  return { text: `${name} (${parts.join(", ") || "any"})`, test: (r) => tests.every((t) => t(r)) };
}

function vmFlags(r: Region): readonly string[] | undefined {
  const flags = (r as { vmFlags?: unknown }).vmFlags;
  return Array.isArray(flags) ? flags : undefined;
}

/** The never-rules: a reason when the region can never be persisted. */
function never(r: Region): string | undefined {
  switch (r.kind) {
    case "vdso":
      return "[vdso]: kernel code the kernel maps into every process";
    case "vvar":
      return `${r.path}: kernel data the kernel maps into every process`;
    case "vsyscall":
      return "[vsyscall]: the kernel's legacy system call page";
    case "special":
      return `${r.path || "kernel mapping"}: a kernel pseudo-mapping`;
  }
  if (!r.perms.read && !r.perms.write && !r.perms.exec) return "PROT_NONE reservation: no data";
  const flags = vmFlags(r);
  if (flags?.includes("io")) return "memory-mapped I/O (VmFlags io)";
  if (flags?.includes("pf")) return "PFN mapping, no struct pages (VmFlags pf)";
  return undefined;
}

const isFile = (r: Region) => r.kind === "file" || r.kind === "deleted";

/** The default rule: persist (with which pages) or skip, and why. */
function byDefault(r: Region, shared: boolean): Omit<Decision, "region"> {
  if (r.perms.shared) {
    return shared
      ? { persist: true, pages: "all", reason: "shared mapping (shared: true)" }
      : { persist: false, pages: "all", reason: "shared mapping (pass shared: true to persist it)" };
  }
  const flags = vmFlags(r);
  const pages = isFile(r) ? "anon" : "all";
  if (flags?.includes("dd")) return { persist: false, pages, reason: "MADV_DONTDUMP (VmFlags dd)" };
  if (!r.perms.read) return { persist: false, pages, reason: `not readable (${permsString(r.perms)})` };
  if (isFile(r)) {
    const s = r as { anonymous?: number; swap?: number };
    if (flags && s.anonymous === 0 && s.swap === 0) {
      return { persist: false, pages, reason: "private file mapping with no private dirty pages" };
    }
    return { persist: true, pages, reason: "private file mapping: its private dirty pages" };
  }
  const what = r.kind === "named" ? `named anonymous memory ${r.path}` : `private ${r.kind} memory`;
  return { persist: true, pages, reason: r.perms.write ? what : `${what} (read-only)` };
}

/**
 * Decide, for each region, whether a checkpoint persists it, and why.
 *
 * @param regions Regions (from `readRegions`; with `{ smaps: true }` the `dd`/`io`/`pf` flags and the private
 *   dirty sizes are used too).
 * @param opts `shared`, and `include`/`exclude` filters by address range, kind or path.
 * @returns One decision per region, in the same order.
 * @throws {TypeError} On a malformed filter.
 * @throws {RangeError} On a filter range whose start is not below its end.
 * @example
 * ```ts
 * import { classify } from "./policy.ts";
 * import { parseMaps } from "./maps.ts";
 * const decisions = classify(parseMaps(
 *   "164400000000-164800000000 ---p 00000000 00:00 0\n5600000000-5600021000 rw-p 00000000 00:00 0 [heap]\n",
 * ));
 * const cage = decisions.find((d) => d.region.kind === "anonymous")!;
 * const heap = decisions.find((d) => d.region.kind === "heap")!;
 * if (cage.persist || cage.reason !== "PROT_NONE reservation: no data" || !heap.persist) throw new Error();
 * ```
 */
export function classify<R extends Region>(regions: readonly R[], opts: PolicyOptions = {}): Decision<R>[] {
  const include = (opts.include ?? []).map((f, i) => compile(f, `include[${i}]`));
  const exclude = (opts.exclude ?? []).map((f, i) => compile(f, `exclude[${i}]`));
  return regions.map((region) => {
    const pages = isFile(region) && !region.perms.shared ? "anon" : "all";
    const no = never(region);
    if (no !== undefined) return { region, persist: false, reason: no, pages };
    const ex = exclude.find((f) => f.test(region));
    if (ex) return { region, persist: false, reason: `excluded by ${ex.text}`, pages };
    const inc = include.find((f) => f.test(region));
    if (inc) return { region, persist: true, reason: `included by ${inc.text}`, pages };
    return { region, ...byDefault(region, opts.shared ?? false) };
  });
}
