/**
 * The image file's loader: `MemoryLoader.open()` reads the footer, checks bounds, reads the header and the index
 * (with the frame reader, lib/image/reader.ts, over `pread`);
 * `verify()` is the full verification pass; `checkTarget()` compares the destination; `load()` verifies,
 * checks, then drives loading from the index (copy or map data, zero holes). Read access for `inspect`/`diff`:
 * header, source, regions, records, sections, and a record's decoded bytes.
 *
 * @module
 */

import { MADV, MAP, O, PROT } from "../../ffi/constants.ts";
import { errno, libc, mmap, munmap, open, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { type Codec, INLINE_BYTES, raw } from "../codecs/codec.ts";
import { codecForId } from "../codecs/select.ts";
import { defaultWindow, forEachOrdered } from "../codecs/pool.ts";
import { CryoError, ImageError, KeyError, LayoutMismatchError } from "../errors.ts";
import { checksum } from "./checksum.ts";
import {
  type ImageRecord,
  type ImageRegion,
  KIND,
  RECORD_FLAG,
  REQUIRED,
  uncoveredMeaning,
} from "./format.ts";
import { IndexRecords } from "./records.ts";
import type { Footer } from "./footer.ts";
import type { HeaderFields, SourceInfo } from "./header.ts";
import type { SectionEntry } from "./sections.ts";
import { FileSource, MappedSource } from "./byte_source.ts";
import { fileStamp } from "./file_stamp.ts";
import { helper } from "../../ffi/helper.ts";

const EIO = 5;
import { type ImageHead, type ImageIndex, readImageHead, readImageIndex } from "./reader.ts";
import { checkStructure, verifyDecoded, verifyImage } from "./verify.ts";
import { refuseIncremental } from "./rules.ts";
import { compareTarget, type LoadTarget, type RegionPlan, segmentBytes, targetName } from "./targets.ts";
import { clearRange, mapRun, protOf } from "./lazy.ts";
import { RemoteWriter } from "./remote.ts";
import { BOUNCE_BYTES, BouncedWrites } from "./bounce.ts";

/** Bytes of the mapped image read by a load between two releases of its pages. */
const RELEASE_EVERY = 16 << 20;
import type { FrameInfo } from "./frames.ts";

/**
 * Indexes of the images used last, by their file's stamp (lib/image/file_stamp.ts): at most {@link INDEXES}, the
 * least recently used dropped first. An index holds its frame directory, not its records (lib/image/records.ts),
 * so a whole chain's fit: with 16, kept in the order they were read, every incremental checkpoint over a chain
 * of more than 16 images read all of their indexes again.
 */
const indexes = new Map<string, ImageIndex>();
const INDEXES = 256;
/**
 * The cached indexes whose structure (`checkStructure`: bounds, frame ranges, every record's fields and order)
 * has been checked: it depends on nothing but the index, so a file opened again unchanged is not walked again
 * (for a chain's full image of 1 GiB, 6-7 ms of each incremental checkpoint's opening of its chain).
 */
const structureChecked = new WeakSet<ImageIndex>();

/** Raw runs shorter than this are copied, not mapped, by a lazy load (each mapping costs a VMA). */
export const LAZY_MAP_MIN = 64 << 10;

/** What {@link MemoryLoader.load} did. */
export interface LoadSummary {
  /** Bytes copied (read from the image, or decoded). */
  copiedBytes: number;
  /** Bytes mapped straight from the image (lazy). */
  mappedBytes: number;
  /** Bytes of holes made zero. */
  holeBytes: number;
  /** Regions that were free and were mapped. */
  mappedRegions: number;
}

/** An open image. Close it (or `using`) when done; lazily mapped memory stays valid after close. */
export class MemoryLoader implements Disposable {
  /** The image file. */
  readonly path: string;
  /** Its size. */
  readonly fileSize: number;
  /** The footer. */
  readonly footer: Footer;
  /** The fixed header's fields. */
  readonly header: HeaderFields;
  /** Where the image came from. */
  readonly source: SourceInfo;
  /** The region table. */
  readonly regions: readonly ImageRegion[];
  /** The frame directory (the index), in file order. */
  readonly frames: readonly FrameInfo[];
  /**
   * The records the frames describe (data and holes), sorted by (segment, address), read a frame at a time
   * (lib/image/records.ts): walk them, or find one, without holding them all.
   */
  readonly index: IndexRecords;
  /** The section table. */
  readonly sections: readonly SectionEntry[];
  #fd: number;
  readonly #src: FileSource;
  #base = 0n;
  /** Views of the mapping at {@link #base}, made on first use. */
  #view: MappedSource | undefined;
  #verified = false;
  #structureChecked = false;
  readonly #codecs: Map<number, Codec>;

  private constructor(src: FileSource, index: ImageIndex, codecs: readonly Codec[]) {
    this.path = src.path;
    this.#fd = src.fd;
    this.#src = src;
    this.fileSize = src.size;
    this.#codecs = new Map([[0, raw], ...codecs.map((c) => [c.id, c] as const)]);
    for (const id of [1, 2]) {
      const c = this.#codecs.get(id) ?? codecForId(id);
      if (c) this.#codecs.set(id, c);
    }
    this.footer = index.footer;
    this.header = index.header;
    this.source = index.source;
    this.regions = index.regions;
    this.frames = index.frames;
    const uncovered = uncoveredMeaning(index.header.requiredFeatures);
    this.index = new IndexRecords(
      src,
      index.frames,
      index.tableChecksums,
      index.header.pageSize,
      uncovered,
    );
    this.sections = index.sections;
    if (!structureChecked.has(index)) {
      checkStructure(this.#parts());
      structureChecked.add(index);
    }
    this.#structureChecked = true;
  }

  /**
   * Open an image: footer first, then bounds, then header and index, read by the frame reader
   * (lib/image/reader.ts; their checksums and order are checked; data is not read until {@link verify} or
   * {@link load}). The index of a file this process opened before is reused while the file's `statx` stamp
   * (device, inode, size, modification and change times to the nanosecond) is the same: any write to it moves
   * its change time, and then it is read and checked again.
   *
   * @param path The image file.
   * @param opts `codecs`: codecs for compressed records (default: raw, zstd and lz4 from lib/codecs).
   * @returns The loader.
   */
  static async open(path: string, opts: { codecs?: readonly Codec[] } = {}): Promise<MemoryLoader> {
    const fd = open(path, O.RDONLY | O.CLOEXEC);
    try {
      const src = new FileSource(path, fd, Deno.statSync(path).size);
      // The index of a file opened before and unchanged since (its statx stamp) is not read again: a chain's
      // full image has a frame per MiB or so, and an incremental checkpoint opens its chain each time.
      const stamp = fileStamp(fd, path);
      let index = indexes.get(stamp);
      if (index) indexes.delete(stamp); // set again below: the most recently used last
      else index = await readImageIndex(src, src.size);
      indexes.set(stamp, index);
      if (indexes.size > INDEXES) indexes.delete(indexes.keys().next().value!);
      return new MemoryLoader(src, index, opts.codecs ?? []);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
  }

  /**
   * Read what an image file is (its footer) and which regions it holds (its header block), checked, without
   * opening it: {@link open} checks every record, which for an image of half a million records costs tens of MiB
   * of this process's memory in passing.
   *
   * @param path The image file.
   * @returns Its footer, header fields and region table.
   * @throws {ImageError} When they are damaged.
   */
  static async head(path: string): Promise<ImageHead> {
    const fd = open(path, O.RDONLY | O.CLOEXEC);
    try {
      const size = Deno.statSync(path).size;
      return await readImageHead(new FileSource(path, fd, size), size);
    } finally {
      libc.close(fd);
    }
  }

  /**
   * Every record (data and holes) in an array, sorted by (segment, address): made on each call, as much memory
   * as the index holds records (about 160 bytes each); operations walk {@link index} instead.
   *
   * @returns The records.
   */
  get records(): readonly ImageRecord[] {
    return this.index.toArray();
  }

  /** Whether the records are encrypted (their contents need the key: see lib/image/stream.ts). */
  get encrypted(): boolean {
    return (this.header.requiredFeatures & REQUIRED.ENCRYPTED) !== 0n;
  }

  /** Whether {@link verify} has passed. */
  get verified(): boolean {
    return this.#verified;
  }

  /**
   * The full verification pass (footer, header, this machine's page size and architecture, bounds, index,
   * padding, frames, every checksum), then every compressed, unencrypted record decoded (on the codec pool, a
   * bounded window at a time) and its decoded checksum checked, so that a record that would fail to decode is
   * found before anything is written. Encrypted records need the key: `verifyStream()` authenticates and
   * decodes them. Throws {@link ImageError} naming the file and offset. Runs once; later calls return at once.
   *
   * @param onProgress Called as it goes: in the `verify` pass with the file offset checked up to, in the
   *   `decode` pass with the decoded bytes checked so far.
   */
  async verify(onProgress?: (pass: "verify" | "decode", bytes: number) => void): Promise<void> {
    if (this.#verified) return;
    const parts = this.#parts();
    const longest = await verifyImage(parts, onProgress && ((n) => onProgress("verify", n)));
    await verifyDecoded(
      parts,
      (id) => this.#codecs.get(id),
      undefined,
      onProgress && ((n) => onProgress("decode", n)),
      longest,
    );
    this.#verified = true;
  }

  /**
   * Compare the target with what the image needs; throw {@link LayoutMismatchError} listing every difference.
   *
   * @param target The destination.
   * @returns The plan for each absolute region.
   */
  checkTarget(target: LoadTarget): RegionPlan[] {
    const { differences, plan } = compareTarget(this.regions, this.frames, target);
    if (differences.length) throw new LayoutMismatchError(targetName(target), differences);
    return plan;
  }

  /**
   * The stored bytes of a data record, zero-copy: a view of the mapped image, valid until {@link close}. For a
   * raw record these are its decoded bytes too. Not checked against the record's checksum: {@link verify} first,
   * or use {@link readRecord}.
   *
   * @param r A record of this image.
   * @returns The view.
   */
  storedBytes(r: ImageRecord): Uint8Array {
    return this.#stored(r);
  }

  /**
   * Where a data record's stored bytes are in this process: an address in the mapped image, valid until
   * {@link close}, as {@link storedBytes} but with no view (or pointer object) made, for callers that read many
   * records (lib/image/chain_flatten.ts: a flatten of 524,288 records peaked 10-25 MiB lower).
   *
   * @param r A data record of this image.
   * @returns The address.
   */
  storedAddress(r: ImageRecord): bigint {
    return this.#mapped() + BigInt(r.fileOffset);
  }

  /**
   * Read many pieces of stored bytes into local memory with `pread`, all in one helper call
   * (`cryo_pread_many`): a few scattered pages of a large image cost a read each, not a page fault each in a
   * mapping of it. Each piece is a triple in `ops`: local address, length, and offset in the file (a record's
   * `fileOffset` plus the offset in its stored bytes). Not checked against checksums (verify first).
   *
   * @param ops Triples `[dst0, len0, at0, dst1, …]`.
   * @param n How many triples.
   * @throws {ImageError} When a piece lies past the file's end.
   */
  readStoredMany(ops: BigUint64Array, n: number): void {
    if (this.#fd < 0) throw new TypeError(`Cannot use the closed image ${this.path}`);
    for (let i = 0; i < n; i++) {
      if (Number(ops[3 * i + 2] + ops[3 * i + 1]) > this.fileSize) {
        throw new ImageError(this.path, Number(ops[3 * i + 2]), "a read past the end of the file");
      }
    }
    const failed = new BigUint64Array(1);
    const r = Number(helper().cryo_pread_many(this.#fd, ops, BigInt(n), failed));
    if (r >= 0) return;
    const at = Number(ops[3 * Number(failed[0]) + 2]);
    if (-r === EIO) throw new ImageError(this.path, at, "unexpected end of file");
    throw systemError("pread", -r, `${this.path} at ${at}`);
  }

  /**
   * The open file's stamp (lib/image/file_stamp.ts): equal stamps mean unchanged contents.
   *
   * @returns `dev:ino:size:mtime:ctime`.
   */
  stamp(): string {
    if (this.#fd < 0) throw new TypeError(`Cannot use the closed image ${this.path}`);
    return fileStamp(this.#fd, this.path);
  }

  /**
   * The record containing `address` (in `segment`, 0 for absolute addresses), by binary search.
   *
   * @param address The address.
   * @param segment The segment.
   * @returns The record, or undefined.
   */
  findRecord(address: bigint, segment = 0): ImageRecord | undefined {
    return this.index.find(address, segment);
  }

  /**
   * A record's decoded bytes (zeros for a hole), its checksum checked.
   *
   * @param r A record of this image.
   * @param dst Where to put them (its length must be `r.length`); a new buffer if omitted.
   * @returns The bytes.
   */
  async readRecord(r: ImageRecord, dst: Uint8Array = new Uint8Array(r.length)): Promise<Uint8Array> {
    if (dst.length !== r.length) throw new RangeError(`Cannot read ${r.length} bytes into ${dst.length}`);
    if (r.kind === KIND.HOLE) {
      dst.fill(0);
      return dst;
    }
    if (r.flags & RECORD_FLAG.ENCRYPTED) {
      const at = hex(r.address);
      throw new KeyError(`Cannot read ${this.path} at ${at}: the record is encrypted (read it with the key)`);
    }
    await this.#decode(r, this.#checked(r), dst);
    return dst;
  }

  /** {@link readRecord} of a data record on this thread, when its codec can (`decodeNow`): whether it did. */
  #readNow(r: ImageRecord, dst: Uint8Array): boolean {
    if (r.flags & RECORD_FLAG.ENCRYPTED) return false; // readRecord says why
    const stored = this.#checked(r);
    let done: boolean;
    try {
      done = this.#codec(r).decodeNow?.(stored, dst) ?? false;
    } catch (e) {
      throw this.#undecodable(r, e);
    }
    if (done) this.#checkDecoded(r, dst);
    return done;
  }

  /** A data record's stored bytes, their checksum checked. */
  #checked(r: ImageRecord): Uint8Array {
    const stored = this.#stored(r);
    if (checksum(stored) !== r.checksum) {
      throw new ImageError(this.path, r.fileOffset, "data checksum mismatch");
    }
    return stored;
  }

  /**
   * A section's bytes, checksum checked.
   *
   * @param name The section's name.
   * @returns The bytes, or undefined when there is no such section.
   */
  section(name: string): Uint8Array | undefined {
    const s = this.sections.find((x) => x.name === name);
    if (!s) return undefined;
    const b = this.#src.read(s.offset, s.length, `section "${name}"`);
    if (checksum(b) !== s.checksum) {
      throw new ImageError(this.path, s.offset, `section "${name}" checksum mismatch`);
    }
    return b;
  }

  /**
   * Load the image into `target`: verify (once), check the target (nothing is written on a mismatch), then
   * for each record copy (or, for a lazy self target, map) the data and zero the holes.
   *
   * @param target The destination.
   * @returns What was done.
   */
  async load(target: LoadTarget): Promise<LoadSummary> {
    await this.verify();
    refuseIncremental(this.path, this.header);
    this.#unmapView(); // so that our own mapping of the image is not mistaken for (or placed in) the target
    const plan = this.checkTarget(target);
    // Without the features CODEC and ENCRYPTED no record is compressed or encrypted (checked at open).
    const compressed = (this.header.requiredFeatures & REQUIRED.CODEC) !== 0n;
    if (this.encrypted) throw new CryoError(`Cannot load ${this.path}: records are encrypted`);
    // A record whose codec is not given was refused by verify() (it decodes them all), before anything here.
    const summary: LoadSummary = { copiedBytes: 0, mappedBytes: 0, holeBytes: 0, mappedRegions: 0 };
    const segBase = new Map<number, Uint8Array>();
    this.regions.forEach((g, i) => {
      const b = target.segments[g.path];
      if (g.relocatable && b !== undefined) segBase.set(i + 1, segmentBytes(b));
    });
    for (const [segment, buf] of segBase) {
      for (const r of this.index.segment(segment)) {
        const dst = buf.subarray(Number(r.address), Number(r.address) + r.length);
        await this.readRecord(r, dst);
        if (r.kind === KIND.HOLE) summary.holeBytes += r.length;
        else summary.copiedBytes += r.length;
      }
    }
    if (target.kind === "segments") return summary;
    if (target.kind === "pid") {
      using remote = new RemoteWriter(target.pid, target.journal, { window: target.window });
      // Compressed records are decoded on pool threads, a window at a time, and written in index order, into a
      // ring of window + 1 buffers (the one being written, and those in flight).
      const window = defaultWindow();
      const ring: Uint8Array[] = [];
      let started = 0;
      const slot = (r: ImageRecord) => {
        const i = started++ % (window + 1);
        if (!(ring[i]?.length >= r.length)) ring[i] = new Uint8Array(r.length);
        return ring[i].subarray(0, r.length);
      };
      const base = compressed ? this.#mapped() : 0n;
      // Raw records are read with pread into a small buffer and written from there (lib/image/bounce.ts).
      // Compressed records are decoded from the mapped image: the pages before the record being written leave
      // this process's RSS every budget window (16 MiB without one), else the whole compressed image would stay
      // mapped in (measured: 512 MiB of text, a 104 MiB image, peaked at 180 MiB).
      const bounced = new BouncedWrites(
        (ops, n) => this.readStoredMany(ops, n),
        remote,
        Math.min(BOUNCE_BYTES, target.window ?? BOUNCE_BYTES),
      );
      const zeroHole = remote.holeZeroer(this.regions);
      let released = 0;
      const page = BigInt(PAGE_SIZE);
      const put = (r: ImageRecord, decoded: Uint8Array | undefined) => {
        if (decoded && r.fileOffset - released >= (target.window ?? RELEASE_EVERY)) {
          const from = (BigInt(released) + page - 1n) / page * page, to = BigInt(r.fileOffset) / page * page;
          if (to > from) libc.madvise(ptrOf(base + from), to - from, MADV.DONTNEED);
          released = r.fileOffset;
        }
        if (r.kind === KIND.HOLE) { // its pages the process has now, made zero (disjoint from the data)
          zeroHole(r);
          summary.holeBytes += r.length;
          return;
        }
        // Decoded data sits in a ring buffer that is reused: written now.
        if (decoded) remote.write(r.address, decoded);
        else bounced.add(r.address, r.fileOffset, r.length);
        summary.copiedBytes += r.length;
      };
      if (compressed) { // small records, holes and raw ones without a promise (lib/codecs/pool.ts)
        await forEachOrdered(this.index.segment(0), {
          small: (r) => r.kind !== KIND.DATA || r.codec === 0 || r.length < INLINE_BYTES,
          now: (r) => {
            if (r.kind !== KIND.DATA || r.codec === 0) put(r, undefined);
            else {
              const dst = slot(r);
              if (!this.#readNow(r, dst)) return false;
              put(r, dst);
            }
            return true;
          },
          work: async (r) =>
            r.kind !== KIND.DATA || r.codec === 0 ? undefined : await this.readRecord(r, slot(r)),
          use: put,
        }, window);
      } else {
        for (const r of this.index.segment(0)) put(r, undefined); // nothing to decode: no pipeline per record
      }
      bounced.flush();
      remote.flush();
      return summary;
    }
    return await this.#loadSelf(target, plan, summary);
  }

  async #loadSelf(target: LoadTarget, plan: RegionPlan[], summary: LoadSummary): Promise<LoadSummary> {
    const fresh = plan.filter((p) => p.existing.length === 0);
    for (const p of fresh) {
      const len = p.region.end - p.region.start;
      mmap(p.region.start, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE);
      summary.mappedRegions++;
    }
    const locked = plan.filter((p) => p.existing.length > 0 && !p.region.perms.write);
    for (const p of locked) {
      const len = p.region.end - p.region.start;
      const prot = protOf(p.region.perms) | PROT.WRITE;
      if (libc.mprotect(ptrOf(p.region.start), len, prot) !== 0) {
        throw systemError("mprotect", errno(), `${len} bytes at ${hex(p.region.start)}`);
      }
    }
    try {
      for (const r of this.index.segment(0)) {
        const p = plan.find((x) => x.region.start <= r.address && r.address < x.region.end)!;
        if (r.kind === KIND.HOLE) {
          if (p.existing.length > 0) clearRange(r.address, r.length, p.existing);
          summary.holeBytes += r.length;
          continue;
        }
        if (target.lazy && r.codec === 0 && !p.region.perms.shared && r.length >= LAZY_MAP_MIN) {
          const mapped = mapRun(
            this.#fd,
            r.fileOffset,
            r.address,
            r.length,
            protOf(p.region.perms) | PROT.WRITE,
          );
          summary.mappedBytes += mapped;
          if (mapped < r.length) {
            this.#src.readInto(r.address + BigInt(mapped), r.length - mapped, r.fileOffset + mapped, "data");
            summary.copiedBytes += r.length - mapped;
          }
          continue;
        }
        if (r.codec === 0) this.#src.readInto(r.address, r.length, r.fileOffset, "data");
        else {
          const dst = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(r.address)!, r.length));
          await this.#decode(r, this.#stored(r), dst);
        }
        summary.copiedBytes += r.length;
      }
    } finally {
      for (const p of [...fresh, ...locked]) {
        const len = p.region.end - p.region.start;
        libc.mprotect(ptrOf(p.region.start), len, protOf(p.region.perms));
      }
    }
    return summary;
  }

  /**
   * Drop the pages of the read-only mapping of the image (through which {@link readRecord} and
   * {@link storedBytes} read) from this process: they stay in the page cache and are read again when touched,
   * and stop counting in this process's RSS. Views handed out before stay valid.
   */
  releaseView(): void {
    if (this.#base !== 0n) libc.madvise(ptrOf(this.#base), BigInt(this.fileSize), MADV.DONTNEED);
  }

  #unmapView(): void {
    if (this.#base !== 0n) munmap(this.#base, BigInt(this.fileSize));
    this.#base = 0n;
    this.#view = undefined;
  }

  /** Close the file and unmap the verification mapping. Idempotent. */
  close(): void {
    this.#unmapView();
    if (this.#fd >= 0) libc.close(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** A read-only mapping of the whole file, made on first use (decoding, {@link storedBytes}). */
  #mapped(): bigint {
    if (this.#fd < 0) throw new TypeError(`Cannot use the closed image ${this.path}`);
    if (this.#base === 0n) this.#base = mmap(0n, BigInt(this.fileSize), PROT.READ, MAP.PRIVATE, this.#fd, 0n);
    return this.#base;
  }

  #parts() {
    if (this.#fd < 0) throw new TypeError(`Cannot use the closed image ${this.path}`);
    return {
      path: this.path,
      fileSize: this.fileSize,
      footer: this.footer,
      header: this.header,
      regions: this.regions,
      frames: this.frames,
      records: this.index,
      sections: this.sections,
      structureChecked: this.#structureChecked,
      fd: this.#fd,
      mapped: () => this.#mapped(),
    };
  }

  #stored(r: ImageRecord): Uint8Array {
    if (r.storedLength === 0) return new Uint8Array(0);
    this.#view ??= new MappedSource(this.path, this.#mapped(), this.fileSize); // views of one buffer
    return this.#view.read(r.fileOffset, r.storedLength, "data");
  }

  async #decode(r: ImageRecord, stored: Uint8Array, dst: Uint8Array): Promise<void> {
    const codec = this.#codec(r);
    try {
      await codec.decode(stored, dst);
    } catch (e) {
      throw this.#undecodable(r, e);
    }
    this.#checkDecoded(r, dst);
  }

  #codec(r: ImageRecord): Codec {
    const codec = this.#codecs.get(r.codec);
    if (!codec) {
      throw new CryoError(
        `Cannot decode ${this.path} record at ${hex(r.address)}: codec ${r.codec} not given`,
      );
    }
    return codec;
  }

  /** The error of a record that did not decode (`e` thrown by its codec). */
  #undecodable(r: ImageRecord, e: unknown): unknown {
    if (!(e instanceof CryoError || e instanceof RangeError)) return e;
    return new ImageError(
      this.path,
      r.fileOffset,
      `record at ${hex(r.address)} does not decode: ${e.message}`,
    );
  }

  #checkDecoded(r: ImageRecord, dst: Uint8Array): void {
    if (r.codec !== 0 && checksum(dst) !== r.decodedChecksum) {
      throw new ImageError(
        this.path,
        r.fileOffset,
        `decoded bytes of the record at ${hex(r.address)} do not match`,
      );
    }
  }
}
