/**
 * A process's or an image's address space as plain data, for `cryo map` to draw: every region with what the
 * policy decided for it (persisted, or why not), and inside each persisted region its runs of data, all-zero
 * pages and holes; for two images, the pages that differ ({@link diff}).
 *
 * @module
 */

import { PAGE_SIZE } from "../../ffi/libc.ts";
import { procPath, readProcText } from "../kernel/procfs.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import { findZeroPages } from "../kernel/zero.ts";
import { classify, type PolicyOptions } from "../kernel/policy.ts";
import { permsString, type Region } from "../kernel/region.ts";
import { decodeLayout } from "../kernel/layout_section.ts";
import { transferRemote } from "../image/sources.ts";
import { KIND } from "../image/format.ts";
import { MemoryLoader } from "../image/loader.ts";
import { ImageChain, isIncremental } from "../image/chain.ts";
import type { Codec } from "../codecs/codec.ts";
import { regionDecisions } from "./checkpoint.ts";
import { diff, type DiffResult } from "./diff.ts";
import type { Progress } from "./progress.ts";

/** What a run of pages holds: data, pages that are there but all zero, or a hole (never populated). */
export type MapRunKind = "data" | "zero" | "hole";

/** A run of pages of one kind. */
export interface MapRun {
  /** First address. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
  /** What it holds. */
  kind: MapRunKind;
}

/** One region of a {@link MemoryMap}. */
export interface MapRegion {
  /** First address. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
  /** `rwxp` as maps prints it. */
  perms: string;
  /** The region's kind (anonymous, heap, stack, file, vdso, ...). */
  kind: string;
  /** Path or pseudo-path; `""` when unknown (a region an image records only in its layout). */
  path: string;
  /** Whether a checkpoint persists it (for an image: whether the image holds it). */
  persisted: boolean;
  /** Why, in the policy's words (lib/kernel/policy.ts). */
  reason: string;
  /** For a persisted region, its runs in address order, covering it; empty otherwise. */
  runs: MapRun[];
  /** Bytes of data runs. */
  dataBytes: number;
  /** Bytes of all-zero pages (a process only: an image records them as holes). */
  zeroBytes: number;
  /** Bytes of holes. */
  holeBytes: number;
}

/** A picture's data: where it comes from, its regions, and for two images what differs. */
export interface MemoryMap {
  /** A live process, or an image. */
  source: {
    /** `process` or `image`. */
    kind: "process" | "image";
    /** The process (or the one the image was taken of). */
    pid: number;
    /** The image's path, for an image. */
    path?: string;
    /** The command line. */
    commandLine: string[];
    /** When the map was read or the image was written (ISO 8601). */
    time: string;
    /**
     * An encrypted image: its sections need the key, so the regions it left out (its `layout` section) are
     * not shown.
     */
    encrypted?: boolean;
  };
  /** The page size. */
  pageSize: number;
  /** Every region, in address order. */
  regions: MapRegion[];
  /** Sums over the regions. */
  totals: {
    mappedBytes: number;
    persistedBytes: number;
    dataBytes: number;
    zeroBytes: number;
    holeBytes: number;
  };
  /** With a second image: the pages of {@link source} that differ from the first image (`a` is the other). */
  diff?: DiffResult;
}

function totalsOf(regions: readonly MapRegion[]): MemoryMap["totals"] {
  const t = { mappedBytes: 0, persistedBytes: 0, dataBytes: 0, zeroBytes: 0, holeBytes: 0 };
  for (const g of regions) {
    const size = Number(g.end - g.start);
    t.mappedBytes += size;
    if (g.persisted) t.persistedBytes += size;
    t.dataBytes += g.dataBytes;
    t.zeroBytes += g.zeroBytes;
    t.holeBytes += g.holeBytes;
  }
  return t;
}

/** Append a run, merging it with the last one when they touch and are of one kind. */
function push(runs: MapRun[], start: bigint, end: bigint, kind: MapRunKind): void {
  if (end <= start) return;
  const last = runs[runs.length - 1];
  if (last && last.end === start && last.kind === kind) last.end = end;
  else runs.push({ start, end, kind });
}

function sums(g: MapRegion): MapRegion {
  for (const r of g.runs) {
    const n = Number(r.end - r.start);
    if (r.kind === "data") g.dataBytes += n;
    else if (r.kind === "zero") g.zeroBytes += n;
    else g.holeBytes += n;
  }
  return g;
}

/** Bytes read from the target at once to find its all-zero pages. */
const ZERO_SCAN = 4 << 20;

/**
 * The address space of live process `pid`: every region with the policy's decision, and in each persisted
 * region the pages a checkpoint would store (data), the populated pages that are all zero, and the holes.
 * The process is not frozen: its pages are read as it runs, so the picture is of a moment, not exact.
 *
 * @param pid The process.
 * @param opts The checkpoint's filters (`include`, `exclude`, `shared`).
 * @returns The map.
 * @throws {SystemError} When the process cannot be read (ESRCH, EPERM).
 */
export function mapProcess(pid: number, opts: PolicyOptions = {}): MemoryMap {
  const decisions = regionDecisions(pid, opts);
  const buffer = new Uint8Array(ZERO_SCAN);
  const local = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buffer)));
  const zeros = new Uint8Array(ZERO_SCAN / PAGE_SIZE);
  const page = BigInt(PAGE_SIZE);
  using pm = Pagemap.open(pid);
  const regions = decisions.map((d): MapRegion => {
    const g = d.region;
    const out: MapRegion = {
      start: g.start,
      end: g.end,
      perms: permsString(g.perms),
      kind: g.kind,
      path: g.path,
      persisted: d.persist,
      reason: d.reason,
      runs: [],
      dataBytes: 0,
      zeroBytes: 0,
      holeBytes: 0,
    };
    if (!d.persist) return out;
    const pairs = pm.runs(g.start, g.end, { anonOnly: d.pages === "anon" });
    let at = g.start;
    for (let i = 0; i < pairs.length; i += 2) {
      push(out.runs, at, pairs[i], "hole");
      for (let s = pairs[i]; s < pairs[i + 1];) {
        const len = Math.min(ZERO_SCAN, Number(pairs[i + 1] - s));
        try {
          transferRemote("process_vm_readv", pid, local, s, len);
        } catch {
          push(out.runs, s, s + BigInt(len), "data"); // unreadable now (unmapped meanwhile): as the pagemap said
          s += BigInt(len);
          continue;
        }
        const flags = findZeroPages(local, len, PAGE_SIZE, zeros);
        for (let p = 0; p < len / PAGE_SIZE; p++) {
          const a = s + BigInt(p) * page;
          push(out.runs, a, a + page, flags[p] ? "zero" : "data");
        }
        s += BigInt(len);
      }
      at = pairs[i + 1];
    }
    push(out.runs, at, g.end, "hole");
    return sums(out);
  });
  let commandLine: string[] = [];
  try {
    commandLine = readProcText(procPath(pid, "cmdline")).split("\0").filter((x) => x);
  } catch { /* exited meanwhile: the regions were read */ }
  return {
    source: { kind: "process", pid, commandLine, time: new Date().toISOString() },
    pageSize: PAGE_SIZE,
    regions,
    totals: totalsOf(regions),
  };
}

/** Compare two bigints: -1, 0 or 1. */
const order = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The address space an image records: the regions it holds (persisted, with their data and holes), and the
 * regions of the process it does not hold (from its `layout` section), each with the reason the policy gives.
 * With `against`, also the pages that differ from that other image of the process.
 *
 * @param path The image.
 * @param opts `codecs` for compressed records; `against`: an earlier image to compare with; `progress` for
 *   the comparison.
 * @returns The map.
 * @throws {ImageError} When the image (or `against`) is damaged.
 */
export async function mapImage(
  path: string,
  opts: { codecs?: readonly Codec[]; against?: string; progress?: Progress } = {},
): Promise<MemoryMap> {
  using loader = await MemoryLoader.open(path, { codecs: opts.codecs });
  const held = loader.regions.filter((g) => !g.relocatable);
  // The policy's words for why each was persisted (without the smaps facts of the moment, and filters).
  const why = classify(held).map((d) => d.persist ? d.reason : "persisted by a filter (include)");
  const regions: MapRegion[] = held.map((g, i) => ({
    start: g.start,
    end: g.end,
    perms: permsString(g.perms),
    kind: g.kind,
    path: g.path,
    persisted: true,
    reason: why[i],
    runs: [],
    dataBytes: 0,
    zeroBytes: 0,
    holeBytes: 0,
  }));
  // Records and regions are both in address order: a cursor, over the records walked a frame at a time. An
  // incremental image's bytes are its chain's (the ones it leaves to its parent are its parent's,
  // docs/FORMAT.md): its chain gives the records.
  using chain = isIncremental(loader)
    ? await ImageChain.open(path, { codecs: opts.codecs, verify: false })
    : undefined;
  const records: Iterable<{ address: bigint; length: number; kind: number }> = chain
    ? chain.records()
    : loader.index.segment(0);
  // Each region's runs are made in one pass, the bytes no record covers as holes (nothing was there): a second
  // pass over runs made first held both arrays at once (two objects per record).
  const ats = regions.map((g) => g.start); // where each region's runs end so far
  let k = 0;
  for (const r of records) {
    while (k < regions.length && regions[k].end <= r.address) k++;
    const g = regions[k];
    if (!g || r.address < g.start) continue;
    const end = r.address + BigInt(r.length);
    push(g.runs, ats[k], r.address, "hole");
    push(g.runs, r.address, end, r.kind === KIND.DATA ? "data" : "hole");
    ats[k] = end;
  }
  for (const [i, g] of regions.entries()) {
    push(g.runs, ats[i], g.end, "hole");
    sums(g);
  }
  // The regions not held: the layout section records every region of the process at the checkpoint.
  const layoutBytes = loader.encrypted ? undefined : loader.section("layout");
  if (layoutBytes) {
    const recorded = decodeLayout(layoutBytes, path);
    const missing = recorded.filter((r) => !held.some((g) => g.start < r.end && r.start < g.end));
    const asRegions: Region[] = missing.map((r) => ({
      ...r,
      offset: 0n,
      device: "00:00",
      inode: 0n,
      path: r.kind === "vdso"
        ? "[vdso]"
        : r.kind === "vvar"
        ? "[vvar]"
        : r.kind === "vsyscall"
        ? "[vsyscall]"
        : "",
    }));
    for (const d of classify(asRegions)) {
      regions.push({
        start: d.region.start,
        end: d.region.end,
        perms: permsString(d.region.perms),
        kind: d.region.kind,
        path: d.region.path,
        persisted: false,
        // Without the smaps facts of the moment, the policy may say it would persist one that was left out:
        // a filter, or a private file mapping with no private pages then.
        reason: !d.persist
          ? d.reason
          : d.region.kind === "file" && !d.region.perms.shared
          ? "private file mapping with no private dirty pages (at the checkpoint), or excluded by a filter"
          : "excluded by a filter at the checkpoint",
        runs: [],
        dataBytes: 0,
        zeroBytes: 0,
        holeBytes: 0,
      });
    }
    regions.sort((a, b) => order(a.start, b.start));
  }
  const result: MemoryMap = {
    source: {
      kind: "image",
      pid: loader.source.pid,
      path,
      commandLine: loader.source.commandLine,
      time: new Date(loader.source.timeMs).toISOString(),
      encrypted: loader.encrypted,
    },
    pageSize: loader.header.pageSize,
    regions,
    totals: totalsOf(regions),
  };
  if (opts.against !== undefined) {
    result.diff = await diff(opts.against, path, { codecs: opts.codecs, progress: opts.progress });
  }
  return result;
}
