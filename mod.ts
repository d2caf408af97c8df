/**
 * cryo checkpoints and restores Linux process memory from user space: this process's own regions (with its
 * threads parked) and any other process's (frozen with ptrace), into one sparse, verified image file.
 *
 * Whole operations: {@link checkpoint}, {@link restore}, {@link inspect}, {@link verify}, {@link diff}, and
 * {@link snapshot} for test suites, {@link hibernate} and {@link wake} (free an idle process's RAM into an image
 * and bring it back, eagerly or on demand). Building blocks: {@link readRegions} and {@link classify} (what to persist),
 * {@link scanPages} (which pages hold data), {@link freeze} and {@link Safepoint} (stopping the writers),
 * {@link inject} (system calls run inside a frozen process), {@link MemoryPersister} and {@link MemoryLoader}
 * (the image).
 *
 * @example Persist a buffer as a named segment and load it back
 * ```ts
 * import { MemoryLoader, MemoryPersister, segmentSource, segmentTarget } from "./mod.ts";
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

// Whole operations.
export {
  checkpoint,
  type CheckpointOptions,
  type CheckpointResult,
  regionDecisions,
} from "./lib/checkpoint.ts";
export { restore, type RestoreOptions, type RestoreResult } from "./lib/restore.ts";
export {
  hibernate,
  type HibernateOptions,
  type HibernateResult,
  type HibernationMarker,
  type ProcessMemory,
  processMemory,
  readHibernationMarker,
} from "./lib/ops/hibernate.ts";
export { wake, type WakeOptions, type WakeResult } from "./lib/ops/wake.ts";
export {
  type HibernationStatus,
  hibernationStatus,
  request,
  serve,
  type ServeOptions,
  type ServeReply,
} from "./lib/ops/serve.ts";
export {
  type ImageInfo,
  inspect,
  type InspectRecord,
  type InspectRegion,
  verify,
  type VerifyResult,
} from "./lib/inspect.ts";
export { diff, type DiffResult, type DiffRun } from "./lib/diff.ts";
export { Snapshot, snapshot } from "./lib/snapshot.ts";

// Regions and pages.
export {
  compareAddress,
  type Perms,
  permsString,
  type Region,
  REGION_KINDS,
  type RegionKind,
} from "./lib/region.ts";
export { parseMaps, parseSmaps, readRegions, type ReadRegionsOptions, type SmapsRegion } from "./lib/maps.ts";
export { classify, type Decision, type PolicyOptions, type RegionFilter } from "./lib/policy.ts";
export {
  Pagemap,
  pagemapScanSupported,
  type PageRun,
  type PageStates,
  type ScanMethod,
  type ScanOptions,
  scanPages,
} from "./lib/pagemap.ts";
export { markStacks, type ThreadStack, threadStacks } from "./lib/stacks.ts";
export { findZeroPages } from "./lib/zero.ts";

// Stopping the writers.
export { freeze, type FreezeOptions, Frozen, thawAll } from "./lib/freeze.ts";
export {
  type NativeThread,
  Parked,
  type ParkOptions,
  releasableStack,
  Safepoint,
  type SafepointHandle,
  safepointLeave,
  safepointPoll,
} from "./lib/park.ts";
export { type Registers, type RseqConfig, type ThreadState } from "./lib/threads.ts";
export { readSelfRseq, type SelfRseq } from "./lib/rseq.ts";

// Acting inside a frozen process.
export {
  AT_FDCWD,
  findSyscallInstruction,
  inject,
  type InjectOptions,
  Injector,
  SYS,
} from "./lib/kernel/inject.ts";
export {
  type Capabilities,
  capabilities,
  type CapabilityName,
  missingCapabilityError,
  requireCapabilities,
  UFFD_FEATURE,
} from "./lib/kernel/capabilities.ts";
export {
  track,
  Tracking,
  UFFDIO_REGISTER_MODE,
  Userfaultfd,
  type UserfaultfdOptions,
} from "./lib/kernel/uffd.ts";
export {
  type FaultRun,
  FaultServer,
  type FaultServerOptions,
  type FaultServerStats,
} from "./lib/kernel/fault_server.ts";

// The image.
export { type ImageSummary, MemoryPersister, type PersisterOptions } from "./lib/image/persister.ts";
export { type LoadSummary, MemoryLoader } from "./lib/image/loader.ts";
export { releaseMemory } from "./lib/image/lazy.ts";
export type {
  Footer,
  HeaderFields,
  ImageRecord,
  ImageRegion,
  SectionEntry,
  SourceInfo,
} from "./lib/image/layout.ts";
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
export { type IovBatch, journalDir, RestoreJournal } from "./lib/journal.ts";
export { type Codec, raw } from "./lib/codec.ts";
export { parseCodec } from "./lib/codecs/select.ts";
export { ZstdCodec } from "./lib/codecs/zstd.ts";
export { Lz4Codec } from "./lib/codecs/lz4.ts";
export { type KeyFileOptions, keyFromEnv, keyFromFile, Sealer, SealKey } from "./lib/seal.ts";
export { type Progress, progressBar, silentProgress } from "./lib/cli/progress.ts";

// Errors.
export {
  CryoError,
  HelperNotFoundError,
  ImageError,
  KeyError,
  KeyFileError,
  LayoutMismatchError,
  MapsParseError,
  RestoreIncompleteError,
  SafepointTimeoutError,
  SystemError,
} from "./lib/errors.ts";
