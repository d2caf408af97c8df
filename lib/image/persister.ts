/**
 * The image writer: `store()` persists runs from a memory source, `storeRuns()` many runs of one source at once
 * (the vectored store: batched `process_vm_readv`, zero pages and checksums found in C, one `writev` per
 * frame), `storeGap()` records holes, `finalize()` writes the END frame, the frame directory, sections and
 * footer, fsyncs and renames into place. Records go out in batched frames (docs/FORMAT.md).
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import {
  addrOf,
  check,
  close,
  cstr,
  errno,
  hex,
  libc,
  open,
  PAGE_SIZE,
  ptrOf,
  systemError,
  unwrap,
} from "../../ffi/libc.ts";
import { type Codec, raw } from "../codec.ts";
import type { Region } from "../region.ts";
import { findZeroPages } from "../zero.ts";
import { checksum, checksumAt, checksumAtAsync } from "./checksum.ts";
import {
  alignUp,
  ARCH_X86_64,
  encodeFooter,
  encodeHeaderBlock,
  encodeSectionTable,
  FOOTER_LENGTH,
  FRAME_LENGTH,
  type ImageRecord,
  type ImageRegion,
  KIND,
  OPTIONAL,
  RECORD_FLAG,
  REQUIRED,
  type SectionEntry,
  type SourceInfo,
} from "./layout.ts";
import { type MemorySource, selfSource } from "./sources.ts";
import { helper } from "../../ffi/helper.ts";
import {
  encodeDirectory,
  encodeFrameHeader,
  encodeTable,
  type FrameInfo,
  layoutFrame,
  MAX_FRAME_DATA,
  MAX_FRAME_RECORDS,
} from "./frames.ts";
import { ordered } from "../codecs/pool.ts";
import { chunkAad, type Sealer } from "../seal.ts";
import { headerDigest, metadataMac, SEAL_SECTION } from "./sealing.ts";

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
  /** Decoded bytes per encoded record with a non-raw codec (default 1 MiB). */
  chunkSize?: number;
  /** fsync the file and its directory before the rename (default true). */
  fsync?: boolean;
  /** Encrypt every chunk with this sealer (AES-256-GCM; lib/seal.ts), making an ENCRYPTED image. */
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

/** The frame being filled: its range so far, its records and where their stored bytes are. */
interface OpenFrame {
  segment: number;
  start: bigint;
  end: bigint;
  records: ImageRecord[];
  ptrs: bigint[];
  keep: Uint8Array[];
  stored: number;
  /** Records (from the first) whose data was copied into `keep` by `#settle()`. */
  owned: number;
}

const ZEROS = new Uint8Array(PAGE_SIZE);
const ZEROS_ADDR = addrOf(Deno.UnsafePointer.of(ZEROS));
const IOV_MAX = 1024;

/** Writes one image. Create with {@link MemoryPersister.create}; always `finalize()` or `abort()`. */
export class MemoryPersister implements AsyncDisposable {
  readonly #path: string;
  readonly #temp: string | undefined;
  #fd: number;
  readonly #ownsFd: boolean;
  readonly #source: MemorySource;
  readonly #segments: MemorySource[];
  readonly #opts: PersisterOptions;
  readonly #codec: Codec;
  readonly #chunkSize: number;
  #regions: ImageRegion[] | undefined;
  #pos = 0;
  #headerWritten = false;
  /** Totals of the records stored so far, and the last one (a hole may extend it). */
  #totals = { records: 0, dataRecords: 0, dataBytes: 0, holeBytes: 0, storedBytes: 0 };
  #lastKind = -1;
  #lastSegment = -1;
  #lastHoleEnd = -1n;
  #lastEnd = new Map<number, bigint>();
  #frame: OpenFrame | undefined;
  #frames: FrameInfo[] = [];
  #tables: Uint8Array[] = [];
  #iov = new BigUint64Array(2 * IOV_MAX);
  #iovCount = 0;
  #spareIov: BigUint64Array<ArrayBuffer> | undefined;
  /** Bounce buffers of `storeRuns()` (slot 0: the pid source's), each free once its last write finished. */
  #pool: { addr: bigint; buffer?: Uint8Array; busy: boolean; free: Promise<void> }[] = [];
  #oldest = 0;
  /** The chain of writes in flight (each starts when the one before has finished). */
  #writing: Promise<void> = Promise.resolve();
  #keep: Uint8Array[] = [];
  #sections = new Map<string, Uint8Array>();
  #done = false;
  #zeroScratch = new Uint8Array(0);
  #digest: Promise<Uint8Array> | undefined;
  #ordinal = 0;

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
    this.#segments = [...(opts.segments ?? [])];
    this.#codec = opts.codec ?? raw;
    this.#chunkSize = opts.chunkSize ?? 1 << 20;
    if (!Number.isInteger(this.#chunkSize) || this.#chunkSize <= 0) {
      throw new RangeError(`Cannot use chunk size ${opts.chunkSize}`);
    }
    for (const s of this.#segments) {
      if (s.kind !== "segment") throw new TypeError("Cannot use a non-segment source in `segments`");
    }
    if (opts.regions || this.#segments.length) this.setRegions(opts.regions ?? []);
  }

  /**
   * Start writing an image: to a temporary file (mode 0600) next to `path`, renamed into place by
   * `finalize()`; or to a stream (`"-"` is stdout, `{ fd }` any writable fd, e.g. a pipe).
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
    const slash = out.lastIndexOf("/");
    const dir = slash >= 0 ? out.slice(0, slash + 1) : "";
    const temp = `${dir}.${out.slice(slash + 1)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
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
      await this.#writing; // the bounce buffer and the queue are ours again
      await this.#storeRange(addr, n, segment, source);
      await this.#settle();
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
      this.#hole(addr, n, seg);
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
   *   (default: the persister's); `signal` to abort between batches.
   */
  async storeRuns(
    runs: BigUint64Array | readonly { start: bigint; end: bigint }[],
    opts: { start?: bigint; end?: bigint; source?: MemorySource; signal?: AbortSignal } = {},
  ): Promise<void> {
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
    await this.#guard(async () => {
      this.#writeHeader();
      const page = BigInt(PAGE_SIZE);
      const aligned = pairs.every((x) => x % page === 0n);
      let at = start;
      if (source.bounce && aligned && this.#codec.id === 0 && !this.#opts.sealer) {
        at = await this.#gatherRuns(pairs, at, segment, source, opts.signal);
      } else {
        await this.#writing;
        for (let i = 0; i < count; i++) {
          opts.signal?.throwIfAborted();
          const s = pairs[2 * i], e = pairs[2 * i + 1];
          if (s > at) this.#hole(at, Number(s - at), segment);
          await this.#storeRange(s, Number(e - s), segment, source);
          at = e;
        }
      }
      if (end > at) this.#hole(at, Number(end - at), segment);
      await this.#settle();
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
    this.#sections.set(name, data.slice());
  }

  /**
   * Write the END frame, index, sections and footer; fsync; rename into place.
   *
   * @returns What was written.
   */
  async finalize(): Promise<ImageSummary> {
    this.#live();
    return await this.#guard(async () => {
      this.#writeHeader();
      await this.#writing; // every write of storeRuns() has finished
      this.#pool = [];
      this.#flush();
      const endAt = alignUp(this.#pos, 8);
      const indexOffset = endAt + FRAME_LENGTH;
      const index = encodeDirectory(this.#frames);
      if (this.#opts.sealer) {
        const others = [...this.#sections].filter(([n]) => n !== SEAL_SECTION).map(([name, data]) => ({
          name,
          data,
        }));
        const mac = await metadataMac(
          this.#opts.sealer,
          await this.#digest!,
          concat([index, ...this.#tables]),
          others,
        );
        this.#sections.delete(SEAL_SECTION);
        this.#sections.set(SEAL_SECTION, mac);
      }
      const entries: SectionEntry[] = [];
      let at = indexOffset + index.length;
      for (const [name, data] of this.#sections) {
        entries.push({ name, offset: at, length: data.length, checksum: checksum(data) });
        at = alignUp(at + data.length, 8);
      }
      const table = encodeSectionTable(entries);
      const fileSize = at + table.length + FOOTER_LENGTH;
      const tail = new Uint8Array(fileSize - indexOffset);
      tail.set(index, 0);
      for (const e of entries) tail.set(this.#sections.get(e.name)!, e.offset - indexOffset);
      tail.set(table, at - indexOffset);
      const header = this.#headerFields!;
      const t = this.#totals;
      const footer = encodeFooter({
        headerLength: header.headerLength,
        headerChecksum: header.headerChecksum,
        regionsOffset: header.regionsOffset,
        regionsLength: header.regionsLength,
        indexOffset,
        indexLength: index.length,
        indexChecksum: checksum(index),
        sectionsOffset: at,
        sectionsLength: table.length,
        sectionsChecksum: checksum(table),
        frameCount: this.#frames.length,
        fileSize,
        dataBytes: t.dataBytes,
      });
      tail.set(footer, tail.length - FOOTER_LENGTH);
      const end: FrameInfo = {
        offset: endAt,
        isEnd: true,
        count: 0,
        segment: 0,
        start: 0n,
        end: 0n,
        dataLength: tail.length,
        tableChecksum: 0n,
        frameChecksum: 0n,
      };
      this.#queueZeros(endAt);
      this.#queue(encodeFrameHeader(end));
      this.#queue(tail);
      this.#drain();
      if (this.#temp !== undefined) {
        if (this.#opts.fsync ?? true) check(libc.fsync(this.#fd), "fsync", this.#temp);
        close(this.#fd);
        this.#fd = -1;
        check(libc.rename(cstr(this.#temp), cstr(this.#path)), "rename", `${this.#temp} to ${this.#path}`);
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

  /** Stop writing and remove the temporary file. Idempotent; does nothing after a successful finalize. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#writing.catch(() => {}); // no write may still use the fd
    this.#pool = [];
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
    if (!this.#regions) this.setRegions([]);
    const { bytes, fields } = encodeHeaderBlock(
      {
        requiredFeatures: (this.#codec.id !== 0 ? REQUIRED.CODEC : 0n) |
          (this.#opts.sealer ? REQUIRED.ENCRYPTED : 0n),
        optionalFeatures: (this.#opts.detectZeros ?? this.#source.detectZeros) ? OPTIONAL.ZERO_DETECTED : 0n,
        pageSize: PAGE_SIZE,
        arch: ARCH_X86_64,
      },
      sourceInfo(this.#source.pid),
      this.#regions!,
      this.#opts.sealer?.params,
    );
    if (this.#opts.sealer) this.#digest = headerDigest(bytes);
    this.#headerFields = fields;
    this.#queue(bytes);
    this.#drain();
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

  #segmentOf(source: MemorySource): number {
    if (source.kind !== "segment") return 0;
    const i = this.#segments.indexOf(source);
    if (i < 0) throw new TypeError(`Cannot store segment "${source.name}": not declared in \`segments\``);
    return (this.#regions?.length ?? 0) - this.#segments.length + i + 1;
  }

  #claim(addr: bigint, n: number, source: MemorySource | undefined, what: string): number {
    this.#live();
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
    if (segment === 0 && !covered(this.#regions, addr, end)) {
      throw new RangeError(`Cannot ${what} ${hex(addr)}-${hex(end)}: not inside the image's regions`);
    }
    this.#lastEnd.set(segment, end);
    return segment;
  }

  /** Store `[addr, addr + n)` window by window: zero pages become holes, data becomes records. */
  async #storeRange(addr: bigint, n: number, segment: number, source: MemorySource): Promise<void> {
    const detect = this.#opts.detectZeros ?? source.detectZeros;
    for (let off = 0; off < n;) {
      const w = Math.min(n - off, source.window);
      const a = addr + BigInt(off);
      let local = source.direct(a, w);
      if (local === null) {
        this.#flush(); // the open frame may point into the bounce buffer the read reuses
        if (this.#codec.id !== 0 || this.#opts.sealer) {
          // Encoded chunks (and raw ones, copied by #encoded) are our own buffers: this window's writes run
          // behind, on a pool thread, while the next window is read and encoded; one window in flight at most.
          await this.#writing;
          this.#writeBehind();
        } else {
          this.#drain();
        }
        local = source.read(a, w);
      }
      if (detect) await this.#storeDetecting(local, a, w, segment);
      else await this.#data(local, a, w, segment);
      off += w;
    }
  }

  /**
   * Store runs of a pid source (raw images), with holes from `at` on between them and for zero pages. Batch
   * k + 1 is read, zero-scanned and checksummed in C on a pool thread (`cryo_gather`) while batch k's records
   * and frames are made here and earlier batches are written on another (write-behind, up to `writeBehind`
   * bytes of bounce buffers); a buffer is read into again only after its write has finished. Returns where the
   * last data ends.
   */
  async #gatherRuns(
    pairs: BigUint64Array,
    at: bigint,
    segment: number,
    source: MemorySource,
    signal?: AbortSignal,
  ): Promise<bigint> {
    const window = source.window;
    const slots = Math.max(3, Math.floor((this.#opts.writeBehind ?? 1 << 30) / window));
    if (this.#pool.length === 0) {
      this.#pool.push({ addr: source.bounce!(), busy: false, free: Promise.resolve() });
    }
    const detect = (this.#opts.detectZeros ?? source.detectZeros) ? 1 : 0;
    const maxPieces = Math.ceil(window / PAGE_SIZE);
    const sets = [0, 1].map(() => ({
      pieces: new BigUint64Array(3 * maxPieces),
      sums: new BigUint64Array(maxPieces),
      count: new BigUint64Array(1),
    }));
    const cursor = new BigUint64Array(2);
    const count = BigInt(pairs.length / 2);
    const read = async (k: number, slot: number) => {
      await this.#pool[slot].free; // its last write has finished
      const set = sets[k % 2];
      const got = await helper().cryo_gather(
        source.pid,
        ptrOf(this.#pool[slot].addr),
        BigInt(window),
        pairs,
        count,
        cursor,
        BigInt(PAGE_SIZE),
        detect,
        BigInt(MAX_FRAME_DATA),
        set.pieces,
        null, // checksummed below, on this thread, while the next batch is read
        BigInt(maxPieces),
        set.count,
      );
      if (got < 0n) {
        const i = Number(cursor[0]);
        const where = i < pairs.length / 2 ? hex(pairs[2 * i] + cursor[1]) : "the end";
        throw systemError("process_vm_readv", Number(-got), `pid ${source.pid} at ${where}`);
      }
      return set;
    };
    // A free buffer if there is one, else a new one while fewer than `slots`, else the one written longest ago:
    // memory grows only while the writes fall behind the reads.
    const nextSlot = (current = -1) => {
      let slot = this.#pool.findIndex((b) => !b.busy);
      if (slot < 0 && this.#pool.length < slots) {
        const buffer = new Uint8Array(window);
        const addr = addrOf(Deno.UnsafePointer.of(buffer));
        slot = this.#pool.push({ addr, buffer, busy: false, free: Promise.resolve() }) - 1;
      }
      while (slot < 0 || slot === current) { // never the buffer whose batch is being made into records
        slot = this.#oldest;
        this.#oldest = (this.#oldest + 1) % this.#pool.length;
      }
      this.#pool[slot].busy = true;
      return slot;
    };
    let slot = nextSlot();
    let next = count > 0n ? read(0, slot) : undefined;
    try {
      for (let k = 0; next; k++) {
        signal?.throwIfAborted();
        const { pieces, sums, count: n } = await next;
        unwrap(helper().cryo_checksums(pieces, n[0], 3n, sums), "cryo_checksums");
        const current = slot;
        if (cursor[0] < count) {
          slot = nextSlot(current);
          next = read(k + 1, slot); // on a pool thread, while this batch becomes records
          next.catch(() => {}); // observed when awaited
        } else next = undefined;
        for (let j = 0, np = Number(n[0]); j < np; j++) {
          const a = pieces[3 * j + 2], len = Number(pieces[3 * j + 1]), sum = sums[j];
          if (a > at) this.#hole(at, Number(a - at), segment);
          this.#append(dataRecord(a, len, segment, 0, len, sum, sum), pieces[3 * j]);
          at = a + BigInt(len);
        }
        this.#flush();
        const b = this.#pool[current], free = this.#writeBehind();
        b.free = free;
        free.then(() => b.free === free && (b.busy = false), () => {});
      }
    } catch (e) {
      await this.#writing.catch(() => {}); // no write or read may still use the fd or the buffers
      await next?.catch(() => {});
      throw e;
    }
    return at;
  }

  async #storeDetecting(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    const pages = Math.floor(len / PAGE_SIZE);
    if (this.#zeroScratch.length < pages) this.#zeroScratch = new Uint8Array(pages);
    const zero = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zeroScratch);
    let i = 0;
    while (i < pages) {
      let j = i;
      while (j < pages && zero[j] === zero[i]) j++;
      const off = i * PAGE_SIZE, l = (j - i) * PAGE_SIZE;
      if (zero[i]) this.#hole(addr + BigInt(off), l, segment);
      else await this.#data(local + BigInt(off), addr + BigInt(off), l, segment);
      i = j;
    }
    const tail = len - pages * PAGE_SIZE;
    if (tail > 0) {
      await this.#data(local + BigInt(pages * PAGE_SIZE), addr + BigInt(pages * PAGE_SIZE), tail, segment);
    }
  }

  async #data(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    if (this.#codec.id !== 0 || this.#opts.sealer) return await this.#encoded(local, addr, len, segment);
    this.#raw(local, addr, len, segment);
  }

  /** Raw records of `[addr, addr + len)` at `local`, at most a frame's data each. */
  #raw(local: bigint, addr: bigint, len: number, segment: number): void {
    for (let off = 0; off < len; off += MAX_FRAME_DATA) {
      const n = Math.min(MAX_FRAME_DATA, len - off);
      const p = local + BigInt(off);
      const sum = checksumAt(p, BigInt(n));
      this.#append(dataRecord(addr + BigInt(off), n, segment, 0, n, sum, sum), p);
    }
  }

  async #encoded(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    const sealer = this.#opts.sealer;
    const digest = sealer ? await this.#digest! : undefined;
    const offsets: number[] = [];
    for (let off = 0; off < len; off += this.#chunkSize) offsets.push(off);
    // Encode (and seal) on pool threads, `window` chunks at once; records are added in input order.
    const work = async (off: number, i: number) => {
      const n = Math.min(this.#chunkSize, len - off);
      const p = local + BigInt(off);
      const src = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(p)!, n));
      const [decoded, encoded] = await Promise.all([
        sealer ? 0n : checksumAtAsync(p, BigInt(n)), // on a pool thread too; a sealed record keeps no plain checksum
        this.#codec.encode(src),
      ]);
      let enc = encoded;
      if (enc !== null && enc.length >= n) enc = null;
      const codec = enc === null ? 0 : this.#codec.id;
      const a = addr + BigInt(off);
      if (!sealer) return { off, n, a, codec, enc, decoded };
      const sealed = await sealer.seal(enc ?? src, chunkAad(this.#ordinal + i, a, n, codec, segment, digest));
      return { off, n, a, codec, enc: sealed, decoded };
    };
    const first = this.#ordinal;
    for await (const c of ordered(offsets, work, this.#opts.window)) {
      if (c.enc === null) {
        const copy = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(local + BigInt(c.off))!, c.n))
          .slice();
        const r = dataRecord(c.a, c.n, segment, 0, c.n, c.decoded, c.decoded);
        this.#append(r, addrOf(Deno.UnsafePointer.of(copy)), copy); // a copy: the source may be a bounce buffer
      } else {
        const r = dataRecord(c.a, c.n, segment, c.codec, c.enc.length, checksum(c.enc), c.decoded);
        r.flags = sealer ? RECORD_FLAG.ENCRYPTED : 0;
        this.#append(r, addrOf(Deno.UnsafePointer.of(c.enc)), c.enc);
      }
    }
    this.#ordinal = first + offsets.length;
  }

  /** The open frame, if its range ends at `addr` in `segment`; else flush it and open one at `addr`. */
  #cover(segment: number, addr: bigint): OpenFrame {
    const f = this.#frame;
    if (f && f.segment === segment && f.end === addr) return f;
    this.#flush();
    this.#frame = { segment, start: addr, end: addr, records: [], ptrs: [], keep: [], stored: 0, owned: 0 };
    return this.#frame;
  }

  /** Add a data record whose stored bytes are at `ptr` (kept alive by `keep`) to the open frame. */
  #append(r: ImageRecord, ptr: bigint, keep?: Uint8Array): void {
    let f = this.#cover(r.segment, r.address);
    if (
      f.records.length >= MAX_FRAME_RECORDS ||
      (f.records.length && f.stored + r.storedLength > MAX_FRAME_DATA)
    ) {
      this.#flush();
      f = this.#cover(r.segment, r.address);
    }
    f.records.push(r);
    f.ptrs.push(ptr);
    if (keep) f.keep.push(keep);
    f.stored += r.storedLength;
    f.end = r.address + BigInt(r.length);
    const t = this.#totals;
    t.records++;
    t.dataRecords++;
    t.dataBytes += r.length;
    t.storedBytes += r.storedLength;
    this.#lastKind = KIND.DATA;
  }

  #hole(addr: bigint, len: number, segment: number): void {
    const f = this.#cover(segment, addr);
    f.end = addr + BigInt(len);
    this.#totals.holeBytes += len;
    if (this.#lastKind !== KIND.HOLE || this.#lastSegment !== segment || this.#lastHoleEnd !== addr) {
      this.#totals.records++;
    }
    this.#lastKind = KIND.HOLE;
    this.#lastSegment = segment;
    this.#lastHoleEnd = f.end;
  }

  /** Write the open frame: zero padding, header, table, then each record's padding and data (writev). */
  #flush(): void {
    const f = this.#frame;
    if (!f) return;
    this.#frame = undefined;
    if (f.end === f.start) return;
    const info: FrameInfo = {
      offset: alignUp(this.#pos, 8),
      isEnd: false,
      count: f.records.length,
      segment: f.segment,
      start: f.start,
      end: f.end,
      dataLength: 0,
      tableChecksum: 0n,
      frameChecksum: 0n,
    };
    info.dataLength = layoutFrame(info, f.records, PAGE_SIZE).dataLength;
    const table = encodeTable(f.records);
    info.tableChecksum = checksum(table);
    const header = encodeFrameHeader(info);
    this.#queueZeros(info.offset);
    this.#queue(header);
    this.#queue(table);
    f.records.forEach((r, i) => {
      this.#queueZeros(r.fileOffset);
      this.#queueAt(f.ptrs[i], r.storedLength);
    });
    this.#keep.push(...f.keep);
    this.#frames.push(info);
    if (this.#opts.sealer) this.#tables.push(table);
  }

  /**
   * End of a store call: write what is queued, and copy the open frame's data into memory of our own (it may
   * point into the caller's memory or a bounce buffer), so the image holds the bytes as they were stored.
   */
  async #settle(): Promise<void> {
    if (this.#iovCount) {
      await this.#writing;
      this.#drain();
    }
    const f = this.#frame;
    if (!f || f.owned === f.records.length) return;
    let total = 0;
    for (let i = f.owned; i < f.records.length; i++) total += f.records[i].storedLength;
    const copy = new Uint8Array(total);
    let at = addrOf(Deno.UnsafePointer.of(copy));
    for (let i = f.owned; i < f.records.length; i++) {
      const n = f.records[i].storedLength;
      libc.memcpy(ptrOf(at), ptrOf(f.ptrs[i]), BigInt(n));
      f.ptrs[i] = at;
      at += BigInt(n);
    }
    f.keep.push(copy);
    f.owned = f.records.length;
  }

  #queueZeros(to: number): void {
    if (to < this.#pos) throw new RangeError(`Cannot seek back from ${this.#pos} to ${to}`);
    for (let n = to - this.#pos; n > 0; n -= ZEROS.length) {
      this.#queueAt(ZEROS_ADDR, Math.min(n, ZEROS.length));
    }
  }

  #queue(bytes: Uint8Array): void {
    if (bytes.length) {
      this.#keep.push(bytes);
      this.#queueAt(addrOf(Deno.UnsafePointer.of(bytes)), bytes.length);
    }
  }

  /**
   * Queue `len` bytes at `ptr` for the next write, merging with the previous iovec when contiguous. `#pos` is
   * where the file will end once the queue is written.
   */
  #queueAt(ptr: bigint, len: number): void {
    if (len === 0) return;
    const n = this.#iovCount;
    if (n > 0 && this.#iov[2 * n - 2] + this.#iov[2 * n - 1] === ptr && ptr !== ZEROS_ADDR) {
      this.#iov[2 * n - 1] += BigInt(len);
    } else {
      if (2 * n === this.#iov.length) {
        const grown = new BigUint64Array(2 * this.#iov.length);
        grown.set(this.#iov);
        this.#iov = grown;
      }
      this.#iovCount++;
      this.#iov[2 * n] = ptr;
      this.#iov[2 * n + 1] = BigInt(len);
    }
    this.#pos += len;
  }

  /** Take the queue (iovecs and the buffers they point into) for writing. */
  #takeQueue(): { iov: BigUint64Array<ArrayBuffer>; count: number; keep: Uint8Array[] } {
    const q = { iov: this.#iov, count: this.#iovCount, keep: this.#keep };
    this.#iov = this.#spareIov ?? new BigUint64Array(2 * IOV_MAX);
    this.#spareIov = undefined;
    this.#iovCount = 0;
    this.#keep = [];
    return q;
  }

  /** Write every queued iovec now (writev, at most 1024 a call, resuming after partial writes). */
  #drain(): void {
    if (this.#iovCount === 0) return;
    const q = this.#takeQueue();
    for (let i = 0; i < q.count;) i = this.#advance(q.iov, i, this.#writevNow(q.iov, i, q.count));
    this.#spareIov = q.iov;
  }

  /**
   * Write every queued iovec on a pool thread, after the writes already in flight; the returned promise (also
   * the new `#writing`) settles when they are written, and the memory they point into may be reused.
   */
  #writeBehind(): Promise<void> {
    const q = this.#takeQueue();
    const done = this.#writing.then(() => this.#writeQueue(q));
    done.catch(() => {}); // observed through `#writing` by the next call, finalize() or abort()
    this.#writing = done;
    return done;
  }

  async #writeQueue(
    q: { iov: BigUint64Array<ArrayBuffer>; count: number; keep: Uint8Array[] },
  ): Promise<void> {
    for (let i = 0; i < q.count;) {
      let n = await libc.writev_nb(this.#fd, q.iov.subarray(2 * i), Math.min(q.count - i, IOV_MAX));
      if (n <= 0n) n = this.#writevNow(q.iov, i, q.count); // errno is not readable on a pool thread: retry here
      i = this.#advance(q.iov, i, n);
    }
    this.#spareIov = q.iov;
  }

  #writevNow(iov: BigUint64Array, i: number, count: number): bigint {
    for (;;) {
      const n = libc.writev(this.#fd, iov.subarray(2 * i), Math.min(count - i, IOV_MAX));
      if (n > 0n) return n;
      const e = n < 0n ? errno() : 28; /* ENOSPC */
      if (e === 4 /* EINTR */) continue;
      throw systemError("writev", e, `${this.#path} (${this.#pos} bytes when written)`);
    }
  }

  /** Skip `n` written bytes of the iovecs from `i`; returns the first iovec not fully written. */
  #advance(iov: BigUint64Array, i: number, n: bigint): number {
    while (n > 0n) {
      if (n >= iov[2 * i + 1]) {
        n -= iov[2 * i + 1];
        i++;
      } else {
        iov[2 * i] += n;
        iov[2 * i + 1] -= n;
        n = 0n;
      }
    }
    return i;
  }
}

function dataRecord(
  address: bigint,
  length: number,
  segment: number,
  codec: number,
  storedLength: number,
  sum: bigint,
  decodedChecksum: bigint,
): ImageRecord {
  return {
    address,
    length,
    kind: KIND.DATA,
    fileOffset: 0,
    storedLength,
    checksum: sum,
    decodedChecksum,
    codec,
    flags: 0,
    segment,
  };
}

/**
 * Whether `[start, end)` is covered by `regions` (absolute ones), allowing adjacent regions.
 *
 * @param regions The regions.
 * @param start First address.
 * @param end One past the last.
 * @returns True when every byte is inside some region.
 */
export function covered(regions: readonly ImageRegion[], start: bigint, end: bigint): boolean {
  let at = start;
  const abs = regions.filter((r) => !r.relocatable);
  for (let progress = true; at < end && progress;) {
    progress = false;
    for (const r of abs) {
      if (r.start <= at && at < r.end) {
        at = r.end;
        progress = true;
      }
    }
  }
  return at >= end;
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

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function syncDir(path: string): void {
  const slash = path.lastIndexOf("/");
  const dir = slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
  const fd = libc.open(cstr(dir), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0);
  if (fd < 0) return;
  libc.fsync(fd);
  libc.close(fd);
}
