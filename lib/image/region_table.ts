/**
 * The region table of an image being written, and what a store may claim of it: the regions the image covers,
 * the relocatable segments appended after them, and, per segment, runs in increasing address order without
 * overlap, inside the regions.
 *
 * @module
 */

import { hex } from "../hex.ts";
import type { Region } from "../kernel/region.ts";
import type { ImageRegion } from "./format.ts";
import { insideRegions } from "./rules.ts";
import type { MemorySource } from "./sources.ts";

/** The region table of one image being written, and where each segment's stores have reached. */
export class RegionTable {
  readonly #segments: readonly MemorySource[];
  #regions: ImageRegion[] | undefined;
  #lastEnd = new Map<number, bigint>();

  /**
   * Make the table of an image with these relocatable segments.
   *
   * @param segments Sources from `segmentSource()`.
   */
  constructor(segments: readonly MemorySource[]) {
    for (const s of segments) {
      if (s.kind !== "segment") throw new TypeError("Cannot use a non-segment source in `segments`");
    }
    this.#segments = segments;
  }

  /** The table, once set. */
  get regions(): ImageRegion[] | undefined {
    return this.#regions;
  }

  /**
   * Set the table: these regions, then the relocatable segments.
   *
   * @param regions The regions the image covers.
   */
  set(regions: readonly Region[]): void {
    const abs = regions.map((r) => ({ ...r, perms: { ...r.perms }, relocatable: false }));
    const segs = this.#segments.map((s) => ({
      start: 0n,
      end: BigInt(s.length!),
      perms: { read: true, write: true, exec: false, shared: false },
      offset: 0n,
      device: "00:00",
      inode: 0n,
      path: s.name!,
      kind: "named" as const,
      relocatable: true,
    }));
    this.#regions = [...abs, ...segs];
  }

  /**
   * Check that `[addr, addr + n)` of `source` may be stored next, and claim it.
   *
   * @param addr First address (offset, for a segment).
   * @param n Bytes.
   * @param source Where it is read (a declared segment, or another memory source), if anywhere.
   * @param what The operation, for errors.
   * @returns The segment it belongs to (0 for absolute addresses).
   */
  claim(addr: bigint, n: number, source: MemorySource | undefined, what: string): number {
    if (!this.#regions) {
      throw new TypeError(`Cannot ${what}: no region table (pass \`regions\` or call setRegions())`);
    }
    const segment = source ? this.#segmentOf(source) : 0;
    if (typeof addr !== "bigint") throw new TypeError(`Cannot ${what}: address must be a bigint`);
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`Cannot ${what} ${n} bytes at ${hex(addr)}`);
    const end = addr + BigInt(n);
    if (addr < 0n || end > 1n << 64n) throw new RangeError(`Cannot ${what} at ${hex(addr)}: outside 64 bits`);
    const last = this.#lastEnd.get(segment);
    if (last !== undefined && addr < last) {
      throw new RangeError(
        `Cannot ${what} at ${hex(addr)}: out of order or overlapping (previous ends at ${hex(last)})`,
      );
    }
    if (segment === 0 && !insideRegions(this.#regions, addr, end)) {
      throw new RangeError(`Cannot ${what} ${hex(addr)}-${hex(end)}: not inside the image's regions`);
    }
    this.#lastEnd.set(segment, end);
    return segment;
  }

  #segmentOf(source: MemorySource): number {
    if (source.kind !== "segment") return 0;
    const i = this.#segments.indexOf(source);
    if (i < 0) throw new TypeError(`Cannot store segment "${source.name}": not declared in \`segments\``);
    return (this.#regions?.length ?? 0) - this.#segments.length + i + 1;
  }
}
