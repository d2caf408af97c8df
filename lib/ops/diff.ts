/**
 * Which pages differ between two images of the same process. A hole reads as zeros, so a page that is a hole
 * in one image and an all-zero data page in the other is the same. Addresses covered by only one image are
 * reported as such. An incremental image is compared as its chain resolves it (the bytes it leaves to its parent
 * are its parent's, docs/FORMAT.md).
 *
 * @module
 */

import { PAGE_SIZE } from "../../ffi/libc.ts";
import type { Codec } from "../codecs/codec.ts";
import { CryoError, KeyError } from "../errors.ts";
import { type ImageRecord, KIND } from "../image/format.ts";
import { MemoryLoader } from "../image/loader.ts";
import { ImageChain, isIncremental } from "../image/chain.ts";
import type { ChainRecord } from "../image/chain_records.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";

/**
 * Bytes of an image's records read through its mapping between two releases of its pages: without them the
 * pages read stay in this process's RSS (a diff of two 1 GiB images peaked at 2.2 GiB).
 */
const RELEASE_EVERY = 16 << 20;

/** A run of pages with the same verdict. */
export interface DiffRun {
  /** First address. */
  start: bigint;
  /** One past the last address. */
  end: bigint;
  /** `changed` in both, or present `only-a` / `only-b`. */
  kind: "changed" | "only-a" | "only-b";
}

/** What {@link diff} found. */
export interface DiffResult {
  /** The first image. */
  a: string;
  /** The second image. */
  b: string;
  /** Pages that differ (changed, or covered by one image only). */
  differentPages: number;
  /** Pages compared in both. */
  comparedPages: number;
  /** The differing pages as runs, sorted by address. */
  runs: DiffRun[];
}

/**
 * One image's records (an incremental image's resolved through its chain), walked forward: the current piece,
 * its bounds as numbers (user addresses are below 2^47, exact in a double), and the data of its record read last.
 */
class Side {
  readonly #it: Iterator<ChainRecord>;
  readonly #images: readonly MemoryLoader[];
  /** The first piece not yet passed (undefined when all are). */
  piece: ChainRecord | undefined;
  /** Its first address. */
  start = 0;
  /** One past its last. */
  end = 0;
  #cached?: ImageRecord;
  #read = 0;
  #bytes: Uint8Array = new Uint8Array(0);
  #buffer = new Uint8Array(0);

  constructor(images: readonly MemoryLoader[], pieces: Iterable<ChainRecord>) {
    this.#images = images;
    this.#it = pieces[Symbol.iterator]();
    this.#next();
  }

  /** Pass the pieces that end at or before `pos`. */
  skipTo(pos: number): void {
    while (this.piece && this.end <= pos) this.#next();
  }

  /** The piece covering `pos` (after {@link skipTo} it), if any. */
  at(pos: number): ChainRecord | undefined {
    return this.piece && this.start <= pos ? this.piece : undefined;
  }

  /** The page at `addr` of the data piece `p`. */
  async page(p: ChainRecord, addr: bigint): Promise<Uint8Array> {
    const r = p.record;
    if (this.#cached !== r) {
      // One buffer per image, reused (records are at most MAX_RECORD_LENGTH bytes): memory stays bounded.
      if (this.#buffer.length < r.length) this.#buffer = new Uint8Array(r.length);
      this.#bytes = await this.#images[p.image].readRecord(r, this.#buffer.subarray(0, r.length));
      this.#cached = r;
      if ((this.#read += r.storedLength) >= RELEASE_EVERY) {
        for (const l of this.#images) l.releaseView(); // the mapped pages read leave this process's RSS
        this.#read = 0;
      }
    }
    const off = Number(addr - r.address);
    return this.#bytes.subarray(off, off + PAGE_SIZE);
  }

  #next(): void {
    const n = this.#it.next();
    this.piece = n.done ? undefined : n.value;
    if (this.piece) {
      this.start = Number(this.piece.address);
      this.end = this.start + this.piece.length;
    }
  }
}

/**
 * The spans of address space either side covers, each with one piece (or none) from each side: every boundary
 * of either side's pieces starts a span. Walked with {@link Spans.next}, which makes no object per span.
 */
class Spans {
  /** The span's first address. */
  start = 0;
  /** One past its last. */
  end = 0;
  /** A's piece covering it, if any. */
  a: ChainRecord | undefined;
  /** B's piece covering it, if any. */
  b: ChainRecord | undefined;
  readonly #x: Side;
  readonly #y: Side;

  constructor(x: Side, y: Side) {
    this.#x = x;
    this.#y = y;
  }

  /** Move to the next span; false when neither side covers anything further. */
  next(): boolean {
    const x = this.#x, y = this.#y;
    x.skipTo(this.end);
    y.skipTo(this.end);
    if (!x.piece && !y.piece) return false;
    const pos = Math.max(this.end, Math.min(x.piece ? x.start : Infinity, y.piece ? y.start : Infinity));
    let end = Infinity;
    if (x.piece) end = x.start <= pos ? x.end : x.start;
    if (y.piece) end = Math.min(end, y.start <= pos ? y.end : y.start);
    this.start = pos;
    this.end = end;
    this.a = x.at(pos);
    this.b = y.at(pos);
    return true;
  }
}

/** A full image's records of absolute addresses, as pieces of themselves. */
function* ownPieces(l: MemoryLoader): Generator<ChainRecord> {
  for (const r of l.index.segment(0)) {
    yield { address: r.address, length: r.length, kind: r.kind, image: 0, record: r };
  }
}

function samePage(x: Uint8Array | null, y: Uint8Array | null): boolean {
  if (x === null && y === null) return true;
  const aligned = (b: Uint8Array | null) => b === null || (b.byteOffset % 4 === 0 && b.length === PAGE_SIZE);
  if (!aligned(x) || !aligned(y)) { // a record that is not page aligned (or ends mid-page): byte by byte
    const n = Math.max(x?.length ?? 0, y?.length ?? 0);
    for (let i = 0; i < n; i++) if ((x?.[i] ?? 0) !== (y?.[i] ?? 0)) return false;
    return true;
  }
  const wx = x && new Int32Array(x.buffer, x.byteOffset, x.length >> 2);
  const wy = y && new Int32Array(y.buffer, y.byteOffset, y.length >> 2);
  const n = PAGE_SIZE >> 2;
  for (let i = 0; i < n; i++) if ((wx ? wx[i] : 0) !== (wy ? wy[i] : 0)) return false;
  return true;
}

/**
 * Compare two images page by page (absolute addresses only; segments are compared by nothing here).
 *
 * @param pathA The first image.
 * @param pathB The second image.
 * @param opts `codecs` for compressed records; `progress`, told the bytes of address space compared (phase
 *   `compare`).
 * @returns The differing pages as runs, and counts.
 * @throws {CryoError} When the images come from different page sizes.
 * @throws {KeyError} When either image is encrypted (its records are not decrypted here).
 */
export async function diff(
  pathA: string,
  pathB: string,
  opts: { codecs?: readonly Codec[]; progress?: Progress } = {},
): Promise<DiffResult> {
  const progress = opts.progress ?? silentProgress;
  using la = await MemoryLoader.open(pathA, opts);
  using lb = await MemoryLoader.open(pathB, opts);
  if (la.header.pageSize !== lb.header.pageSize || la.header.pageSize !== PAGE_SIZE) {
    throw new CryoError(
      `Cannot diff ${pathA} and ${pathB}: page sizes ${la.header.pageSize} and ${lb.header.pageSize}`,
    );
  }
  for (const l of [la, lb]) {
    if (l.encrypted) {
      throw new KeyError(`Cannot diff ${l.path}: it is encrypted, and diff compares unencrypted images only`);
    }
  }
  // An incremental image's pieces come from its chain (opened, not verified, as the images themselves are not).
  using chains = new DisposableStack();
  const sideOf = async (l: MemoryLoader): Promise<() => Side> => {
    if (!isIncremental(l)) {
      return () => new Side([l], ownPieces(l));
    }
    const chain = chains.use(await ImageChain.open(l.path, { codecs: opts.codecs, verify: false }));
    return () => new Side(chain.images, chain.records());
  };
  const sideA = await sideOf(la), sideB = await sideOf(lb);
  {
    // The bytes to compare: every span either image covers (a walk of both indexes before the one that reads).
    const spans = new Spans(sideA(), sideB());
    let total = 0;
    while (spans.next()) total += spans.end - spans.start;
    startPhase(progress, "compare", total);
  }
  const runs: DiffRun[] = [];
  let differentPages = 0;
  let comparedPages = 0;
  const page = BigInt(PAGE_SIZE);
  const mark = (start: bigint, end: bigint, kind: DiffRun["kind"]) => {
    differentPages += Number((end - start) / page);
    const last = runs[runs.length - 1];
    if (last && last.end === start && last.kind === kind) last.end = end;
    else runs.push({ start, end, kind });
  };
  try {
    const a = sideA(), b = sideB();
    const spans = new Spans(a, b);
    while (spans.next()) {
      const { a: ra, b: rb } = spans;
      const start = BigInt(spans.start), end = BigInt(spans.end);
      if (!ra || !rb) mark(start, end, ra ? "only-a" : "only-b");
      else if (ra.kind === KIND.HOLE && rb.kind === KIND.HOLE) comparedPages += Number((end - start) / page);
      else {
        for (let p = start; p < end; p += page) {
          comparedPages++;
          const x = ra.kind === KIND.HOLE ? null : await a.page(ra, p);
          const y = rb.kind === KIND.HOLE ? null : await b.page(rb, p);
          if (!samePage(x, y)) mark(p, p + page, "changed");
        }
      }
      progress.advance(spans.end - spans.start); // told once it is compared
    }
  } finally {
    progress.done();
  }
  return { a: pathA, b: pathB, differentPages, comparedPages, runs };
}
