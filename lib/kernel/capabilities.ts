/**
 * What this kernel and these privileges allow for acting on memory: userfaultfd (and whether it may handle
 * faults the kernel takes on a process's behalf), its write-protect features, `PAGEMAP_SCAN`, and
 * `pidfd_getfd`. Probed once, on this process, with throwaway descriptors.
 *
 * @module
 */

import { rawSyscall } from "./syscall.ts";
import { CryoError } from "../errors.ts";
import { pagemapScanSupported } from "./pagemap.ts";
import { libc } from "../../ffi/libc.ts";
import {
  O_CLOEXEC,
  O_NONBLOCK,
  SYS_PIDFD_GETFD,
  SYS_PIDFD_OPEN,
  SYS_USERFAULTFD,
  UFFD_API,
  UFFD_USER_MODE_ONLY,
  UFFDIO,
} from "./uffd_abi.ts";

/** `UFFD_FEATURE_*` bits (linux/userfaultfd.h). */
export const UFFD_FEATURE = {
  PAGEFAULT_FLAG_WP: 1n << 0n,
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  MISSING_HUGETLBFS: 1n << 4n,
  MISSING_SHMEM: 1n << 5n,
  EVENT_UNMAP: 1n << 6n,
  SIGBUS: 1n << 7n,
  THREAD_ID: 1n << 8n,
  MINOR_HUGETLBFS: 1n << 9n,
  MINOR_SHMEM: 1n << 10n,
  EXACT_ADDRESS: 1n << 11n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
  WP_UNPOPULATED: 1n << 13n,
  POISON: 1n << 14n,
  WP_ASYNC: 1n << 15n,
  MOVE: 1n << 16n,
} as const;

/** What {@link capabilities} found. */
export interface Capabilities {
  /** `userfaultfd(2)` works here, in some mode. */
  userfaultfd: boolean;
  /**
   * `userfaultfd(2)` works without `UFFD_USER_MODE_ONLY`: it may also handle faults the kernel takes for the
   * process (a `read()` into a missing page). False when `vm.unprivileged_userfaultfd` is 0 and we lack
   * CAP_SYS_PTRACE.
   */
  userfaultfdKernelFaults: boolean;
  /** The `UFFD_FEATURE_*` bits the kernel offers (0n without userfaultfd). */
  uffdFeatures: bigint;
  /** `UFFD_FEATURE_WP_ASYNC` (Linux 6.7+): write-protect faults resolved by the kernel, for tracking. */
  wpAsync: boolean;
  /** `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4+): pages never touched are write-protected too. */
  wpUnpopulated: boolean;
  /** The `PAGEMAP_SCAN` ioctl (Linux 6.7+). */
  pagemapScan: boolean;
  /** `pidfd_open(2)` + `pidfd_getfd(2)` (Linux 5.6+), to copy a descriptor out of another process. */
  pidfdGetfd: boolean;
}

/** What each capability is called in errors, and since when Linux has it. */
const NAMES: Record<Exclude<keyof Capabilities, "uffdFeatures">, string> = {
  userfaultfd: "userfaultfd(2) (vm.unprivileged_userfaultfd=0 without privileges, or CONFIG_USERFAULTFD off)",
  userfaultfdKernelFaults:
    "userfaultfd(2) for kernel-mode faults (vm.unprivileged_userfaultfd=0: only UFFD_USER_MODE_ONLY)",
  wpAsync: "UFFD_FEATURE_WP_ASYNC (Linux 6.7+)",
  wpUnpopulated: "UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4+)",
  pagemapScan: "the PAGEMAP_SCAN ioctl (Linux 6.7+)",
  pidfdGetfd: "pidfd_getfd(2) (Linux 5.6+, and ptrace access to the process)",
};

let cached: Capabilities | undefined;

function sys(nr: bigint, a = 0n, b = 0n, c = 0n): bigint {
  return rawSyscall(nr, a, b, c);
}

/** The features UFFDIO.API offers on a fresh userfaultfd, or -1n when the ioctl fails. */
function apiFeatures(fd: number): bigint {
  const api = new BigUint64Array([UFFD_API, 0n, 0n]);
  return libc.ioctl(fd, UFFDIO.API, Deno.UnsafePointer.of(api)) === 0 ? api[1] : -1n;
}

/**
 * Probe what this kernel allows (once; later calls return the same object).
 *
 * @example
 * ```ts
 * import { capabilities } from "./lib/kernel/capabilities.ts";
 *
 * const caps = capabilities();
 * if (!caps.wpAsync || !caps.pagemapScan) console.log("no write tracking on this kernel");
 * ```
 *
 * @returns Which features are available.
 */
export function capabilities(): Capabilities {
  if (cached) return cached;
  let features = 0n;
  let kernelFaults = false;
  let uffd = false;
  for (const mode of [0n, BigInt(UFFD_USER_MODE_ONLY)]) {
    const fd = sys(SYS_USERFAULTFD, BigInt(O_CLOEXEC | O_NONBLOCK) | mode);
    if (fd < 0n) continue;
    const f = apiFeatures(Number(fd));
    libc.close(Number(fd));
    if (f < 0n) continue;
    uffd = true;
    kernelFaults = mode === 0n;
    features = f;
    break;
  }
  let pidfdGetfd = false;
  const pidfd = sys(SYS_PIDFD_OPEN, BigInt(Deno.pid), 0n);
  if (pidfd >= 0n) {
    const copy = sys(SYS_PIDFD_GETFD, pidfd, pidfd, 0n);
    if (copy >= 0n) {
      pidfdGetfd = true;
      libc.close(Number(copy));
    }
    libc.close(Number(pidfd));
  }
  let scan = false;
  try {
    scan = pagemapScanSupported();
  } catch { /* no /proc */ }
  cached = {
    userfaultfd: uffd,
    userfaultfdKernelFaults: kernelFaults,
    uffdFeatures: features,
    wpAsync: (features & UFFD_FEATURE.WP_ASYNC) !== 0n,
    wpUnpopulated: (features & UFFD_FEATURE.WP_UNPOPULATED) !== 0n,
    pagemapScan: scan,
    pidfdGetfd,
  };
  return cached;
}

/** A capability that {@link requireCapabilities} can ask for. */
export type CapabilityName = Exclude<keyof Capabilities, "uffdFeatures">;

/**
 * The error for doing something without a capability, naming the missing feature, e.g.
 * `Cannot track writes in pid 42: this kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+)`.
 *
 * @param doing What was attempted (`track writes in pid 42`).
 * @param missing The missing capabilities.
 * @returns The error.
 */
export function missingCapabilityError(doing: string, missing: readonly CapabilityName[]): CryoError {
  return new CryoError(`Cannot ${doing}: this kernel lacks ${missing.map((m) => NAMES[m]).join(" and ")}`);
}

/**
 * Throw unless every named capability is available.
 *
 * @param doing What is about to be attempted, for the message.
 * @param needed The capabilities it needs.
 * @param caps The capabilities to check (default: this kernel's).
 * @throws {CryoError} Naming every missing feature.
 */
export function requireCapabilities(
  doing: string,
  needed: readonly CapabilityName[],
  caps: Capabilities = capabilities(),
): void {
  const missing = needed.filter((n) => !caps[n]);
  if (missing.length) throw missingCapabilityError(doing, missing);
}
