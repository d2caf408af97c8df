/**
 * The image writer: `store()` persists runs from a memory source, `storeGap()` records holes, `finalize()`
 * writes the END frame, index, sections and footer, fsyncs and renames into place. See docs/FORMAT.md.
 *
 * @module
 */

import { O, SEEK } from "../../ffi/constants.ts";
import { check, close, cstr, errno, hex, libc, open, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { type Codec, raw } from "../codec.ts";
import type { Region } from "../region.ts";
import { findZeroPages } from "../zero.ts";
import { checksum, checksumAt, checksumAtAsync, Checksummer } from "./checksum.ts";
import { compareRecord, indexProblem, recordEnd } from "./index.ts";
import {
  alignUp,
  ARCH_X86_64,
  encodeFooter,
  encodeFrame,
  encodeHeaderBlock,
  encodeIndex,
  encodeSectionTable,
  FOOTER_LENGTH,
  FRAME_LENGTH,
  frameDataOffset,
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

interface OpenRecord {
  record: ImageRecord;
  frameOffset: number;
  hasher: Checksummer;
}

const ZEROS = new Uint8Array(PAGE_SIZE);

/** Writes one image. Create with {@link MemoryPersister.create}; always `finalize()` or `abort()`. */
export class MemoryPersister implements AsyncDisposable {
  readonly #path: string;
  readonly #temp: string | undefined;
  #fd: number;
  readonly #ownsFd: boolean;
  readonly #seekable: boolean;
  readonly #source: MemorySource;
  readonly #segments: MemorySource[];
  readonly #opts: PersisterOptions;
  readonly #codec: Codec;
  readonly #chunkSize: number;
  #regions: ImageRegion[] | undefined;
  #pos = 0;
  #headerWritten = false;
  #records: ImageRecord[] = [];
  #lastEnd = new Map<number, bigint>();
  #open: OpenRecord | undefined;
  #hasher: Checksummer | undefined;
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
    this.#seekable = libc.lseek(fd, 0n, SEEK.CUR) >= 0n;
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
      const detect = this.#opts.detectZeros ?? source.detectZeros;
      for (let off = 0; off < n;) {
        const w = Math.min(n - off, source.window);
        const a = addr + BigInt(off);
        const local = source.direct(a, w) ?? source.read(a, w);
        if (detect) await this.#storeDetecting(local, a, w, segment);
        else await this.#data(local, a, w, segment);
        off += w;
      }
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
    await this.#guard(async () => {
      this.#writeHeader();
      await this.#hole(addr, n, seg);
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
      await this.#closeOpen();
      const records = [...this.#records].sort(compareRecord);
      const problem = indexProblem(records);
      if (problem) throw new RangeError(`Cannot finalize: ${problem.message}`);
      const indexOffset = frameDataOffset(this.#pos, PAGE_SIZE);
      const index = encodeIndex(records);
      if (this.#opts.sealer) {
        const others = [...this.#sections].filter(([n]) => n !== SEAL_SECTION).map(([name, data]) => ({
          name,
          data,
        }));
        const mac = await metadataMac(this.#opts.sealer, await this.#digest!, index, others);
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
      const data = records.filter((r) => r.kind === KIND.DATA);
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
        recordCount: records.length,
        fileSize,
        dataBytes: data.reduce((s, r) => s + r.length, 0),
      });
      tail.set(footer, tail.length - FOOTER_LENGTH);
      const end = encodeFrame(emptyRecord(tail.length), true);
      this.#skipTo(indexOffset - FRAME_LENGTH);
      this.#write(end);
      this.#write(tail);
      if (this.#temp !== undefined) {
        if (this.#opts.fsync ?? true) check(libc.fsync(this.#fd), "fsync", this.#temp);
        close(this.#fd);
        this.#fd = -1;
        check(libc.rename(cstr(this.#temp), cstr(this.#path)), "rename", `${this.#temp} to ${this.#path}`);
        if (this.#opts.fsync ?? true) syncDir(this.#path);
      }
      this.#done = true;
      this.#hasher?.close();
      return {
        path: this.#path,
        fileSize,
        records: records.length,
        dataRecords: data.length,
        holeRecords: records.length - data.length,
        dataBytes: data.reduce((s, r) => s + r.length, 0),
        holeBytes: records.reduce((s, r) => s + (r.kind === KIND.HOLE ? r.length : 0), 0),
        storedBytes: data.reduce((s, r) => s + r.storedLength, 0),
      };
    });
  }

  /** Stop writing and remove the temporary file. Idempotent; does nothing after a successful finalize. */
  abort(): Promise<void> {
    if (this.#done) return Promise.resolve();
    this.#done = true;
    this.#hasher?.close();
    if (this.#fd >= 0 && this.#ownsFd) libc.close(this.#fd);
    this.#fd = -1;
    if (this.#temp !== undefined) libc.unlink(cstr(this.#temp));
    return Promise.resolve();
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
    this.#write(bytes);
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

  async #storeDetecting(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    const pages = Math.floor(len / PAGE_SIZE);
    if (this.#zeroScratch.length < pages) this.#zeroScratch = new Uint8Array(pages);
    const zero = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zeroScratch);
    let i = 0;
    while (i < pages) {
      let j = i;
      while (j < pages && zero[j] === zero[i]) j++;
      const off = i * PAGE_SIZE, l = (j - i) * PAGE_SIZE;
      if (zero[i]) await this.#hole(addr + BigInt(off), l, segment);
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
    if (!this.#seekable) {
      await this.#closeOpen();
      const sum = checksumAt(local, BigInt(len));
      const r = dataRecord(addr, len, segment, 0, len, sum, sum);
      this.#frame(r);
      this.#writeAt(local, len);
      return;
    }
    const o = this.#open;
    if (!o || o.record.segment !== segment || recordEnd(o.record) !== addr) {
      await this.#closeOpen();
      const dataOffset = frameDataOffset(this.#pos, PAGE_SIZE);
      this.#skipTo(dataOffset);
      this.#hasher ??= new Checksummer();
      const record = dataRecord(addr, 0, segment, 0, 0, 0n, 0n);
      record.fileOffset = dataOffset;
      this.#records.push(record);
      this.#open = { record, frameOffset: dataOffset - FRAME_LENGTH, hasher: this.#hasher.reset() };
    }
    const open = this.#open!;
    const hashing = open.hasher.updateAtAsync(local, BigInt(len)); // overlaps with the write below
    try {
      this.#writeAt(local, len);
    } finally {
      await hashing;
    }
    open.record.length += len;
    open.record.storedLength += len;
  }

  async #encoded(local: bigint, addr: bigint, len: number, segment: number): Promise<void> {
    await this.#closeOpen();
    const sealer = this.#opts.sealer;
    const digest = sealer ? await this.#digest! : undefined;
    const offsets: number[] = [];
    for (let off = 0; off < len; off += this.#chunkSize) offsets.push(off);
    // Encode (and seal) on pool threads, `window` chunks at once; frames are written in input order.
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
      const flags = sealer ? RECORD_FLAG.ENCRYPTED : 0;
      if (c.enc === null) {
        this.#frame(dataRecord(c.a, c.n, segment, 0, c.n, c.decoded, c.decoded));
        this.#writeAt(local + BigInt(c.off), c.n);
      } else {
        const r = dataRecord(c.a, c.n, segment, c.codec, c.enc.length, checksum(c.enc), c.decoded);
        r.flags = flags;
        this.#frame(r);
        this.#write(c.enc);
      }
    }
    this.#ordinal = first + offsets.length;
  }

  /** Write a complete record's frame header (streams, codecs) and register the record. */
  #frame(r: ImageRecord): void {
    const dataOffset = frameDataOffset(this.#pos, PAGE_SIZE);
    this.#skipTo(dataOffset - FRAME_LENGTH);
    this.#write(encodeFrame(r));
    r.fileOffset = dataOffset;
    this.#records.push(r);
  }

  async #hole(addr: bigint, len: number, segment: number): Promise<void> {
    await this.#closeOpen();
    const last = this.#records[this.#records.length - 1];
    if (last && last.kind === KIND.HOLE && last.segment === segment && recordEnd(last) === addr) {
      last.length += len;
      return;
    }
    this.#records.push({ ...emptyRecord(0), address: addr, length: len, kind: KIND.HOLE, segment });
  }

  #closeOpen(): Promise<void> {
    const o = this.#open;
    if (!o) return Promise.resolve();
    this.#open = undefined;
    o.record.checksum = o.record.decodedChecksum = o.hasher.digest();
    const frame = encodeFrame(o.record);
    const n = libc.pwrite(
      this.#fd,
      Deno.UnsafePointer.of(frame),
      BigInt(frame.length),
      BigInt(o.frameOffset),
    );
    if (n !== BigInt(frame.length)) {
      throw systemError("pwrite", n < 0n ? errno() : 5, `${this.#path} frame header`);
    }
    return Promise.resolve();
  }

  #skipTo(offset: number): void {
    if (offset < this.#pos) throw new RangeError(`Cannot seek back from ${this.#pos} to ${offset}`);
    if (this.#seekable) {
      if (offset > this.#pos) check(libc.lseek(this.#fd, BigInt(offset), SEEK.SET), "lseek", this.#path);
      this.#pos = offset;
      return;
    }
    while (this.#pos < offset) this.#write(ZEROS.subarray(0, Math.min(ZEROS.length, offset - this.#pos)));
  }

  #write(bytes: Uint8Array): void {
    if (bytes.length) {
      this.#writeAt(BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), bytes.length);
    }
  }

  #writeAt(addr: bigint, len: number): void {
    let done = 0;
    while (done < len) {
      const n = libc.write(this.#fd, ptrOf(addr + BigInt(done)), BigInt(Math.min(len - done, 1 << 30)));
      if (n < 0n) {
        const e = errno();
        if (e === 4 /* EINTR */) continue;
        throw systemError("write", e, `${this.#path} at offset ${this.#pos}`);
      }
      if (n === 0n) throw systemError("write", 28, /* ENOSPC */ `${this.#path} at offset ${this.#pos}`);
      done += Number(n);
      this.#pos += Number(n);
    }
  }
}

function emptyRecord(storedLength: number): ImageRecord {
  return {
    address: 0n,
    length: 0,
    kind: KIND.DATA,
    fileOffset: 0,
    storedLength,
    checksum: 0n,
    decodedChecksum: 0n,
    codec: 0,
    flags: 0,
    segment: 0,
  };
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
  return { ...emptyRecord(storedLength), address, length, segment, codec, checksum: sum, decodedChecksum };
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

function syncDir(path: string): void {
  const slash = path.lastIndexOf("/");
  const dir = slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
  const fd = libc.open(cstr(dir), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0);
  if (fd < 0) return;
  libc.fsync(fd);
  libc.close(fd);
}
