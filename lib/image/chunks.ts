/**
 * The data path of the image writer, from bytes in local memory to records: all-zero pages become holes; data
 * becomes raw records (zero-copy, at most a frame's data each) or, with a codec or a sealer, chunks encoded and
 * sealed on pool threads, a window at a time, added in input order.
 *
 * @module
 */

import { addressOf, PAGE_SIZE, ptrOf } from "../../ffi/libc.ts";
import { type Codec, INLINE_BYTES } from "../codecs/codec.ts";
import { ordered } from "../codecs/pool.ts";
import { chunkAad, SEAL_OVERHEAD, type Sealer } from "../codecs/seal.ts";
import { SYNC_BYTES } from "../codecs/gcm.ts";
import { findZeroPages } from "../kernel/zero.ts";
import { checksum, checksumAt, checksumAtAsync } from "./checksum.ts";
import { MAX_RECORD_LENGTH, RECORD_FLAG } from "./format.ts";
import { dataRecord, type FrameWriter } from "./frame_writer.ts";
import { returnsTo } from "./write_queue.ts";

/** Sealed-chunk buffers kept for reuse, at most (the chunks in flight and those waiting for their write). */
const MAX_POOLED = 32;
/** Bytes of a slab that small encoded and sealed chunks are cut from, and idle slabs kept at most. */
const SLAB = 1 << 20, MAX_SLABS = 4;

/** A buffer small chunks are cut from: `used` bytes given out, `out` chunks not written yet. */
interface Slab {
  buf: Uint8Array<ArrayBuffer>;
  used: number;
  out: number;
}

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
  /** {@link digest}, once resolved. */
  #digest: Uint8Array | undefined;
  /** The AAD of the chunk sealed on this thread last (reused: `chunkAad` writes into it when it fits). */
  #aad: Uint8Array | undefined;
  /** The slab small chunks are cut from now, and idle ones. */
  #slab: Slab | undefined;
  readonly #slabs: Slab[] = [];
  /** Buffers sealed chunks are written into, back here once written (see `returnsTo`). */
  readonly #sealedPool: Uint8Array<ArrayBuffer>[] = [];

  /**
   * A buffer for a sealed chunk of `plain` bytes: a view of `plain + SEAL_OVERHEAD` bytes of a pooled buffer of
   * the chunk size (or a larger one); for a chunk of at most 64 KiB sealed by libcrypto, a piece of a slab
   * ({@link #cut}); for another chunk under half the chunk size, a buffer of its own, exactly that size, freed
   * once written (a pooled buffer would be held by a small chunk until its frame is written: the one-page
   * records of a fragmented image held a chunk-size buffer each, up to 1,024 a frame). WebCrypto returns a
   * buffer of its own and leaves this one unused: never a slab's piece then, which would keep it from reuse.
   */
  #sealedBuffer(plain: number): Uint8Array<ArrayBuffer> {
    if (plain <= SYNC_BYTES && this.#opts.sealer?.sealsNow) return this.#cut(plain + SEAL_OVERHEAD);
    if (2 * plain < this.#opts.chunkSize) return new Uint8Array(plain + SEAL_OVERHEAD);
    const size = Math.max(plain, this.#opts.chunkSize) + SEAL_OVERHEAD;
    let b = this.#sealedPool.pop();
    if (!b || b.length < size) {
      b = new Uint8Array(size);
      returnsTo(b, (x) => {
        if (this.#sealedPool.length < MAX_POOLED) this.#sealedPool.push(x);
      });
    }
    return b.subarray(0, plain + SEAL_OVERHEAD);
  }

  /**
   * `size` bytes cut from the current slab (or a new one), for a chunk of at most 64 KiB once encoded or sealed:
   * a buffer of its own per one-page chunk (an `ArrayBuffer`, with its native backing store) took an encrypted
   * checkpoint of 262,144 of them to 146-164 MiB of peak RSS, against 123-135 MiB. A slab goes back to the idle
   * ones (at most four) once every chunk cut from it is written (`returnsTo`).
   */
  #cut(size: number): Uint8Array<ArrayBuffer> {
    let s = this.#slab;
    if (!s || s.used + size > SLAB) {
      if (s && s.out === 0 && this.#slabs.length < MAX_SLABS) this.#slabs.push(s);
      s = this.#slabs.pop() ?? this.#newSlab();
      s.used = 0;
      this.#slab = s;
    }
    s.out++;
    s.used += size;
    return s.buf.subarray(s.used - size, s.used);
  }

  #newSlab(): Slab {
    const s: Slab = { buf: new Uint8Array(SLAB), used: 0, out: 0 };
    returnsTo(s.buf, () => {
      if (--s.out === 0 && s !== this.#slab && this.#slabs.length < MAX_SLABS) this.#slabs.push(s);
    });
    return s;
  }

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
   * @param bytes The same bytes as a view, when the caller has one (a bounce buffer's): a small chunk is encoded
   *   from a `subarray` of it rather than a new view of its own.
   */
  async storeDetecting(
    local: bigint,
    addr: bigint,
    len: number,
    segment: number,
    bytes?: Uint8Array,
  ): Promise<void> {
    if (this.#opts.sealer && !this.#digest) this.#digest = await this.digest!;
    const pages = Math.floor(len / PAGE_SIZE);
    if (this.#zeroScratch.length < pages) this.#zeroScratch = new Uint8Array(pages);
    const zero = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zeroScratch);
    let i = 0;
    while (i < pages) {
      let j = i;
      while (j < pages && zero[j] === zero[i]) j++;
      const off = i * PAGE_SIZE, l = (j - i) * PAGE_SIZE;
      if (zero[i]) this.#frames.hole(addr + BigInt(off), l, segment);
      else if (!this.encoding) this.#raw(local + BigInt(off), addr + BigInt(off), l, segment);
      else if (
        !this.#storedNow(
          local + BigInt(off),
          addr + BigInt(off),
          l,
          segment,
          false,
          undefined,
          bytes?.subarray(off, off + l),
        )
      ) {
        await this.#encoded(local + BigInt(off), addr + BigInt(off), l, segment, false);
      }
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

  /**
   * Store pieces of one segment whose bytes are in local memory, in address order, encoding (and sealing) the
   * chunks of all of them in one window on pool threads: a piece without `local` is a hole. Several small
   * pieces (the records of a raw image read again to be transcoded) thus keep every core busy, where one call
   * per piece would encode one chunk at a time.
   *
   * @param pieces The pieces, in address order.
   * @param segment Their segment (0 for absolute addresses).
   * @param stable Whether the bytes stay readable, unchanged, until the image is finalized (see {@link data}).
   */
  async pieces(pieces: readonly LocalPiece[], segment: number, stable = false): Promise<void> {
    if (!this.encoding) {
      for (const p of pieces) {
        if (p.local === undefined) this.#frames.hole(p.addr, p.len, segment);
        else this.#raw(p.local, p.addr, p.len, segment);
      }
      return;
    }
    await this.#encodedPieces(pieces, segment, stable);
  }

  async #encoded(local: bigint, addr: bigint, len: number, segment: number, stable: boolean): Promise<void> {
    await this.#encodedPieces([{ local, addr, len }], segment, stable);
  }

  async #encodedPieces(pieces: readonly LocalPiece[], segment: number, stable: boolean): Promise<void> {
    if (this.#opts.sealer && !this.#digest) this.#digest = await this.digest!;
    // Holes, and data pieces of one chunk under INLINE_BYTES, are stored on this thread without a promise: the
    // codecs and libcrypto run such chunks here anyway, and the one-page records of a fragmented image made a
    // work closure, an ordered() slot, a Promise.all and a promise chain each (a zstd:1 checkpoint of 262,144
    // of them allocated 880 MiB in its transcode, and V8's heap grew to 70 MiB). Runs of larger pieces go to the
    // pool threads, a window at a time.
    for (let i = 0; i < pieces.length;) {
      const p = pieces[i];
      if (p.local === undefined) this.#frames.hole(p.addr, p.len, segment);
      else if (!this.#storedNow(p.local, p.addr, p.len, segment, stable, p.checksum, p.bytes)) {
        let j = i + 1;
        // The holes between larger pieces go with them: a run cut at every hole would encode one chunk at a time.
        while (j < pieces.length && (pieces[j].local === undefined || !this.#now(pieces[j].len))) j++;
        await this.#pooled(pieces.slice(i, j), segment, stable, this.#digest);
        i = j;
        continue;
      }
      i++;
    }
  }

  /** Whether a data piece of `len` bytes is one chunk that the codec and the sealer take on this thread. */
  #now(len: number): boolean {
    const { codec, sealer, chunkSize } = this.#opts;
    return len < INLINE_BYTES && len <= chunkSize && codec.encodeNow !== undefined &&
      (!sealer || (sealer.sealsNow && len <= SYNC_BYTES));
  }

  /**
   * Store the `n` bytes at `local` as one chunk on this thread, if {@link #now} says so (the header's digest
   * resolved already, for a sealed image): whether it was stored.
   */
  #storedNow(
    local: bigint,
    addr: bigint,
    n: number,
    segment: number,
    stable = false,
    sum?: bigint,
    bytes?: Uint8Array,
  ): boolean {
    if (!this.#now(n)) return false;
    const { codec, sealer } = this.#opts;
    const src = bytes ?? new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(local)!, n));
    let enc = codec.encodeNow!(src) ?? null; // the codec's buffer: kept only in a slab (or sealed into one)
    if (enc !== null && enc.length >= n) enc = null;
    const id = enc === null ? 0 : codec.id;
    if (enc !== null && !sealer) {
      const kept = this.#cut(enc.length);
      kept.set(enc);
      enc = kept;
    }
    const ordinal = this.#ordinal++;
    if (sealer) {
      const plain = enc ?? src;
      const aad = chunkAad(ordinal, addr, n, id, segment, this.#digest, this.#aad); // used at once: one buffer
      this.#aad = aad;
      enc = sealer.sealNow(plain, aad, this.#sealedBuffer(plain.length))!;
    }
    const decoded = sealer ? 0n : sum ?? checksumAt(local, BigInt(n));
    this.#append(local, addr, n, segment, id, enc, decoded, stable);
    return true;
  }

  /** Encode (and seal) `pieces` on pool threads, `window` chunks at once; records are added in input order. */
  async #pooled(
    pieces: readonly LocalPiece[],
    segment: number,
    stable: boolean,
    digest: Uint8Array | undefined,
  ): Promise<void> {
    const { codec: theCodec, chunkSize, sealer } = this.#opts;
    // One item per chunk of a data piece (with its ordinal among the image's data records), one per hole.
    const items: { local?: bigint; addr: bigint; n: number; ordinal: number; sum?: bigint }[] = [];
    let ordinal = this.#ordinal;
    for (const p of pieces) {
      if (p.local === undefined) {
        items.push({ addr: p.addr, n: p.len, ordinal: -1 });
        continue;
      }
      for (let off = 0; off < p.len; off += chunkSize) {
        const n = Math.min(chunkSize, p.len - off);
        const sum = n === p.len ? p.checksum : undefined; // known for a piece that is one chunk
        items.push({ local: p.local + BigInt(off), addr: p.addr + BigInt(off), n, ordinal: ordinal++, sum });
      }
    }
    const work = async (it: typeof items[number]) => {
      const { local: p, n, addr: a } = it;
      if (p === undefined) return { it, codec: 0, enc: null, decoded: 0n };
      const src = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(p)!, n));
      const [decoded, encoded] = await Promise.all([
        // On a pool thread too; a sealed record keeps no plain checksum.
        sealer ? 0n : it.sum ?? checksumAtAsync(p, BigInt(n)),
        theCodec.encode(src),
      ]);
      let enc = encoded;
      if (enc !== null && enc.length >= n) enc = null;
      const codec = enc === null ? 0 : theCodec.id;
      if (!sealer) return { it, codec, enc, decoded };
      const plain = enc ?? src;
      const into = this.#sealedBuffer(plain.length);
      const sealed = await sealer.seal(plain, chunkAad(it.ordinal, a, n, codec, segment, digest), into);
      // WebCrypto: a buffer of its own; a pooled one goes back.
      if (sealed !== into && into.buffer.byteLength >= chunkSize + SEAL_OVERHEAD) {
        this.#sealedPool.push(new Uint8Array(into.buffer));
      }
      return { it, codec, enc: sealed, decoded };
    };
    try {
      for await (const c of ordered(items, work, this.#opts.window)) {
        const { local, addr: a, n } = c.it;
        if (local === undefined) this.#frames.hole(a, n, segment);
        else this.#append(local, a, n, segment, c.codec, c.enc, c.decoded, stable);
      }
    } finally {
      this.#ordinal = ordinal;
    }
  }

  /**
   * Add the record of a chunk of `n` bytes at `local`, stored as `enc` (encoded and/or sealed) or, when null,
   * raw: from `local` itself when it is stable, else from a copy (`local` may be a bounce buffer).
   */
  #append(
    local: bigint,
    addr: bigint,
    n: number,
    segment: number,
    codec: number,
    enc: Uint8Array | null,
    decoded: bigint,
    stable: boolean,
  ): void {
    if (enc === null && stable && !this.#opts.sealer) {
      this.#frames.append(dataRecord(addr, n, segment, 0, n, decoded, decoded), local, undefined, true);
    } else if (enc === null) {
      const copy = new Uint8Array(n); // copied without a view of `local` (a native object per view until GC)
      new Deno.UnsafePointerView(ptrOf(local)!).copyInto(copy);
      this.#frames.append(
        dataRecord(addr, n, segment, 0, n, decoded, decoded),
        addressOf(copy),
        copy,
      );
    } else {
      const r = dataRecord(addr, n, segment, codec, enc.length, checksum(enc), decoded);
      r.flags = this.#opts.sealer ? RECORD_FLAG.ENCRYPTED : 0;
      this.#frames.append(r, addressOf(enc), enc);
    }
  }
}

/** Bytes to store from local memory ({@link ChunkWriter.pieces}), or a hole (no `local`). */
export interface LocalPiece {
  /** Where the bytes are; undefined for a hole. */
  local?: bigint;
  /** First address (offset, for a segment). */
  addr: bigint;
  /** Bytes. */
  len: number;
  /** The XXH3-64 of the bytes, when known (a raw image's record): not computed again. */
  checksum?: bigint;
  /**
   * The same bytes as an array (a `subarray` of the caller's buffer), when it has them so: a piece encoded on
   * the calling thread is then read through it instead of a new view of `local`, whose native backing store
   * lives until V8 collects it (a view per one-page piece of a fragmented image grew the C heap by ~20 MiB).
   */
  bytes?: Uint8Array;
}
