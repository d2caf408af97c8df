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
import { KIND } from "../image/format.ts";
import { MemoryLoader } from "../image/loader.ts";
import { ImageChain, isIncremental } from "../image/chain.ts";
import { Side, Spans } from "./diff_spans.ts";
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

const CHANGED = 0, ONLY_A = 1, ONLY_B = 2;
const KINDS: readonly DiffRun["kind"][] = ["changed", "only-a", "only-b"];

/**
 * The runs found, as numbers until the walk ends (`start, end, kind` triples in a growing buffer): made as
 * objects with `bigint`s during the walk, they survive V8's scavenges one by one (65,536 changed runs: V8's heap
 * 22-24 MiB used at the end, the diff's peak 103-107 MiB in-process; as numbers 13 MiB and 100-102 MiB).
 */
class FoundRuns {
  #t = new Float64Array(3 * 256);
  #n = 0;
  /** Pages in the runs. */
  pages = 0;

  /** Add `[start, end)` of `kind`, merged with the last run when they touch and are of one kind. */
  add(start: number, end: number, kind: number): void {
    this.pages += Math.floor((end - start) / PAGE_SIZE);
    const t = this.#t, n = this.#n;
    if (n > 0 && t[n - 2] === start && t[n - 1] === kind) {
      t[n - 2] = end;
      return;
    }
    if (n === t.length) {
      this.#t = new Float64Array(2 * t.length);
      this.#t.set(t);
    }
    this.#t[n] = start;
    this.#t[n + 1] = end;
    this.#t[n + 2] = kind;
    this.#n = n + 3;
  }

  /** The runs as objects, in address order. */
  runs(): DiffRun[] {
    const out: DiffRun[] = [];
    const t = this.#t;
    for (let i = 0; i < this.#n; i += 3) {
      out.push({ start: BigInt(t[i]), end: BigInt(t[i + 1]), kind: KINDS[t[i + 2]] });
    }
    return out;
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
    if (!isIncremental(l)) return () => new Side([l]);
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
  const found = new FoundRuns();
  let comparedPages = 0;
  try {
    const a = sideA(), b = sideB();
    const spans = new Spans(a, b);
    while (spans.next()) {
      const { inA, inB, start, end } = spans;
      if (!inA || !inB) found.add(start, end, inA ? ONLY_A : ONLY_B);
      else if (a.kind === KIND.HOLE && b.kind === KIND.HOLE) {
        comparedPages += Math.floor((end - start) / PAGE_SIZE);
      } else {
        const wa = a.kind === KIND.DATA ? a.load() : undefined,
          wb = b.kind === KIND.DATA ? b.load() : undefined;
        if (wa) await wa; // awaited only when there is a promise: an await per record makes garbage per record
        if (wb) await wb;
        for (let p = start; p < end; p += PAGE_SIZE) {
          comparedPages++;
          const x = a.kind === KIND.HOLE ? null : a.page(p);
          const y = b.kind === KIND.HOLE ? null : b.page(p);
          if (!samePage(x, y)) found.add(p, p + PAGE_SIZE, CHANGED);
        }
      }
      progress.advance(end - start); // told once it is compared
    }
  } finally {
    progress.done();
  }
  const runs = found.runs();
  return { a: pathA, b: pathB, differentPages: found.pages, comparedPages, runs };
}
