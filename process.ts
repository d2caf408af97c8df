/**
 * cryo's building blocks for live processes (`@cryo/cryo/process`): which regions a process has and which of
 * its pages hold data ({@link readRegions}, {@link classify}, {@link scanPages}), stopping its writers
 * ({@link freeze} another process with ptrace, {@link Safepoint} for this process's Workers and native
 * threads), acting inside a frozen process ({@link inject} system calls, a {@link Userfaultfd} on its memory,
 * write {@link track}ing, the {@link FaultServer}, the {@link WriteProtectServer} of live checkpoints) and the undo journal of a restore ({@link RestoreJournal}).
 *
 * @example What a process has mapped, and what a checkpoint would persist
 * ```ts ignore
 * import { classify, readRegions } from "./process.ts";
 *
 * for (const d of classify(readRegions(pid))) console.log(d.region.start, d.persist, d.reason);
 * ```
 *
 * @module
 */

// Regions and pages.
export {
  compareAddress,
  type Perms,
  permsString,
  type Region,
  REGION_KINDS,
  type RegionKind,
} from "./lib/kernel/region.ts";
export {
  parseMaps,
  parseSmaps,
  readRegions,
  type ReadRegionsOptions,
  type SmapsRegion,
} from "./lib/kernel/maps.ts";
export { classify, type Decision, type PolicyOptions, type RegionFilter } from "./lib/kernel/policy.ts";
export {
  Pagemap,
  pagemapScanSupported,
  type PageRun,
  type PageStates,
  type ScanMethod,
  type ScanOptions,
  scanPages,
} from "./lib/kernel/pagemap.ts";
export { markStacks, type ThreadStack, threadStacks } from "./lib/kernel/stacks.ts";
export { findZeroPages } from "./lib/kernel/zero.ts";

// Stopping the writers.
export { freeze, type FreezeOptions, Frozen, thawAll } from "./lib/kernel/freeze.ts";
export {
  type NativeThread,
  Parked,
  type ParkOptions,
  releasableStack,
  Safepoint,
  type SafepointHandle,
  safepointLeave,
  safepointPoll,
} from "./lib/kernel/park.ts";
export {
  type AltStack,
  type Registers,
  type RseqConfig,
  type ThreadKernelState,
  type ThreadState,
} from "./lib/kernel/threads.ts";
export { readSelfRseq, type SelfRseq } from "./lib/kernel/rseq.ts";

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
export { UFFDIO_REGISTER_MODE, Userfaultfd, type UserfaultfdOptions } from "./lib/kernel/uffd.ts";
export { track, Tracking } from "./lib/kernel/range_tracking.ts";
export {
  adoptTracking,
  ProcessTracking,
  TRACKING_FEATURES,
  trackingUnavailable,
  type TrackOptions,
  trackProcess,
  type WrittenPages,
} from "./lib/kernel/tracking.ts";
export {
  intersectRuns,
  runBytes,
  type Runs,
  runsOf,
  subtractRuns,
  unionRuns,
} from "./lib/kernel/run_sets.ts";
export {
  type FaultRun,
  FaultServer,
  type FaultServerOptions,
  type FaultServerStats,
} from "./lib/kernel/fault_server.ts";
export {
  type LiveRun,
  WriteProtectServer,
  type WriteProtectServerOptions,
  type WriteProtectStats,
} from "./lib/kernel/wp_server.ts";

// The undo journal of a restore.
export { type IovBatch, journalDirs, RestoreJournal } from "./lib/kernel/journal.ts";
