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
 * close-on-exec flag; the undo closes it. One whose every partner is closed too is left closed: its file cannot
 * be told from a different one opened since.
 *
 * Its number may have been taken since by another object: Deno's update check opens sockets at start-up, and a
 * socket that took the number of a closed copy of descriptor 0 left the rolled-back reader waiting on that
 * socket for ever (tests/fidelity/deno_test.ts: 2 of 8 quiet runs hung before this, 0 of 40 after). Under
 * memory rolled back, nothing names that newer object by the number, so the copy replaces it (`dup3` closes
 * what the number held). The newer object is first kept at another number by an injected
 * `fcntl(F_DUPFD_CLOEXEC)`, so that the undo can put it back, and closed when the restore commits. A userfaultfd
 * is never replaced (it is cryo's own write tracking).
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
  /** What holds its number now, replaced (absent when the number is closed). */
  displaced?: { target: string; cloexec: boolean };
}

/** Whether `now` names the object `then` named (its link target, and for a file its device and inode). */
function sameObject(then: OpenDescriptor, now: OpenDescriptor): boolean {
  return now.target === then.target && now.device === then.device && now.inode === then.inode;
}

/** Whether `now` is still the descriptor `then` was: the same object, the same flags (close-on-exec aside). */
function same(then: OpenDescriptor, now: OpenDescriptor | undefined): boolean {
  if (!now || !sameObject(then, now)) return false;
  return then.flags !== undefined && now.flags !== undefined &&
    (then.flags & ~O.CLOEXEC) === (now.flags & ~O.CLOEXEC);
}

/**
 * The descriptors a rollback opens again: each descriptor of the checkpoint closed now, or open on another
 * object (not a userfaultfd), whose open file description another descriptor of the checkpoint shared, and that
 * other still open on the same object with the same flags.
 *
 * @param recorded The image's kernel section, decoded.
 * @param now The target's state now (while frozen).
 * @returns The changes, by descriptor.
 */
export function planDescriptors(recorded: KernelState, now: KernelState): DescriptorChange[] {
  const open = new Map(now.descriptors.map((d) => [d.fd, d]));
  const changes: DescriptorChange[] = [];
  for (const d of recorded.descriptors) {
    const there = open.get(d.fd);
    if (d.flags === undefined || there && (sameObject(d, there) || there.target === USERFAULTFD)) continue;
    const root = d.shares ?? d.fd;
    const partner = recorded.descriptors.find((p) =>
      p.fd !== d.fd && (p.fd === root || p.shares === root) && same(p, open.get(p.fd))
    );
    if (partner) {
      const cloexec = (d.flags & O.CLOEXEC) !== 0;
      changes.push(
        there
          ? {
            fd: d.fd,
            from: partner.fd,
            target: d.target,
            cloexec,
            displaced: { target: there.target, cloexec: ((there.flags ?? 0) & O.CLOEXEC) !== 0 },
          }
          : { fd: d.fd, from: partner.fd, target: d.target, cloexec },
      );
    }
  }
  return changes;
}

const USERFAULTFD = "anon_inode:[userfaultfd]";

/**
 * One line for a dry run, e.g. `fd 33 (pipe:[1691514]): closed since, opened again as a copy of fd 0 (dup3)`,
 * or `fd 33 (pipe:[1691514]): socket:[1691600] there now, replaced by a copy of fd 0 (dup3)`.
 *
 * @param c The change.
 * @returns The line.
 */
export function describeDescriptorChange(c: DescriptorChange): string {
  const was = c.displaced ? `${c.displaced.target} there now, replaced by` : "closed since, opened again as";
  return `fd ${c.fd} (${c.target}): ${was} a copy of fd ${c.from} (dup3)`;
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
