/**
 * cryo's image layer (`@cryo/cryo/image`): the writer ({@link MemoryPersister}: store, storeGap, storeRuns,
 * finalize) and the reader ({@link MemoryLoader}: open, verify, load), memory sources (this process, another
 * pid, a buffer as a named segment) and load targets, and the format's record types (docs/FORMAT.md).
 *
 * @example Persist a buffer as a named segment and load it back
 * ```ts
 * import { MemoryLoader, MemoryPersister, segmentSource, segmentTarget } from "./image.ts";
 *
 * const data = new Uint8Array(8192).map((_, i) => i % 251);
 * const path = await Deno.makeTempFile({ suffix: ".cryo" });
 * const segment = segmentSource("data", data);
 * await using persister = await MemoryPersister.create(path, { segments: [segment], fsync: false });
 * await persister.store(0n, data.length, segment);
 * await persister.finalize();
 *
 * const copy = new Uint8Array(data.length);
 * using loader = await MemoryLoader.open(path);
 * await loader.load(segmentTarget({ data: copy }));
 * if (copy.some((b, i) => b !== data[i])) throw new Error("mismatch");
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

// The image.
export {
  type ImageSummary,
  type LocalPiece,
  MemoryPersister,
  type PersisterOptions,
} from "./lib/image/persister.ts";
export { type LoadSummary, MemoryLoader } from "./lib/image/loader.ts";
export type { IndexRecords } from "./lib/image/records.ts";
export { releaseMemory } from "./lib/image/lazy.ts";
export {
  type ChainPiece,
  decodeParentSection,
  encodeParentSection,
  ImageChain,
  imageDigest,
  isIncremental,
  PARENT_SECTION,
  type ParentLink,
  parentLink,
} from "./lib/image/chain.ts";
export type { ChainRecord } from "./lib/image/chain_records.ts";
export type { ChainSource } from "./lib/image/chain_flatten.ts";
export type { ImageRecord, ImageRegion } from "./lib/image/format.ts";
export type { HeaderFields, SourceInfo } from "./lib/image/header.ts";
export type { SectionEntry } from "./lib/image/sections.ts";
export type { Footer } from "./lib/image/footer.ts";
export type { FrameInfo } from "./lib/image/frames.ts";
export { type MemorySource, pidSource, segmentSource, selfSource } from "./lib/image/sources.ts";
export {
  type LoadTarget,
  pidTarget,
  type RegionPlan,
  type SegmentBuffer,
  segmentTarget,
  selfTarget,
} from "./lib/image/targets.ts";
export { raw } from "./lib/codecs/codec.ts";
export { Sealer } from "./lib/codecs/seal.ts";
export type { MacStream } from "./lib/codecs/hmac.ts";
