/**
 * Where a streamed load writes verified chunks: another process (`process_vm_writev`, `/proc/<pid>/mem` for
 * read-only pages), this process (free regions mapped first, read-only ones made writable while loading), or
 * the caller's segment buffers. Only verified bytes are ever handed to a sink.
 *
 * @module
 */

import { MAP, PROT } from "../../ffi/constants.ts";
import { errno, libc, mmap, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import type { ImageRecord, ImageRegion } from "./format.ts";
import { clearRange, protOf } from "./lazy.ts";
import { RemoteWriter } from "./remote.ts";
import { type LoadTarget, type RegionPlan, segmentBytes } from "./targets.ts";

/** Writes verified chunks and zeroes holes in a load target. */
export interface ChunkSink {
  /** Write `bytes` (decoded, verified) at offset `off` of record `r`. */
  write(r: ImageRecord, off: number, bytes: Uint8Array): void;
  /**
   * Make the hole `[address, address + length)` of `segment` (0: absolute) read as it did at the checkpoint;
   * holes come in address order. Numbers, not a record: a load may zero hundreds of thousands.
   */
  zero(address: number, length: number, segment: number): void;
  /** Restore protections and release resources. Idempotent. */
  close(): void;
}

/**
 * A sink for `target`, prepared from the layout check's plan (regions to map or unlock).
 *
 * @param target The destination.
 * @param plan What covers each absolute image region in the target.
 * @param regions The image's region table (to find segment names).
 * @returns The sink.
 */
export function openSink(
  target: LoadTarget,
  plan: readonly RegionPlan[],
  regions: readonly ImageRegion[],
): ChunkSink {
  const segments = (r: ImageRecord): Uint8Array | undefined => {
    const g = regions[r.segment - 1];
    const b = g ? target.segments[g.path] : undefined;
    return b === undefined ? undefined : segmentBytes(b);
  };
  const segmentWrite = (r: ImageRecord, off: number, bytes: Uint8Array) => {
    segments(r)?.set(bytes, Number(r.address) + off);
  };
  const segmentZero = (address: number, length: number, segment: number) => {
    const g = regions[segment - 1];
    const b = g ? target.segments[g.path] : undefined;
    if (b !== undefined) segmentBytes(b).fill(0, address, address + length);
  };
  if (target.kind === "segments") {
    return { write: segmentWrite, zero: segmentZero, close() {} };
  }
  if (target.kind === "pid") {
    const remote = new RemoteWriter(target.pid, target.journal);
    // Holes come in address order: one pagemap scan per region (as the file loader does), not one per hole.
    let zero: ((address: number, length: number) => void) | undefined;
    return {
      write(r, off, bytes) {
        if (r.segment === 0) remote.write(off ? r.address + BigInt(off) : r.address, bytes);
      },
      zero(address, length, segment) {
        if (segment === 0) (zero ??= remote.holeZeroerAt(regions))(address, length);
      },
      close: () => remote.close(),
    };
  }
  const fresh = plan.filter((p) => p.existing.length === 0);
  const locked = plan.filter((p) => p.existing.length > 0 && !p.region.perms.write);
  const touched: RegionPlan[] = [];
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const p of touched) {
      libc.mprotect(ptrOf(p.region.start), p.region.end - p.region.start, protOf(p.region.perms));
    }
  };
  try {
    for (const p of fresh) {
      mmap(
        p.region.start,
        p.region.end - p.region.start,
        PROT.READ | PROT.WRITE,
        MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE,
      );
      touched.push(p);
    }
    for (const p of locked) {
      const len = p.region.end - p.region.start;
      if (libc.mprotect(ptrOf(p.region.start), len, protOf(p.region.perms) | PROT.WRITE) !== 0) {
        throw systemError("mprotect", errno(), `${len} bytes at ${hex(p.region.start)}`);
      }
      touched.push(p);
    }
  } catch (e) {
    close();
    throw e;
  }
  return {
    write(r, off, bytes) {
      if (r.segment !== 0) return segmentWrite(r, off, bytes);
      if (bytes.length === 0) return;
      libc.memcpy(ptrOf(r.address + BigInt(off)), Deno.UnsafePointer.of(bytes), BigInt(bytes.length));
    },
    zero(address, length, segment) {
      if (segment !== 0) return segmentZero(address, length, segment);
      const a = BigInt(address);
      const p = plan.find((x) => x.region.start <= a && a < x.region.end);
      if (p && p.existing.length > 0) clearRange(a, length, p.existing);
    },
    close,
  };
}
