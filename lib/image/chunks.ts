/**
 * The data path of the image writer, from bytes in local memory to records: all-zero pages become holes; data
 * becomes raw records (zero-copy, at most a frame's data each) or, with a codec or a sealer, chunks encoded and
 * sealed on pool threads, a window at a time, added in input order.
 *
 * @module
 */

import { addrOf, PAGE_SIZE, ptrOf } from "../../ffi/libc.ts";
import type { Codec } from "../codecs/codec.ts";
import { ordered } from "../codecs/pool.ts";
import { chunkAad, type Sealer } from "../codecs/seal.ts";
import { findZeroPages } from "../kernel/zero.ts";
import { checksum, checksumAt, checksumAtAsync } from "./checksum.ts";
import { MAX_RECORD_LENGTH, RECORD_FLAG } from "./format.ts";
import { dataRecord, type FrameWriter } from "./frame_writer.ts";

/** How chunks are made. */
export interface ChunkOptions {
  /** The codec stage of each chunk. */
  codec: Codec;
  /** Decoded bytes per encoded record with a non-raw codec. */
  chunkSize: number;
  /** Encrypt every chunk with this sealer. */
  sealer?: Sealer;
  /** Chunks encoded (and sealed) at once, on pool threads. */
  window?: number;
}

/** Turns local bytes into the records of one image. */
export class ChunkWriter {
  readonly #frames: FrameWriter;
  readonly #opts: ChunkOptions;
  #zeroScratch = new Uint8Array(0);
  /** Chunks sealed so far (each chunk's AAD names its ordinal). */
  #ordinal = 0;
  /** The header block's digest, set once the header is written (sealed images). */
  digest: Promise<Uint8Array> | undefined;

  /**
   * Make the data path of one image.
   *
   * @param frames Where records go.
   * @param opts Codec, chunk size, sealer and window.
   */
  constructor(frames: FrameWriter, opts: ChunkOptions) {
    this.#frames = frames;
    this.#opts = opts;
  }

  /** Whether data is encoded or sealed (else stored raw). */
  get encoding(): boolean {
    return this.#opts.codec.id !== 0 || !!this.#opts.sealer;
  }

  /**
   * Store `[addr, addr + len)`, whose bytes are at `local`: all-zero pages become holes, the rest data.
   *
   * @param local Where the bytes are.
   * @param addr First address (offset, for a segment).
   * @param len Bytes.
   * @param segment Its segment (0 for absolute addresses).
   */
  async storeDetecting(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    const pages = Math.floor(len / PAGE_SIZE);
    if (this.#zeroScratch.length < pages) this.#zeroScratch = new Uint8Array(pages);
    const zero = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zeroScratch);
    let i = 0;
    while (i < pages) {
      let j = i;
      while (j < pages && zero[j] === zero[i]) j++;
      const off = i * PAGE_SIZE, l = (j - i) * PAGE_SIZE;
      if (zero[i]) this.#frames.hole(addr + BigInt(off), l, segment);
      else await this.data(local + BigInt(off), addr + BigInt(off), l, segment);
      i = j;
    }
    const tail = len - pages * PAGE_SIZE;
    if (tail > 0) {
      await this.data(local + BigInt(pages * PAGE_SIZE), addr + BigInt(pages * PAGE_SIZE), tail, segment);
    }
  }

  /**
   * Store `[addr, addr + len)`, whose bytes are at `local`, as data records.
   *
   * @param local Where the bytes are.
   * @param addr First address (offset, for a segment).
   * @param len Bytes.
   * @param segment Its segment (0 for absolute addresses).
   * @param stable Whether the bytes stay readable, unchanged, at `local` until the image is finalized (a mapped
   *   image): an incompressible chunk is then written from there, not from a copy.
   */
  async data(local: bigint, addr: bigint, len: number, segment: number, stable = false): Promise<void> {
    if (this.encoding) return await this.#encoded(local, addr, len, segment, stable);
    this.#raw(local, addr, len, segment);
  }

  /** Raw records of `[addr, addr + len)` at `local`, at most `MAX_RECORD_LENGTH` (a frame's data) each. */
  #raw(local: bigint, addr: bigint, len: number, segment: number): void {
    for (let off = 0; off < len; off += MAX_RECORD_LENGTH) {
      const n = Math.min(MAX_RECORD_LENGTH, len - off);
      const p = local + BigInt(off);
      const sum = checksumAt(p, BigInt(n));
      this.#frames.append(dataRecord(addr + BigInt(off), n, segment, 0, n, sum, sum), p);
    }
  }

  async #encoded(local: bigint, addr: bigint, len: number, segment: number, stable: boolean): Promise<void> {
    const { codec: theCodec, chunkSize, sealer } = this.#opts;
    const digest = sealer ? await this.digest! : undefined;
    const offsets: number[] = [];
    for (let off = 0; off < len; off += chunkSize) offsets.push(off);
    // Encode (and seal) on pool threads, `window` chunks at once; records are added in input order.
    const work = async (off: number, i: number) => {
      const n = Math.min(chunkSize, len - off);
      const p = local + BigInt(off);
      const src = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(p)!, n));
      const [decoded, encoded] = await Promise.all([
        sealer ? 0n : checksumAtAsync(p, BigInt(n)), // on a pool thread too; a sealed record keeps no plain checksum
        theCodec.encode(src),
      ]);
      let enc = encoded;
      if (enc !== null && enc.length >= n) enc = null;
      const codec = enc === null ? 0 : theCodec.id;
      const a = addr + BigInt(off);
      if (!sealer) return { off, n, a, codec, enc, decoded };
      const sealed = await sealer.seal(enc ?? src, chunkAad(this.#ordinal + i, a, n, codec, segment, digest));
      return { off, n, a, codec, enc: sealed, decoded };
    };
    const first = this.#ordinal;
    for await (const c of ordered(offsets, work, this.#opts.window)) {
      if (c.enc === null && stable && !sealer) {
        const r = dataRecord(c.a, c.n, segment, 0, c.n, c.decoded, c.decoded);
        this.#frames.append(r, local + BigInt(c.off), undefined, true);
      } else if (c.enc === null) {
        const copy = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(local + BigInt(c.off))!, c.n))
          .slice();
        const r = dataRecord(c.a, c.n, segment, 0, c.n, c.decoded, c.decoded);
        this.#frames.append(r, addrOf(Deno.UnsafePointer.of(copy)), copy); // a copy: the source may be a bounce buffer
      } else {
        const r = dataRecord(c.a, c.n, segment, c.codec, c.enc.length, checksum(c.enc), c.decoded);
        r.flags = sealer ? RECORD_FLAG.ENCRYPTED : 0;
        this.#frames.append(r, addrOf(Deno.UnsafePointer.of(c.enc)), c.enc);
      }
    }
    this.#ordinal = first + offsets.length;
  }
}
