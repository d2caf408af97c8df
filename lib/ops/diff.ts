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
import { type Progress, silentProgress, startPhase } from "./progress.ts";

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

/** A piece of one image's record (an incremental image's own, or its parent's). */
interface Piece {
  address: bigint;
  length: number;
  kind: number;
  record: ImageRecord;
  loader: MemoryLoader;
}

interface Cursor {
  records: readonly Piece[];
  i: number;
  cache?: { r: ImageRecord; bytes: Uint8Array };
  buffer?: Uint8Array;
}

function at(c: Cursor, addr: bigint): Piece | undefined {
  while (c.i < c.records.length && c.records[c.i].address + BigInt(c.records[c.i].length) <= addr) c.i++;
  const r = c.records[c.i];
  return r && r.address <= addr ? r : undefined;
}

async function pageOf(c: Cursor, p: Piece, addr: bigint): Promise<Uint8Array | null> {
  if (p.kind === KIND.HOLE) return null;
  const r = p.record;
  if (c.cache?.r !== r) {
    // One buffer per image, reused (records are at most MAX_RECORD_LENGTH bytes): memory stays bounded.
    if (!c.buffer || c.buffer.length < r.length) c.buffer = new Uint8Array(r.length);
    c.cache = { r, bytes: await p.loader.readRecord(r, c.buffer.subarray(0, r.length)) };
  }
  const off = Number(addr - r.address);
  return c.cache.bytes.subarray(off, off + PAGE_SIZE);
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
  const piecesOf = async (l: MemoryLoader): Promise<Piece[]> => {
    if (!isIncremental(l)) {
      return [...l.index.segment(0)].map((r) => ({ ...r, record: r, loader: l }));
    }
    const chain = chains.use(await ImageChain.open(l.path, { codecs: opts.codecs, verify: false }));
    return [...chain.records()].map((c) => ({ ...c, loader: chain.images[c.image] }));
  };
  const a: Cursor = { records: await piecesOf(la), i: 0 };
  const b: Cursor = { records: await piecesOf(lb), i: 0 };
  // Every record boundary of either image splits the address space into spans of one verdict source.
  const bounds = new Set<bigint>();
  for (const r of [...a.records, ...b.records]) {
    bounds.add(r.address);
    bounds.add(r.address + BigInt(r.length));
  }
  const points = [...bounds].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0));
  {
    // The bytes to compare: every span either image covers (fresh cursors: `at` only moves forward).
    const ca: Cursor = { ...a, i: 0 }, cb: Cursor = { ...b, i: 0 };
    let total = 0;
    for (let k = 0; k + 1 < points.length; k++) {
      if (at(ca, points[k]) || at(cb, points[k])) total += Number(points[k + 1] - points[k]);
    }
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
    let pending = 0;
    for (let k = 0; k + 1 < points.length; k++) {
      if (pending) progress.advance(pending);
      pending = 0;
      const start = points[k];
      const end = points[k + 1];
      const ra = at(a, start);
      const rb = at(b, start);
      if (!ra && !rb) continue;
      pending = Number(end - start); // told once it is compared
      if (!ra || !rb) {
        mark(start, end, ra ? "only-a" : "only-b");
        continue;
      }
      if (ra.kind === KIND.HOLE && rb.kind === KIND.HOLE) {
        comparedPages += Number((end - start) / page);
        continue;
      }
      for (let p = start; p < end; p += page) {
        comparedPages++;
        if (!samePage(await pageOf(a, ra, p), await pageOf(b, rb, p))) mark(p, p + page, "changed");
      }
    }
    if (pending) progress.advance(pending);
  } finally {
    progress.done();
  }
  return { a: pathA, b: pathB, differentPages, comparedPages, runs };
}
