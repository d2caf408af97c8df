/**
 * cryo checkpoints and restores Linux process memory from user space: any other process's (frozen with
 * ptrace) or this process's own regions, into one sparse, verified image file that can be compressed and
 * encrypted.
 *
 * This entry point holds what a user calls: the operations {@link checkpoint}, {@link restore},
 * {@link inspect}, {@link verify}, {@link diff}, {@link snapshot} (for test suites), {@link hibernate} and
 * {@link wake} (free an idle process's RAM into an image and bring it back, eagerly or on demand), keys and
 * codecs, and the errors to catch. The building blocks live behind two subpath exports: `./process` (regions
 * and pages, freezing and parking threads, system calls run inside a frozen process, userfaultfd, write
 * tracking, the undo journal) and `./image` (the image writer and reader, memory sources and load targets).
 *
 * @example Checkpoint a child process, change it, roll it back
 * ```ts ignore
 * import { checkpoint, restore, verify } from "./mod.ts";
 *
 * await checkpoint(pid, "app.cryo");
 * // … the process runs on and changes …
 * if ((await verify("app.cryo")).ok) await restore(pid, "app.cryo"); // all or nothing
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
} from "./lib/ops/checkpoint.ts";
export type { LiveStats } from "./lib/ops/checkpoint_live.ts";
export type { TakenFigures } from "./lib/ops/checkpoint_record.ts";
export { type ImageStamp, imageStamp, restore, type RestoreOptions } from "./lib/ops/restore.ts";
export { HeldImage } from "./lib/ops/held_image.ts";
export type { RestoreResult } from "./lib/ops/restore_commit.ts";
export {
  hibernate,
  type HibernateOptions,
  type HibernateResult,
  type HibernationMarker,
  readHibernationMarker,
} from "./lib/ops/hibernate.ts";
export { type ProcessMemory, processMemory } from "./lib/kernel/process_status.ts";
export { wake } from "./lib/ops/wake.ts";
export type { WakeOptions, WakeResult } from "./lib/ops/wake_options.ts";
export {
  type HibernationStatus,
  hibernationStatus,
  request,
  serve,
  type ServeOptions,
  type ServeReply,
} from "./lib/ops/serve.ts";
export {
  checkKey,
  type ImageInfo,
  inspect,
  type InspectRecord,
  type InspectRegion,
  verify,
  type VerifyResult,
} from "./lib/ops/inspect.ts";
export { diff, type DiffResult, type DiffRun } from "./lib/ops/diff.ts";
export {
  mapImage,
  mapProcess,
  type MapRegion,
  type MapRun,
  type MapRunKind,
  type MemoryMap,
} from "./lib/ops/map.ts";
export type { KernelState, OpenDescriptor, ProcessTimer } from "./lib/kernel/kernel_state.ts";
export { Snapshot, snapshot, type SnapshotOptions } from "./lib/ops/snapshot.ts";
export type { IncrementalInfo } from "./lib/ops/incremental.ts";
export { flattenChain } from "./lib/image/chain.ts";

// Keys and codecs.
export { type KeyFileOptions, keyFromEnv, keyFromFile, SealKey } from "./lib/codecs/keys.ts";
export { type Codec } from "./lib/codecs/codec.ts";
export { parseCodec } from "./lib/codecs/select.ts";
export { ZstdCodec } from "./lib/codecs/zstd.ts";
export { Lz4Codec } from "./lib/codecs/lz4.ts";
export { type PhaseName, PHASES, type Progress, silentProgress } from "./lib/ops/progress.ts";

// Errors.
export {
  CryoError,
  HelperNotFoundError,
  IdentityMismatchError,
  ImageError,
  KeyError,
  KeyFileError,
  LayoutMismatchError,
  LibraryNotFoundError,
  MapsParseError,
  RestoreIncompleteError,
  SafepointTimeoutError,
  SystemError,
  TracedError,
} from "./lib/errors.ts";
