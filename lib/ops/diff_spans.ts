/**
 * The merge-walk under `cryo diff` (lib/ops/diff.ts): two images' records (an incremental image's resolved
 * through its chain, lib/image/chain_records.ts), each walked forward a frame at a time, cut into spans at every
 * boundary of either; and each side's record data read into one reused buffer. Two images of 524,288 records
 * each were compared from arrays of pieces of every record and a set of every boundary: 2.6 GiB of RSS.
 *
 * Addresses are numbers (user addresses are below 2^47, exact in a double): no object or `bigint` is made per
 * span, and none per record beyond what the index walk makes (V8's young generation grows with what survives
 * its scavenges, so garbage per record costs RSS: docs/BENCHMARKING.md).
 *
 * @module
 */

import { addrOf, PAGE_SIZE } from "../../ffi/libc.ts";
import { ImageError } from "../errors.ts";
import { checksum } from "../image/checksum.ts";
import type { ChainRecord } from "../image/chain_records.ts";
import type { ImageRecord } from "../image/format.ts";
import type { MemoryLoader } from "../image/loader.ts";

/**
 * Bytes of compressed records decoded through an image's mapping between two releases of its pages: without
 * them the pages read stay in this process's RSS.
 */
const RELEASE_EVERY = 16 << 20;

/** One image's records of absolute addresses (an incremental image's: its chain's), walked forward. */
export class Side {
  readonly #own?: Iterator<ImageRecord>;
  readonly #chain?: Iterator<ChainRecord>;
  readonly #images: readonly MemoryLoader[];
  /** The record of the first piece not yet passed (undefined when all are). */
  record: ImageRecord | undefined;
  /** The image it is in (0 for a full image's own records). */
  image = 0;
  /** The piece's kind (lib/image/format.ts `KIND`). */
  kind = 0;
  /** The piece's first address. */
  start = 0;
  /** One past its last. */
  end = 0;
  #cached?: ImageRecord;
  #recordAt = 0;
  #read = 0;
  #bytes: Uint8Array = new Uint8Array(0);
  #buffer = new Uint8Array(0);
  /** `readStoredMany`'s triple: the buffer's address, the bytes, their offset in the file. */
  readonly #ops = new BigUint64Array(3);

  /**
   * @param images The image (a full one), or the chain's images, tip first.
   * @param chain The chain's records, for an incremental image.
   */
  constructor(images: readonly MemoryLoader[], chain?: Iterable<ChainRecord>) {
    this.#images = images;
    if (chain) this.#chain = chain[Symbol.iterator]();
    else this.#own = images[0].index.segment(0);
    this.#next();
  }

  /** Pass the pieces that end at or before `pos`. */
  skipTo(pos: number): void {
    while (this.record && this.end <= pos) this.#next();
  }

  /** Whether the current piece covers `pos` (after {@link skipTo} it). */
  covers(pos: number): boolean {
    return this.record !== undefined && this.start <= pos;
  }

  /**
   * Read the current piece's record data, unless it was read last: a raw record with one `pread` into this
   * side's buffer, its checksum checked (no mapping of the image, no promise), a compressed one decoded.
   *
   * @returns A promise only when a compressed record is decoded.
   */
  load(): Promise<void> | undefined {
    const r = this.record!;
    if (this.#cached === r) return;
    this.#cached = undefined;
    this.#recordAt = Number(r.address);
    // One buffer per side, reused (records are at most MAX_RECORD_LENGTH bytes): memory stays bounded.
    if (this.#buffer.length < r.length) {
      this.#buffer = new Uint8Array(r.length);
      this.#ops[0] = addrOf(Deno.UnsafePointer.of(this.#buffer));
    }
    const img = this.#images[this.image];
    if (r.codec !== 0) return this.#decode(img, r);
    this.#ops[1] = BigInt(r.storedLength);
    this.#ops[2] = BigInt(r.fileOffset);
    img.readStoredMany(this.#ops, 1);
    this.#bytes = this.#buffer.subarray(0, r.length);
    if (checksum(this.#bytes) !== r.checksum) {
      throw new ImageError(img.path, r.fileOffset, "data checksum mismatch");
    }
    this.#cached = r;
  }

  /**
   * The page at `addr` of the record {@link load}ed last (shorter at a record's end that is not page aligned).
   *
   * @param addr The page's address.
   * @returns A view of its bytes.
   */
  page(addr: number): Uint8Array {
    const off = addr - this.#recordAt;
    return this.#bytes.subarray(off, off + PAGE_SIZE);
  }

  async #decode(img: MemoryLoader, r: ImageRecord): Promise<void> {
    this.#bytes = await img.readRecord(r, this.#buffer.subarray(0, r.length));
    this.#cached = r;
    if ((this.#read += r.storedLength) >= RELEASE_EVERY) {
      img.releaseView(); // the mapped pages read leave this process's RSS
      this.#read = 0;
    }
  }

  #next(): void {
    if (this.#own) {
      const n = this.#own.next();
      const r = this.record = n.done ? undefined : n.value;
      if (!r) return;
      this.kind = r.kind;
      this.start = Number(r.address);
      this.end = this.start + r.length;
      return;
    }
    const n = this.#chain!.next();
    const c = n.done ? undefined : n.value;
    this.record = c?.record;
    if (!c) return;
    this.image = c.image;
    this.kind = c.kind;
    this.start = Number(c.address);
    this.end = this.start + c.length;
  }
}

/**
 * The spans of address space either side covers: every boundary of either side's pieces starts one, so inside
 * a span each side's piece (or its absence) is one. Walked with {@link Spans.next}.
 */
export class Spans {
  /** The span's first address. */
  start = 0;
  /** One past its last. */
  end = 0;
  /** Whether A's current piece covers it. */
  inA = false;
  /** Whether B's current piece covers it. */
  inB = false;
  readonly #a: Side;
  readonly #b: Side;

  /**
   * @param a The first image's side.
   * @param b The second's.
   */
  constructor(a: Side, b: Side) {
    this.#a = a;
    this.#b = b;
  }

  /**
   * Move to the next span.
   *
   * @returns False when neither side covers anything further.
   */
  next(): boolean {
    const a = this.#a, b = this.#b;
    a.skipTo(this.end);
    b.skipTo(this.end);
    if (!a.record && !b.record) return false;
    const pos = Math.max(this.end, Math.min(a.record ? a.start : Infinity, b.record ? b.start : Infinity));
    let end = Infinity;
    if (a.record) end = a.start <= pos ? a.end : a.start;
    if (b.record) end = Math.min(end, b.start <= pos ? b.end : b.start);
    this.start = pos;
    this.end = end;
    this.inA = a.covers(pos);
    this.inB = b.covers(pos);
    return true;
  }
}
