/**
 * Helpers for the image tests: an anonymous mapping with its exact region, memory views and checksums.
 *
 * @module
 */

import { Pagemap } from "../lib/kernel/pagemap.ts";
import { MAP, PROT } from "../ffi/constants.ts";
import { mmap, munmap, PAGE_SIZE, ptrOf } from "../ffi/libc.ts";
import type { Region } from "../lib/kernel/region.ts";
import { checksum, checksumAt } from "../lib/image/checksum.ts";
import type { ImageRecord } from "../lib/image/format.ts";
import {
  decodeDirectory,
  decodeFrameHeader,
  decodeTable,
  encodeFrameHeader,
  encodeTable,
  ENTRY_LENGTH,
  layoutFrame,
} from "../lib/image/frames.ts";

/** An anonymous private rw- mapping owned by a test. */
export class Mapping implements Disposable {
  readonly addr: bigint;
  readonly len: number;
  #mapped = true;
  constructor(len: number, at = 0n) {
    this.len = len;
    this.addr = mmap(at, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  }
  /** The region exactly covering the mapping (the kernel may merge it with a neighbour in maps). */
  get region(): Region {
    return regionAt(this.addr, this.len);
  }
  /** A view of `len` bytes at `off`. */
  bytes(off = 0, len = this.len - off): Uint8Array {
    return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(this.addr + BigInt(off))!, len));
  }
  /** XXH3 of the whole mapping. */
  sum(): bigint {
    return checksumAt(this.addr, BigInt(this.len));
  }
  unmap(): void {
    if (this.#mapped) munmap(this.addr, BigInt(this.len));
    this.#mapped = false;
  }
  [Symbol.dispose](): void {
    this.unmap();
  }
}

/** An anonymous private rw- region. */
export function regionAt(start: bigint, len: number, perms = "rw-p"): Region {
  return {
    start,
    end: start + BigInt(len),
    perms: {
      read: perms[0] === "r",
      write: perms[1] === "w",
      exec: perms[2] === "x",
      shared: perms[3] === "s",
    },
    offset: 0n,
    device: "00:00",
    inode: 0n,
    path: "",
    kind: "anonymous",
  };
}

/** Fill `b` with pseudo-random bytes (seeded, fast). */
export function fillRandom(b: Uint8Array, seed = 1): void {
  const w = new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < w.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    w[i] = s;
  }
  for (let i = w.length * 4; i < b.length; i++) b[i] = i & 0xff;
}

/** Resident anonymous bytes of this process, from /proc/self/smaps_rollup. */
export function rssAnon(): number {
  const m = /^Anonymous:\s+(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/smaps_rollup"));
  return Number(m![1]) * 1024;
}

/**
 * Resident bytes of `[addr, addr + len)`, from this process's pagemap: unlike the process-wide total, other
 * tests running in this process (deno test --parallel) do not move it, and unlike smaps it does not count a
 * neighbouring mapping the kernel merged with this one.
 */
export function rssOf(addr: bigint, len: number): number {
  using pm = Pagemap.open("self");
  const runs = pm.runs(addr, addr + BigInt(len));
  let bytes = 0n;
  for (let i = 0; i < runs.length; i += 2) bytes += runs[i + 1] - runs[i];
  return Number(bytes);
}

/** A temporary directory, removed on dispose. */
export async function tempDir(): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ prefix: "cryo-image-" });
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

export { PAGE_SIZE };

/**
 * Recompute the header, index and footer checksums of an image in memory (after a test changed a field), so
 * that only the semantic change is left to detect.
 */
export function reseal(b: Uint8Array): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const f = b.length - 128;
  const headerLength = Number(v.getBigUint64(f + 16, true));
  v.setBigUint64(120, 0n, true);
  const h = checksum(b.subarray(0, headerLength));
  v.setBigUint64(120, h, true);
  v.setBigUint64(f + 24, h, true);
  const indexOffset = Number(v.getBigUint64(f + 48, true));
  const indexLength = Number(v.getBigUint64(f + 56, true));
  v.setBigUint64(f + 64, checksum(b.subarray(indexOffset, indexOffset + indexLength)), true);
  v.setBigUint64(f + 120, checksum(b.subarray(f, f + 120)), true);
}

/**
 * Rewrite frame `k` of an image in memory: `edit` may reorder or change its records (and their stored bytes),
 * keeping their total size; the table, frame header, directory entry and footer are re-encoded with good
 * checksums, so that only the semantic change is left to detect.
 */
export function rewriteFrame(
  b: Uint8Array,
  k: number,
  edit: (records: ImageRecord[], data: Uint8Array[]) => void,
): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const f = b.length - 128;
  const indexOffset = Number(v.getBigUint64(f + 48, true));
  const pageSize = v.getUint32(32, true);
  const d = decodeDirectory("t", b.subarray(indexOffset + 48 * k, indexOffset + 48 * (k + 1)), 0)[0];
  const fr = decodeFrameHeader("t", b.subarray(d.offset, d.offset + 64), d.offset);
  const tableAt = d.offset + 64;
  const records = decodeTable("t", fr, b.subarray(tableAt, tableAt + fr.count * ENTRY_LENGTH), pageSize);
  const first = records[0].fileOffset, end = first + fr.dataLength;
  const data = records.map((r) => b.slice(r.fileOffset, r.fileOffset + r.storedLength));
  edit(records, data);
  b.fill(0, first, end);
  layoutFrame(fr, records, pageSize);
  records.forEach((r, i) => b.set(data[i], r.fileOffset));
  const table = encodeTable(records);
  fr.tableChecksum = checksum(table);
  b.set(table, tableAt);
  b.set(encodeFrameHeader(fr), d.offset);
  v.setBigUint64(indexOffset + 48 * k + 32, fr.frameChecksum, true);
  reseal(b);
}
