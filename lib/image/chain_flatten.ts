/**
 * How a chain's records are written as one full image (lib/image/chain.ts `flattenChain`): raw data records are
 * read in place from each image's mapping and stored a batch at a time, with the holes between them, by one
 * `MemoryPersister.storeRuns()` call; a compressed record is decoded and stored alone. A chain over a full image
 * of 524,288 records was stored with a `store()` or `storeGap()` call per record, each claiming its range and
 * copying its bytes for the frame on its own: V8's heap grew with that per-record work.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { hex } from "../hex.ts";
import type { ChainRecord } from "./chain_records.ts";
import { KIND } from "./format.ts";
import type { MemoryLoader } from "./loader.ts";
import type { MemoryPersister } from "./persister.ts";
import type { MemorySource } from "./sources.ts";

/**
 * Bytes of an image read through its mapping by a {@link ChainSource} between two releases of its pages:
 * without them a flatten kept every page it read in its RSS (1.45 GiB for a chain over a 1 GiB image).
 */
const RELEASE_EVERY = 16 << 20;

/** Data records stored by one `storeRuns()` call, at most. */
const BATCH_RUNS = 1024;

/** Bytes of data stored by one `storeRuns()` call, at most (the persister copies them for the frame). */
const BATCH_BYTES = 4 << 20;

/**
 * The chain's bytes as a memory source. It reads from the records `prepare()` was given since the last
 * `clear()`, in address order (so that it holds no index of the chain); `read()` is synchronous, so a compressed
 * record is decoded by `prepare()`, and only the one prepared last can be read.
 */
export interface ChainSource extends MemorySource {
  /**
   * Let reads come from `c` (a data record) until the next {@link clear}, and decode its record if it is
   * compressed (raw ones are read in place).
   *
   * @param c The chain record about to be stored.
   */
  prepare(c: ChainRecord): Promise<void>;
  /** Forget the records prepared: they are stored. */
  clear(): void;
}

/**
 * A memory source over a chain's images (lib/image/chain.ts `ImageChain.source`).
 *
 * @param images The chain's images, tip first.
 * @returns The source; valid while the images are open.
 */
export function chainSource(images: readonly MemoryLoader[]): ChainSource {
  const bounce = new Uint8Array(16 << 20);
  const bounceAt = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bounce)));
  let prepared: ChainRecord[] = [];
  let k = 0; // where the last read was found: reads come in address order
  const read = images.map(() => 0); // bytes read through each image's mapping since its pages were released
  // The record decoded last, by image and file offset (records are made afresh each time the index is walked).
  let cached: { image: number; fileOffset: number; bytes: Uint8Array } | undefined;
  const isCached = (c: ChainRecord) => cached?.image === c.image && cached.fileOffset === c.record.fileOffset;
  const find = (addr: bigint, len: number) => {
    if (k >= prepared.length || prepared[k].address > addr) k = 0;
    while (k < prepared.length && prepared[k].address + BigInt(prepared[k].length) <= addr) k++;
    const c = prepared[k];
    if (c && addr >= c.address && addr + BigInt(len) <= c.address + BigInt(c.length)) return c;
    throw new RangeError(
      `Cannot read ${len} bytes at ${hex(addr)} of the chain: not inside one data record prepared`,
    );
  };
  return {
    kind: "image",
    pid: images[0].source.pid,
    detectZeros: false,
    window: bounce.length,
    direct(addr, len) {
      const c = find(addr, len);
      if (c.record.codec !== 0) return null;
      return images[c.image].storedAddress(c.record) + (addr - c.record.address);
    },
    read(addr, len) {
      const c = find(addr, len);
      if (!isCached(c)) throw new CryoError(`Cannot read ${hex(addr)}: decode its record first`);
      const off = Number(addr - c.record.address);
      bounce.set(cached!.bytes.subarray(off, off + len));
      return bounceAt;
    },
    async prepare(c) {
      prepared.push(c);
      if ((read[c.image] += c.length) >= RELEASE_EVERY) {
        images[c.image].releaseView(); // views handed out stay valid: a write behind reads them again
        read[c.image] = 0;
      }
      if (c.record.codec !== 0 && !isCached(c)) {
        const bytes = await images[c.image].readRecord(c.record);
        cached = { image: c.image, fileOffset: c.record.fileOffset, bytes };
      }
    },
    clear() {
      prepared = [];
      k = 0;
    },
  };
}

/**
 * Store a chain's records with `persister`, which reads them from `source`: each stretch of touching records
 * (up to {@link BATCH_RUNS} raw data records, {@link BATCH_BYTES} of their data) as runs with the holes between
 * them; a compressed data record alone.
 *
 * @param records The chain's records, in address order (lib/image/chain_records.ts).
 * @param source The chain's source ({@link chainSource}), the persister's.
 * @param persister The image being written.
 */
export async function storeChain(
  records: Iterable<ChainRecord>,
  source: ChainSource,
  persister: MemoryPersister,
): Promise<void> {
  const runs = new BigUint64Array(2 * BATCH_RUNS);
  let n = 0, bytes = 0, start: bigint | undefined, end = 0n;
  const flush = async () => {
    if (start === undefined) return;
    if (n) await persister.storeRuns(runs.subarray(0, 2 * n), { start, end });
    else await persister.storeGap(start, Number(end - start));
    source.clear();
    [n, bytes, start] = [0, 0, undefined];
  };
  for (const c of records) {
    const data = c.kind === KIND.DATA;
    // A stretch ends where the records do not touch (between the tip's regions), and before a compressed record.
    if (start !== undefined && (c.address !== end || (data && c.record.codec !== 0))) await flush();
    if (data && c.record.codec !== 0) {
      await source.prepare(c);
      await persister.store(c.address, c.length);
      source.clear();
      continue;
    }
    start ??= c.address;
    end = c.address + BigInt(c.length);
    if (!data) continue;
    await source.prepare(c);
    runs[2 * n] = c.address;
    runs[2 * n + 1] = end;
    n++;
    bytes += c.length;
    if (n === BATCH_RUNS || bytes >= BATCH_BYTES) await flush();
  }
  await flush();
}
