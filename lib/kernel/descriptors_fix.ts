/**
 * Descriptors a rollback opens again. A program's memory names its descriptors by number; a descriptor it had
 * at the checkpoint and closed since would be gone under memory rolled back to before the close. Deno does this
 * at every read of its standard input: it reads a `dup` of descriptor 0 on a pool thread and closes the copy
 * afterwards, so a rollback caught between two reads left a thread reading a closed descriptor (`EBADF`, and
 * the program ended).
 *
 * What can be opened again without guessing is a copy: a descriptor of the checkpoint that shared its open file
 * description with another (`shares` in the `kernel` section, by `kcmp`), when that other is still open on the
 * same object with the same flags. It is made again by an injected `dup3` onto its old number, with its old
 * close-on-exec flag; the undo closes it. A descriptor open now at its number (on whatever) is left as it is,
 * and so is one whose every partner is closed too: its file cannot be told from a different one opened since.
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import { type KernelState, type OffsetChange, type OpenDescriptor, planOffsets } from "./kernel_state.ts";

/** A descriptor a restore opens again, as a copy of another. */
export interface DescriptorChange {
  /** The descriptor, closed now. */
  fd: number;
  /** The open descriptor it is copied from (it shared the same open file at the checkpoint). */
  from: number;
  /** What it names (its `/proc` link target). */
  target: string;
  /** Whether it had close-on-exec. */
  cloexec: boolean;
}

/** Whether `now` is still the descriptor `then` was: the same object, the same flags (close-on-exec aside). */
function same(then: OpenDescriptor, now: OpenDescriptor | undefined): boolean {
  if (!now || now.target !== then.target || now.device !== then.device || now.inode !== then.inode) {
    return false;
  }
  return then.flags !== undefined && now.flags !== undefined &&
    (then.flags & ~O.CLOEXEC) === (now.flags & ~O.CLOEXEC);
}

/**
 * The descriptors a rollback opens again: each descriptor of the checkpoint closed now whose open file
 * description another descriptor of the checkpoint shared, and that other still open on the same object with
 * the same flags.
 *
 * @param recorded The image's kernel section, decoded.
 * @param now The target's state now (while frozen).
 * @returns The changes, by descriptor.
 */
export function planDescriptors(recorded: KernelState, now: KernelState): DescriptorChange[] {
  const open = new Map(now.descriptors.map((d) => [d.fd, d]));
  const changes: DescriptorChange[] = [];
  for (const d of recorded.descriptors) {
    if (open.has(d.fd) || d.flags === undefined) continue;
    const root = d.shares ?? d.fd;
    const partner = recorded.descriptors.find((p) =>
      p.fd !== d.fd && (p.fd === root || p.shares === root) && same(p, open.get(p.fd))
    );
    if (partner) {
      changes.push({ fd: d.fd, from: partner.fd, target: d.target, cloexec: (d.flags & O.CLOEXEC) !== 0 });
    }
  }
  return changes;
}

/**
 * One line for a dry run, e.g. `fd 33 (pipe:[1691514]): closed since, opened again as a copy of fd 0 (dup3)`.
 *
 * @param c The change.
 * @returns The line.
 */
export function describeDescriptorChange(c: DescriptorChange): string {
  return `fd ${c.fd} (${c.target}): closed since, opened again as a copy of fd ${c.from} (dup3)`;
}

/** What a rollback does to the target's descriptors. */
export interface DescriptorFixes {
  /** Descriptors opened again ({@link planDescriptors}). */
  reopen: DescriptorChange[];
  /** File offsets put back (`planOffsets` in lib/kernel/kernel_state.ts). */
  offsets: OffsetChange[];
}

/** No change: a forced restore into another process (its descriptors are its own), or no `kernel` section. */
export const NO_DESCRIPTOR_FIXES: DescriptorFixes = { reopen: [], offsets: [] };

/**
 * Both plans, from the recorded and the present state.
 *
 * @param recorded The image's kernel section, decoded.
 * @param now The target's state now (while frozen).
 * @returns The descriptors to open again and the offsets to put back.
 */
export function planDescriptorFixes(recorded: KernelState, now: KernelState): DescriptorFixes {
  return { reopen: planDescriptors(recorded, now), offsets: planOffsets(recorded, now) };
}
