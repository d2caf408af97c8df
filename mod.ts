/**
 * cryo checkpoints and restores Linux process memory from user space: this process's own regions (with its
 * threads parked) and any other process's (frozen with ptrace), into one sparse, verified image file.
 *
 * @example Catch a system error by its errno name
 * ```ts
 * import { SystemError } from "./mod.ts";
 *
 * const e = new SystemError("munmap", 22, "EINVAL", "Invalid argument", "4096 bytes at 0x1001");
 * if (!(e instanceof SystemError) || e.code !== "EINVAL") throw new Error("unexpected");
 * ```
 *
 * @module
 */

export {
  CryoError,
  HelperNotFoundError,
  ImageError,
  LayoutMismatchError,
  SystemError,
} from "./lib/errors.ts";
