/**
 * The image writer, `MemoryPersister`: `store()` persists runs from a memory source, `storeRuns()` many runs of
 * one source at once (the vectored store), `storeGap()` records holes, `finalize()` writes the tail, fsyncs and
 * gives the file its name atomically. It owns the parts that do the work: the region table and what a store may
 * claim (region_table.ts), the data path from bytes to records (chunks.ts), the batched gathering of a pid
 * source (gather.ts), frame building (frame_writer.ts), the write queue (write_queue.ts), the tail (tail.ts)
 * and the file the image is written through (tempfile.ts). Records go out in batched frames (docs/FORMAT.md).
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import { check, close, cstr, libc, open, PAGE_SIZE, ptrOf } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { type Codec, raw } from "../codecs/codec.ts";
import type { Region } from "../kernel/region.ts";
import type { Sealer } from "../codecs/seal.ts";
import { ChunkWriter, type LocalPiece } from "./chunks.ts";
import { FrameWriter } from "./frame_writer.ts";
import { BouncePool } from "./gather.ts";
import { alignUp, ARCH_X86_64, MAX_CHUNK_LENGTH, MAX_SECTIONS_LENGTH, OPTIONAL, REQUIRED } from "./format.ts";
import { encodeHeaderBlock, type SourceInfo } from "./header.ts";
import { headerDigest } from "./sealing.ts";
import { type MemorySource, selfSource } from "./sources.ts";
import { Spool } from "./spool.ts";
import { encodeTail } from "./tail.ts";
import { WriteQueue } from "./write_queue.ts";
import { RegionTable } from "./region_table.ts";
import { insideRegions } from "./rules.ts";
import { dirOf, linkUnnamed, openUnnamed, sweepStale, tempName } from "./tempfile.ts";

export type { LocalPiece } from "./chunks.ts";

/** Options of {@link MemoryPersister.create}. */
export interface PersisterOptions {
  /** Where `store()` reads from by default (default: this process). */
  source?: MemorySource;
  /** The regions the image covers (or call `setRegions()` before the first store). */
  regions?: readonly Region[];
  /** Relocatable segments (from `segmentSource()`) that `store(offset, len, segment)` may store. */
  segments?: readonly MemorySource[];
  /** Turn all-zero pages into holes (default: the source's default, on for self and pid). */
  detectZeros?: boolean;
  /** The codec stage of each chunk (default raw: zero-copy, runs stay whole). */
  codec?: Codec;
  /** Decoded bytes per encoded record with a non-raw codec (default 1 MiB, at most `MAX_CHUNK_LENGTH`, 4 MiB). */
  chunkSize?: number;
  /** fsync the file and its directory before the image is named (default true). */
  fsync?: boolean;
  /** Encrypt every chunk with this sealer (AES-256-GCM; lib/codecs/seal.ts), making an ENCRYPTED image. */
  sealer?: Sealer;
  /** Chunks encoded (and sealed) at once, on pool threads (default: 2 × cores + 2). */
  window?: number;
  /**
   * Bytes read by `storeRuns()` from a pid source that may wait in memory for their write (default 1 GiB, at
   * least three bounce buffers; buffers are added only while the writes fall behind the reads): the calls
   * return once the memory is read, so a checkpoint's stop window does not wait for a slow disk until this much
   * is pending. `finalize()` waits for every write.
   */
  writeBehind?: number;
  /**
   * An incremental image (required feature PARENT): its records are only what changed since its parent (holes
   * are explicit entries), every byte they do not cover is the parent's, so scattered runs share a frame
   * (lib/image/chain.ts, lib/image/format.ts `uncoveredMeaning`). Default false.
   */
  incremental?: boolean;
}

/** What {@link MemoryPersister.finalize} wrote. */
export interface ImageSummary {
  /** The image path, or `"-"`/`fd N` for a stream. */
  path: string;
  /** Bytes of the file. */
  fileSize: number;
  /** Index records. */
  records: number;
  /** Data records. */
  dataRecords: number;
  /** Hole records. */
  holeRecords: number;
  /** Decoded bytes of data records. */
  dataBytes: number;
  /** Bytes of holes. */
  holeBytes: number;
  /** Bytes of data as stored (after the codec). */
  storedBytes: number;
}

/** Writes one image. Create with {@link MemoryPersister.create}; always `finalize()` or `abort()`. */
export class MemoryPersister implements AsyncDisposable {
  readonly #path: string;
  readonly #temp: string | undefined;
  #fd: number;
  readonly #ownsFd: boolean;
  readonly #source: MemorySource;
  readonly #opts: PersisterOptions;
  readonly #codec: Codec;
  readonly #table: RegionTable;
  #headerWritten = false;
  readonly #queue: WriteQueue;
  readonly #frames: FrameWriter;
  readonly #chunks: ChunkWriter;
  /** A view of each pid source's bounce buffer (`#bounceBytes`). */
  readonly #bounces = new WeakMap<MemorySource, { at: bigint; bytes: Uint8Array }>();
  /** Bounce buffers of `storeRuns()`. */
  readonly #pool = new BouncePool();
  #sections = new Map<string, Uint8Array>();
  #done = false;

  private constructor(
    path: string,
    temp: string | undefined,
    fd: number,
    ownsFd: boolean,
    opts: PersisterOptions,
  ) {
    this.#path = path;
    this.#temp = temp;
    this.#fd = fd;
    this.#ownsFd = ownsFd;
    this.#opts = opts;
    this.#source = opts.source ?? selfSource();
    this.#codec = opts.codec ?? raw;
    const chunkSize = opts.chunkSize ?? 1 << 20;
    if (!Number.isInteger(chunkSize) || chunkSize <= 0 || chunkSize > MAX_CHUNK_LENGTH) {
      throw new RangeError(`Cannot use chunk size ${opts.chunkSize}: expected 1 to ${MAX_CHUNK_LENGTH}`);
    }
    this.#queue = new WriteQueue(fd, path);
    // An incremental image's frames may grow over bytes it leaves to its parent, inside its regions.
    const bridge = opts.incremental
      ? (segment: number, from: bigint, to: bigint) =>
        segment === 0 && insideRegions(this.#table.regions ?? [], from, to)
      : undefined;
    // A sealed image's frame tables, for its metadata MAC at finalize: past 4 MiB in an unnamed scratch file, in
    // the image's directory (writable, and where the user made room) or, for a stream, in $TMPDIR.
    const tables = opts.sealer
      ? new Spool(`frame tables of ${path}`, ownsFd ? dirOf(path) : undefined)
      : undefined;
    this.#frames = new FrameWriter(this.#queue, tables, bridge);
    this.#chunks = new ChunkWriter(this.#frames, {
      codec: this.#codec,
      chunkSize,
      sealer: opts.sealer,
      window: opts.window,
    });
    const segments = [...(opts.segments ?? [])];
    this.#table = new RegionTable(segments);
    if (opts.regions || segments.length) this.setRegions(opts.regions ?? []);
  }

  /**
   * Start writing an image: to an unnamed file (`O_TMPFILE`, mode 0600) in the directory of `path`, fsynced and
   * linked to `path` by `finalize()`, so that nothing named exists until the image is complete, even when the
   * writer is killed (where the file system has no `O_TMPFILE`: a named temporary file, renamed into place,
   * whose name lets the next writer sweep it if this one dies; see tempfile.ts). Or to a stream (`"-"` is
   * stdout, `{ fd }` any writable fd, e.g. a pipe).
   *
   * @param out The final path, `"-"`, or `{ fd }`.
   * @param opts Options.
   * @returns The persister.
   */
  static create(out: string | { fd: number }, opts: PersisterOptions = {}): Promise<MemoryPersister> {
    if (typeof out === "object") {
      return Promise.resolve(new MemoryPersister(`fd ${out.fd}`, undefined, out.fd, false, opts));
    }
    if (out === "-") return Promise.resolve(new MemoryPersister("-", undefined, 1, false, opts));
    if (out === "") throw new TypeError("Cannot write an image to an empty path");
    const dir = dirOf(out);
    sweepStale(dir);
    const unnamed = openUnnamed(dir, O.WRONLY);
    if (unnamed !== undefined) {
      return Promise.resolve(new MemoryPersister(out, undefined, unnamed, true, opts));
    }
    const temp = tempName(out);
    const fd = open(temp, O.WRONLY | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
    try {
      return Promise.resolve(new MemoryPersister(out, temp, fd, true, opts));
    } catch (e) {
      libc.close(fd);
      libc.unlink(cstr(temp));
      throw e;
    }
  }

  /**
   * Set the region table (before the first store). Relocatable segments are appended after these regions.
   *
   * @param regions The regions the image covers.
   */
  setRegions(regions: readonly Region[]): void {
    if (this.#headerWritten) throw new TypeError("Cannot set regions after the header was written");
    this.#table.set(regions);
  }

  /**
   * Persist `[addr, addr + len)` from `source` (default: the persister's source). Runs of one segment must come
   * in increasing address order without overlap. All-zero pages become holes when zero detection is on.
   *
   * @param addr First address (offset, for a segment).
   * @param len Bytes.
   * @param source Where to read (a declared segment, or another memory source).
   */
  async store(addr: bigint, len: number | bigint, source: MemorySource = this.#source): Promise<void> {
    const n = Number(len);
    const segment = this.#claim(addr, n, source, "store");
    await this.#guard(async () => {
      this.#writeHeader();
      await this.#queue.writing; // the bounce buffer and the queue are ours again
      await this.#storeRange(addr, n, segment, source);
      await this.#frames.settle();
    });
  }

  /**
   * Record a hole: `[addr, addr + len)` reads as zero and takes no file space.
   *
   * @param addr First address (offset, for a segment).
   * @param len Bytes.
   * @param segment The segment source it belongs to, if any.
   */
  async storeGap(addr: bigint, len: number | bigint, segment?: MemorySource): Promise<void> {
    const n = Number(len);
    const seg = this.#claim(addr, n, segment, "store gap");
    await this.#guard(() => {
      this.#writeHeader();
      this.#frames.hole(addr, n, seg);
      return Promise.resolve();
    });
  }

  /**
   * Persist many runs of one source and record the gaps between them, within `[start, end)`, as holes: the
   * vectored form of {@link store} and {@link storeGap}. From another process, runs are copied into the bounce
   * buffer with `process_vm_readv` (up to 1024 iovecs a call), zero pages are found in bulk, and each frame of
   * up to 1024 records is written with one `writev`.
   *
   * @param runs Sorted, disjoint runs: `{ start, end }` objects or `[start0, end0, start1, end1, …]`.
   * @param opts `start`/`end` of the range (default: the first run's start, the last run's end); `source`
   *   (default: the persister's); `signal` to abort between batches; `progress`, called with the bytes of runs
   *   stored as each batch is read; `within`, for an incremental image only: sorted, disjoint ranges that hold
   *   every run, outside which the gaps are left uncovered (the parent's bytes) rather than recorded as holes,
   *   so that many changed ranges of a region are stored in one call.
   */
  async storeRuns(
    runs: BigUint64Array | readonly { start: bigint; end: bigint }[],
    opts: {
      start?: bigint;
      end?: bigint;
      source?: MemorySource;
      signal?: AbortSignal;
      progress?: (bytes: number) => void;
      within?: BigUint64Array;
    } = {},
  ): Promise<void> {
    if (opts.within && !this.#opts.incremental) {
      throw new TypeError("Cannot store runs within ranges: the image is not incremental");
    }
    const pairs = runs instanceof BigUint64Array
      ? runs
      : BigUint64Array.from(runs.flatMap((r) => [r.start, r.end]));
    if (pairs.length % 2 !== 0) throw new RangeError("Cannot store runs: an odd number of run bounds");
    const count = pairs.length / 2;
    const start = opts.start ?? (count ? pairs[0] : undefined);
    const end = opts.end ?? (count ? pairs[pairs.length - 1] : undefined);
    if (start === undefined || end === undefined) return;
    let at = start;
    for (let i = 0; i < count; i++) {
      if (pairs[2 * i] < at || pairs[2 * i + 1] <= pairs[2 * i]) {
        throw new RangeError(
          `Cannot store runs: run ${i} at ${hex(pairs[2 * i])} is empty, out of order or outside the range`,
        );
      }
      at = pairs[2 * i + 1];
    }
    if (end < at) throw new RangeError(`Cannot store runs: range ends at ${hex(end)}, before the last run`);
    const source = opts.source ?? this.#source;
    const segment = this.#claim(start, Number(end - start), source, "store runs");
    const within = opts.within;
    let w = 0; // the first range of `within` that may still meet a gap
    const hole = (from: bigint, to: bigint) => {
      if (!within) return this.#frames.hole(from, Number(to - from), segment);
      while (w < within.length && within[w + 1] <= from) w += 2;
      for (let k = w; k < within.length && within[k] < to; k += 2) {
        const s = within[k] > from ? within[k] : from, e = within[k + 1] < to ? within[k + 1] : to;
        if (s < e) this.#frames.hole(s, Number(e - s), segment);
      }
    };
    await this.#guard(async () => {
      this.#writeHeader();
      const page = BigInt(PAGE_SIZE);
      const aligned = pairs.every((x) => x % page === 0n);
      let at = start;
      if (source.bounce && aligned && this.#codec.id === 0 && !this.#opts.sealer) {
        at = await this.#pool.gather(pairs, at, segment, source, this.#frames, this.#queue, {
          detect: this.#opts.detectZeros ?? source.detectZeros,
          writeBehind: this.#opts.writeBehind,
          signal: opts.signal,
          progress: opts.progress,
          hole,
        });
      } else {
        await this.#queue.writing;
        for (let i = 0; i < count; i++) {
          opts.signal?.throwIfAborted();
          const s = pairs[2 * i], e = pairs[2 * i + 1];
          if (s > at) hole(at, s);
          await this.#storeRange(s, Number(e - s), segment, source, opts.progress);
          at = e;
        }
      }
      if (end > at) hole(at, end);
      await this.#frames.settle();
    });
  }

  /**
   * Persist pieces whose bytes are already in this process's memory, in address order, and holes (pieces
   * without `local`): all the chunks of all of them are encoded at once on pool threads, while the pieces
   * stored by the call before are written behind on another. What a raw image read again is transcoded with:
   * its records are 1 MiB each, one chunk, so a `store()` per record would encode one chunk at a time and wait
   * for each write. The memory of the pieces must stay unchanged until the next call (or `finalize()`); with
   * `stable`, until the image is finalized (incompressible chunks are then written from there, not copied).
   *
   * @param pieces Data (`local`, `addr`, `len`) and holes (`addr`, `len`), sorted and disjoint.
   * @param opts `stable`: see above; `source`: the source the pieces belong to (default: the persister's).
   */
  async storeLocal(
    pieces: readonly LocalPiece[],
    opts: { stable?: boolean; source?: MemorySource } = {},
  ): Promise<void> {
    if (!pieces.length) return;
    const source = opts.source ?? this.#source;
    let segment = 0;
    for (const p of pieces) segment = this.#claim(p.addr, p.len, source, "store");
    await this.#guard(async () => {
      this.#writeHeader();
      this.#frames.flush(); // the records of the call before: written behind, after the writes in flight
      await this.#queue.writing;
      if (this.#queue.pending) this.#queue.writeBehind();
      await this.#chunks.pieces(pieces, segment, opts.stable);
      if (this.#queue.pending) this.#queue.writeBehind(); // frames filled meanwhile
    });
  }

  /**
   * Add a named, checksummed blob (e.g. `"threads"`), written at finalize.
   *
   * @param name Unique name, 1-255 bytes of UTF-8.
   * @param data The bytes (copied).
   */
  addSection(name: string, data: Uint8Array): void {
    this.#live();
    const n = new TextEncoder().encode(name).length;
    if (n === 0 || n > 255) throw new RangeError(`Cannot add section "${name}": name must be 1-255 bytes`);
    if (this.#sections.has(name)) throw new TypeError(`Cannot add section "${name}": already added`);
    // Blobs and table entries (8 aligned), the table's count, and room for the `seal` section of a sealed image.
    const bytes = (len: number, nameLength: number) => alignUp(len, 8) + 32 + alignUp(nameLength, 8);
    let total = 8 + bytes(64, 8) + bytes(data.length, n);
    for (const [k, v] of this.#sections) total += bytes(v.length, new TextEncoder().encode(k).length);
    if (total > MAX_SECTIONS_LENGTH) {
      throw new RangeError(
        `Cannot add section "${name}": sections would take ${total} bytes, at most ${MAX_SECTIONS_LENGTH}`,
      );
    }
    this.#sections.set(name, data.slice());
  }

  /**
   * Write the END frame, index, sections and footer; fsync; give the file its name (atomically).
   *
   * @returns What was written.
   */
  async finalize(): Promise<ImageSummary> {
    this.#live();
    return await this.#guard(async () => {
      this.#writeHeader();
      await this.#queue.writing; // every write of storeRuns() has finished
      this.#pool.clear();
      this.#frames.flush();
      const t = this.#frames.totals;
      const sealer = this.#opts.sealer;
      const { offset, frameHeader, data, fileSize } = await encodeTail({
        pos: this.#queue.pos,
        frames: this.#frames.frames,
        tables: this.#frames.tables,
        sections: this.#sections,
        header: this.#headerFields!,
        dataBytes: t.dataBytes,
        seal: sealer ? { sealer, digest: await this.#chunks.digest! } : undefined,
      });
      this.#frames.tables?.close();
      this.#queue.zerosTo(offset);
      this.#queue.bytes(frameHeader);
      this.#queue.bytes(data);
      this.#queue.drain();
      if (this.#ownsFd) {
        if (this.#opts.fsync ?? true) check(libc.fsync(this.#fd), "fsync", this.#temp ?? this.#path);
        if (this.#temp === undefined) linkUnnamed(this.#fd, this.#path);
        close(this.#fd);
        this.#fd = -1;
        if (this.#temp !== undefined) {
          check(libc.rename(cstr(this.#temp), cstr(this.#path)), "rename", `${this.#temp} to ${this.#path}`);
        }
        if (this.#opts.fsync ?? true) syncDir(this.#path);
      }
      this.#done = true;
      return {
        path: this.#path,
        fileSize,
        records: t.records,
        dataRecords: t.dataRecords,
        holeRecords: t.records - t.dataRecords,
        dataBytes: t.dataBytes,
        holeBytes: t.holeBytes,
        storedBytes: t.storedBytes,
      };
    });
  }

  /** Stop writing and discard the file (unnamed, or temporary). Idempotent; nothing after a successful finalize. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#queue.writing.catch(() => {}); // no write may still use the fd
    this.#pool.clear();
    this.#frames.tables?.close();
    if (this.#fd >= 0 && this.#ownsFd) libc.close(this.#fd);
    this.#fd = -1;
    if (this.#temp !== undefined) libc.unlink(cstr(this.#temp));
  }

  /** Same as {@link abort}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.abort();
  }

  #headerFields: ReturnType<typeof encodeHeaderBlock>["fields"] | undefined;

  #writeHeader(): void {
    if (this.#headerWritten) return;
    if (!this.#table.regions) this.setRegions([]);
    const { bytes, fields } = encodeHeaderBlock(
      {
        requiredFeatures: (this.#codec.id !== 0 ? REQUIRED.CODEC : 0n) |
          (this.#opts.sealer ? REQUIRED.ENCRYPTED : 0n) | (this.#opts.incremental ? REQUIRED.PARENT : 0n),
        optionalFeatures: (this.#opts.detectZeros ?? this.#source.detectZeros) ? OPTIONAL.ZERO_DETECTED : 0n,
        pageSize: PAGE_SIZE,
        arch: ARCH_X86_64,
      },
      sourceInfo(this.#source.pid),
      this.#table.regions!,
      this.#opts.sealer?.params,
    );
    if (this.#opts.sealer) this.#chunks.digest = headerDigest(bytes);
    this.#headerFields = fields;
    this.#queue.bytes(bytes);
    this.#queue.drain();
    this.#headerWritten = true;
  }

  #live(): void {
    if (this.#done) throw new TypeError(`Cannot use the persister of ${this.#path}: finalized or aborted`);
  }

  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      await this.abort();
      throw e;
    }
  }

  #claim(addr: bigint, n: number, source: MemorySource | undefined, what: string): number {
    this.#live();
    return this.#table.claim(addr, n, source, what);
  }

  /**
   * The `w` bytes at `local` in `source`'s bounce buffer as a `subarray` of one view of it, made once per source:
   * a view made per read (per run of a fragmented process) keeps a native backing store until V8 collects it.
   */
  #bounceBytes(source: MemorySource, local: bigint, w: number): Uint8Array | undefined {
    if (!source.bounce || !Number.isFinite(source.window)) return undefined;
    let b = this.#bounces.get(source);
    if (!b) {
      const at = source.bounce();
      b = { at, bytes: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(at)!, source.window)) };
      this.#bounces.set(source, b);
    }
    const off = Number(local - b.at);
    return off >= 0 && off + w <= b.bytes.length ? b.bytes.subarray(off, off + w) : undefined;
  }

  /** Store `[addr, addr + n)` window by window: zero pages become holes, data becomes records. */
  async #storeRange(
    addr: bigint,
    n: number,
    segment: number,
    source: MemorySource,
    progress?: (bytes: number) => void,
  ): Promise<void> {
    const detect = this.#opts.detectZeros ?? source.detectZeros;
    for (let off = 0; off < n;) {
      const w = Math.min(n - off, source.window);
      const a = addr + BigInt(off);
      let local = source.direct(a, w), bytes: Uint8Array | undefined;
      if (local === null) {
        if (this.#codec.id !== 0 || this.#opts.sealer) {
          // Encoded chunks (and raw ones, copied by the ChunkWriter) are our own buffers, so the open frame stays
          // open over the next read into the bounce buffer until it holds a window's bytes: queued frames are
          // written behind, on a pool thread, while the next window is read and encoded. Closing the frame at
          // every read made a frame, and a page of alignment, per run: the image of a fragmented process
          // (one-page runs) came out twice its data, 257.6 MiB for 129.4 MiB of records.
          if (this.#frames.openBytes >= source.window) this.#frames.flush();
          if (this.#queue.pending) {
            await this.#queue.writing;
            this.#queue.writeBehind();
          }
        } else {
          this.#frames.flush(); // the open frame may point into the bounce buffer the read reuses
          this.#queue.drain();
        }
        local = source.read(a, w);
        bytes = this.#bounceBytes(source, local, w);
      }
      if (detect) await this.#chunks.storeDetecting(local, a, w, segment, bytes);
      else await this.#chunks.data(local, a, w, segment, source.stable);
      off += w;
      progress?.(w);
    }
  }
}

function readOr(path: string, fallback: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return fallback;
  }
}

function sourceInfo(pid: number): SourceInfo {
  const cmd = readOr(`/proc/${pid}/cmdline`, "").replace(/\0$/, "");
  return {
    pid,
    timeMs: Date.now(),
    commandLine: cmd ? cmd.split("\0") : [],
    kernelRelease: readOr("/proc/sys/kernel/osrelease", "").trim(),
    bootId: readOr("/proc/sys/kernel/random/boot_id", "").trim(),
  };
}

function syncDir(path: string): void {
  const slash = path.lastIndexOf("/");
  const dir = slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
  const fd = libc.open(cstr(dir), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0);
  if (fd < 0) return;
  libc.fsync(fd);
  libc.close(fd);
}
