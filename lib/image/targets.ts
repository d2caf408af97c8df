/**
 * Load targets (where a {@link MemoryLoader} writes) and the destination check: every region the image needs
 * must exist in the target with the same protection covering its extent, or be free (when the target may map
 * it), and every segment needs a buffer of the same length. Differences are listed, never guessed.
 *
 * @module
 */

import { hex } from "../hex.ts";
import { readRegions } from "../kernel/maps.ts";
import { permsString, type Region } from "../kernel/region.ts";
import type { ImageRecord, ImageRegion } from "./format.ts";
import type { RestoreJournal } from "../kernel/journal.ts";

/** Bytes a segment can be loaded into. */
export type SegmentBuffer = ArrayBuffer | SharedArrayBuffer | ArrayBufferView;

/** Where a load writes. Make one with {@link selfTarget}, {@link pidTarget} or {@link segmentTarget}. */
export interface LoadTarget {
  /** This process, another process, or only relocatable segments. */
  readonly kind: "self" | "pid" | "segments";
  /** The process written (this one for self and segments). */
  readonly pid: number;
  /** Map regions that are free in the target (self only; MAP_FIXED_NOREPLACE). */
  readonly map: boolean;
  /** Map raw runs straight from the image instead of copying them (self only). */
  readonly lazy: boolean;
  /** Buffers for the image's relocatable segments, by name. */
  readonly segments: Readonly<Record<string, SegmentBuffer>>;
  /** Another process only: where every byte is saved before it is overwritten (a restore's undo record). */
  readonly journal?: RestoreJournal;
  /** Another process only: bytes written at once (of a mapped image: its pages are released once written). */
  readonly window?: number;
}

/**
 * This process at the original addresses.
 *
 * @param opts `map` (default true): map regions that are free with MAP_FIXED_NOREPLACE; `lazy` (default
 *   false): map raw runs from the image (copy-on-write) instead of copying; `segments`: buffers for segments.
 * @returns The target.
 */
export function selfTarget(
  opts: { map?: boolean; lazy?: boolean; segments?: Record<string, SegmentBuffer> } = {},
): LoadTarget {
  return {
    kind: "self",
    pid: Deno.pid,
    map: opts.map ?? true,
    lazy: opts.lazy ?? false,
    segments: opts.segments ?? {},
  };
}

/**
 * Another process (it should be frozen): `process_vm_writev` in batches, `/proc/<pid>/mem` for pages it
 * cannot write (read-only ones). Its regions must already exist.
 *
 * @param pid The process.
 * @param opts `journal`: save every byte before it is overwritten, so that the load can be undone; `window`:
 *   bytes written at once (default 8 MiB; the memory budget's window, lib/image/budget.ts).
 * @returns The target.
 */
export function pidTarget(pid: number, opts: { journal?: RestoreJournal; window?: number } = {}): LoadTarget {
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new RangeError(`Cannot load into pid ${pid}: not a process id`);
  }
  return {
    kind: "pid",
    pid,
    map: false,
    lazy: false,
    segments: {},
    journal: opts.journal,
    window: opts.window,
  };
}

/**
 * Only the image's relocatable segments, each into a caller buffer of the segment's length.
 *
 * @param segments Buffers by segment name.
 * @returns The target.
 */
export function segmentTarget(segments: Record<string, SegmentBuffer>): LoadTarget {
  return { kind: "segments", pid: Deno.pid, map: false, lazy: false, segments };
}

/** The bytes of a segment buffer. */
export function segmentBytes(b: SegmentBuffer): Uint8Array {
  return ArrayBuffer.isView(b) ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : new Uint8Array(b);
}

/** A target's name for messages, e.g. `pid 42`. */
export function targetName(t: LoadTarget): string {
  return t.kind === "pid"
    ? `pid ${t.pid}`
    : t.kind === "self"
    ? `this process (pid ${t.pid})`
    : "segment buffers";
}

/** How one image region relates to the target. */
export interface RegionPlan {
  /** The image region. */
  region: ImageRegion;
  /** The target regions covering it (empty when it is free). */
  existing: Region[];
}

/**
 * Compare the image's regions with the target's. Returns the differences (empty when the target matches) and,
 * for each absolute region, what covers it in the target.
 *
 * @param regions The image's region table.
 * @param records The index, or its frames (segments without records need no buffer).
 * @param target The target.
 * @param current The target's regions (read from its maps when omitted).
 * @returns The differences and the plan.
 */
export function compareTarget(
  regions: readonly ImageRegion[],
  records: Iterable<Pick<ImageRecord, "segment">>,
  target: LoadTarget,
  current?: readonly Region[],
): { differences: string[]; plan: RegionPlan[] } {
  const differences: string[] = [];
  const plan: RegionPlan[] = [];
  const used = new Set<number>();
  for (const r of records) used.add(r.segment);
  regions.forEach((g, i) => {
    if (!g.relocatable) return;
    const want = target.segments[g.path];
    if (want === undefined) {
      const wanted = target.kind === "segments" || Object.keys(target.segments).length > 0;
      if (wanted && used.has(i + 1)) differences.push(`segment "${g.path}": no buffer given`);
      return;
    }
    const len = segmentBytes(want).length;
    if (BigInt(len) !== g.end) {
      differences.push(`segment "${g.path}": ${g.end} bytes in the image, buffer has ${len}`);
    }
  });
  if (target.kind === "segments") return { differences, plan };
  const maps = current ?? readRegions(target.kind === "self" ? "self" : target.pid);
  for (const g of regions) {
    if (g.relocatable) continue;
    const range = `${hex(g.start)}-${hex(g.end)} ${permsString(g.perms)}`;
    const over = maps.filter((m) => m.start < g.end && m.end > g.start);
    if (over.length === 0) {
      if (!target.map) differences.push(`${range}: missing in target`);
      plan.push({ region: g, existing: [] });
      continue;
    }
    let at = g.start;
    for (const m of [...over].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))) {
      if (m.start > at) break;
      at = m.end;
    }
    if (at < g.end) {
      differences.push(`${range}: only partly mapped in target`);
    }
    for (const m of over) {
      if (permsString(m.perms) !== permsString(g.perms)) {
        differences.push(`${range}: target has ${hex(m.start)}-${hex(m.end)} ${permsString(m.perms)}`);
      }
    }
    plan.push({ region: g, existing: over });
  }
  return { differences, plan };
}
