/**
 * Chains of incremental images. An incremental image (required feature PARENT, docs/FORMAT.md) holds the full
 * region table, sections and registers of its moment, but its records (data, and explicit holes) are only what
 * changed since its parent: every byte of its regions that no record covers is its parent's, inside a frame's
 * range or not (lib/image/format.ts `uncoveredMeaning`), and so on down to a full image. Its
 * `parent` section names the parent by content: the parent's footer checksum (the XXH3 of a footer that holds
 * the checksums of the header, the index, which pins every frame table and so every record's checksum, and the
 * sections: a digest of the whole file) and size; a parent whose digest differs is refused, whatever its name.
 *
 * {@link ImageChain} opens a chain over the loader's public API and resolves, for every address of the tip's
 * regions, which image's record holds it; {@link flattenChain} writes the chain as one full image.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import type { Codec } from "../codecs/codec.ts";
import { intersectRuns, type Runs, runsOf, subtractRuns, unionRuns } from "../kernel/run_sets.ts";
import { RunBuilder } from "../kernel/runs.ts";
import { KIND, REQUIRED } from "./format.ts";
import { MemoryLoader } from "./loader.ts";
import { type ImageSummary, MemoryPersister } from "./persister.ts";
import { dirOf } from "./tempfile.ts";
import { type ChainRecord, walkChain } from "./chain_records.ts";
import { type ChainSource, chainSource, storeChain } from "./chain_flatten.ts";

/** The section of an incremental image that names its parent. */
export const PARENT_SECTION = "parent";

/** Longest chain followed (a loop of images naming each other is refused long before). */
export const MAX_CHAIN_LENGTH = 4096;

/** Images whose {@link ImageChain.dataRuns} below them are kept, by their file's stamp (the newest). */
const DATA_BELOW = 64;
const dataBelow = new Map<string, Runs>();

/** How an incremental image names its parent. */
export interface ParentLink {
  /** The parent's footer checksum, 16 hex digits: its content identity. */
  digest: string;
  /** The parent's size in bytes. */
  fileSize: number;
  /** Where the parent was: a path relative to the child's directory, or absolute. */
  path: string;
}

/**
 * The `parent` section's bytes: UTF-8 JSON `{"version": 2, "digest", "fileSize", "path"}`. Version 2 marks an
 * image whose uncovered bytes inside a frame's range are the parent's and whose holes are HOLE entries
 * (docs/FORMAT.md); version 1 images (each changed run a frame, holes uncovered) are refused, not misread.
 *
 * @param link The parent.
 * @returns The bytes.
 */
export function encodeParentSection(link: ParentLink): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ version: 2, ...link }));
}

/**
 * Decode a `parent` section.
 *
 * @param bytes The section.
 * @param path The child image, for errors.
 * @returns The parent's link.
 * @throws {ImageError} When it is not version 2 of the section (version 1: written by the first incremental
 *   writer, whose holes inside a frame's range were uncovered bytes; refused rather than read by today's rule).
 */
export function decodeParentSection(bytes: Uint8Array, path: string): ParentLink {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new ImageError(path, 0, "the parent section is not UTF-8 JSON");
  }
  if (v.version === 1) {
    throw new ImageError(
      path,
      0,
      "an incremental image of the first layout (parent section version 1: holes as uncovered bytes) is not read by this version: flatten it with the cryo that wrote it",
    );
  }
  if (
    v.version !== 2 || typeof v.digest !== "string" || !/^[0-9a-f]{16}$/.test(v.digest) ||
    typeof v.fileSize !== "number" || typeof v.path !== "string"
  ) {
    throw new ImageError(path, 0, "the parent section is not version 2 with digest, fileSize and path");
  }
  return { digest: v.digest, fileSize: v.fileSize, path: v.path };
}

/**
 * An image's content identity: its footer checksum (the file's last 8 bytes) and its size.
 *
 * @param path The image.
 * @returns The digest (16 hex digits) and size.
 */
export function imageDigest(path: string): { digest: string; fileSize: number } {
  using f = Deno.openSync(path);
  const fileSize = f.statSync().size;
  if (fileSize < 8) throw new ImageError(path, 0, `file of ${fileSize} bytes is too small to be an image`);
  f.seekSync(fileSize - 8, Deno.SeekMode.Start);
  const b = new Uint8Array(8);
  let got = 0;
  while (got < 8) {
    const n = f.readSync(b.subarray(got));
    if (n === null) throw new ImageError(path, fileSize - 8 + got, "unexpected end of file");
    got += n;
  }
  const digest = new DataView(b.buffer).getBigUint64(0, true).toString(16).padStart(16, "0");
  return { digest, fileSize };
}

/**
 * The link a child image at `childPath` records for the parent at `parentPath`.
 *
 * @param parentPath The parent image.
 * @param childPath Where the child is written.
 * @returns The link (the path relative to the child's directory when the parent lies in it).
 */
export function parentLink(parentPath: string, childPath: string): ParentLink {
  const abs = (p: string) => (p.startsWith("/") ? p : `${Deno.cwd()}/${p}`);
  const parent = abs(parentPath), dir = abs(dirOf(childPath));
  const rel = parent.startsWith(`${dir}/`) && !parent.slice(dir.length + 1).includes("/")
    ? parent.slice(dir.length + 1)
    : parent;
  return { ...imageDigest(parentPath), path: childPath === "-" ? parent : rel };
}

/** Whether an open image is incremental (names a parent). */
export function isIncremental(loader: MemoryLoader): boolean {
  return (loader.header.requiredFeatures & REQUIRED.PARENT) !== 0n;
}

/** One piece of the resolved chain: `[start, end)` is held by `images[image]`'s records. */
export interface ChainPiece {
  /** First address. */
  start: bigint;
  /** One past the last. */
  end: bigint;
  /** Index into {@link ImageChain.images} (0 = the tip). */
  image: number;
}

/** An open chain of images, tip first, down to a full image. Close it (or `using`) when done. */
export class ImageChain implements Disposable {
  /** The images, tip first; the last is a full image. */
  readonly images: readonly MemoryLoader[];

  private constructor(images: MemoryLoader[]) {
    this.images = images;
  }

  /**
   * Open the image at `tip` and, while it is incremental, its parent, checking each parent's content identity
   * against the link its child records. With `verify` (default true) every image is verified.
   *
   * @param tip The newest image (a full image makes a chain of one).
   * @param opts Codecs, verification, and `parents`: paths to use for the parents instead of the recorded ones
   *   (tip's parent first).
   * @returns The chain.
   * @throws {ImageError} When a parent's digest or size is not the one recorded, or a parent is missing.
   */
  static async open(
    tip: string,
    opts: { codecs?: readonly Codec[]; verify?: boolean; parents?: readonly string[] } = {},
  ): Promise<ImageChain> {
    const images: MemoryLoader[] = [];
    try {
      let path = tip;
      for (let depth = 0;; depth++) {
        if (depth >= MAX_CHAIN_LENGTH) {
          throw new ImageError(tip, 0, `chain longer than ${MAX_CHAIN_LENGTH} images`);
        }
        const loader = await MemoryLoader.open(path, { codecs: opts.codecs });
        images.push(loader);
        if (opts.verify ?? true) await loader.verify();
        if (!isIncremental(loader)) break;
        const bytes = loader.section(PARENT_SECTION);
        if (!bytes) throw new ImageError(path, 16, "incremental (PARENT) but has no parent section");
        const link = decodeParentSection(bytes, path);
        const next = opts.parents?.[depth] ??
          (link.path.startsWith("/") ? link.path : `${dirOf(path)}/${link.path}`);
        let found: { digest: string; fileSize: number };
        try {
          found = imageDigest(next);
        } catch (e) {
          if (e instanceof Deno.errors.NotFound) {
            throw new ImageError(path, 0, `its parent ${next} (digest ${link.digest}) is missing`);
          }
          throw e;
        }
        if (found.digest !== link.digest || found.fileSize !== link.fileSize) {
          throw new ImageError(
            path,
            0,
            `its parent must have digest ${link.digest} (${link.fileSize} bytes); ${next} has ${found.digest} (${found.fileSize} bytes): not its parent`,
          );
        }
        path = next;
      }
      return new ImageChain(images);
    } catch (e) {
      for (const l of images) l.close();
      throw e;
    }
  }

  /** Verify every image of the chain in full (each once: see `MemoryLoader.verify`). */
  async verify(): Promise<void> {
    for (const l of this.images) await l.verify();
  }

  /** The tip. */
  get tip(): MemoryLoader {
    return this.images[0];
  }

  /**
   * Which image holds each byte of the tip's absolute regions: the newest one whose records (data or hole)
   * cover it.
   *
   * @returns Pieces sorted by address, not overlapping (touching pieces of one image merged).
   * @throws {ImageError} When some byte of the tip's regions is covered by no image of the chain.
   */
  pieces(): ChainPiece[] {
    const pieces: ChainPiece[] = [];
    for (const c of walkChain(this.images)) {
      const last = pieces[pieces.length - 1];
      const end = c.address + BigInt(c.length);
      if (last && last.image === c.image && last.end === c.address) last.end = end;
      else pieces.push({ start: c.address, end, image: c.image });
    }
    return pieces;
  }

  /**
   * The addresses the chain holds data for (what {@link records} gives as data), as runs. Found bottom-up: the
   * data below an image is its own data runs and, outside the runs its records cover, the data below its parent.
   * That does not depend on the tip, so it is kept per image (by its file's stamp) for the next chain over it: an
   * incremental checkpoint over a chain of N images merges only its parent's runs, not N images' (each image's
   * covered runs fragment what is left below it, so the merges from the tip down grew with the chain).
   *
   * @returns Sorted, merged runs.
   */
  dataRuns(): Runs {
    const keys = this.images.map((img) => img.stamp());
    let i = keys.findIndex((k) => dataBelow.has(k));
    let below: Runs = i < 0 ? new BigUint64Array(0) : dataBelow.get(keys[i])!;
    if (i < 0) i = this.images.length;
    for (i--; i >= 0; i--) {
      const covered = new RunBuilder(), own = new RunBuilder();
      for (const r of this.images[i].index.segment(0)) { // sorted by address, not overlapping
        const s = Number(r.address), e = s + r.length;
        covered.add(s, e);
        if (r.kind === KIND.DATA) own.add(s, e);
      }
      below = unionRuns(own.finish(), subtractRuns(below, covered.finish()));
      dataBelow.delete(keys[i]); // the newest last, for the bound
      dataBelow.set(keys[i], below);
      while (dataBelow.size > DATA_BELOW) dataBelow.delete(dataBelow.keys().next().value!);
    }
    return intersectRuns(below, runsOf(this.tip.regions.filter((g) => !g.relocatable)));
  }

  /**
   * The chain's records, as one image's: each piece clipped from the records of the image that holds it
   * (data records clipped are still read through their image, see {@link ChainRecord}). Each walk of them reads
   * the images' indexes again, a frame at a time (lib/image/chain_records.ts): none is held.
   *
   * @returns Records in address order, walked afresh each time they are iterated.
   * @throws {ImageError} When the walk reaches a byte of the tip's regions that no image covers.
   */
  records(): Iterable<ChainRecord> {
    const images = this.images;
    return { [Symbol.iterator]: () => walkChain(images) };
  }

  /**
   * A memory source that reads the chain's bytes from the records given to its `prepare()`
   * (lib/image/chain_flatten.ts).
   *
   * @returns The source; valid while the chain is open.
   */
  source(): ChainSource {
    return chainSource(this.images);
  }

  /** Close every image. Idempotent. */
  close(): void {
    for (const l of this.images) l.close();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Write the chain ending at `tip` as one full image at `out`: the tip's region table and sections (but no
 * `parent`), and for every address the bytes of the newest image that holds it.
 *
 * @param tip The chain's newest image.
 * @param out The new image's path, or an open descriptor.
 * @param opts Codecs to read with, fsync, parents' paths (see {@link ImageChain.open}).
 * @returns What was written.
 */
export async function flattenChain(
  tip: string,
  out: string | { fd: number },
  opts: { codecs?: readonly Codec[]; fsync?: boolean; parents?: readonly string[] } = {},
): Promise<ImageSummary & { chain: number }> {
  using chain = await ImageChain.open(tip, opts);
  const source = chain.source();
  await using persister = await MemoryPersister.create(out, {
    source,
    regions: chain.tip.regions,
    fsync: opts.fsync ?? true,
    detectZeros: false,
  });
  await storeChain(chain.records(), source, persister);
  for (const s of chain.tip.sections) {
    if (s.name !== PARENT_SECTION) persister.addSection(s.name, chain.tip.section(s.name)!);
  }
  return { ...(await persister.finalize()), chain: chain.images.length };
}
