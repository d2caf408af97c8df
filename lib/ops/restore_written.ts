/**
 * The write phase of a rollback that costs what was written: inside a restore's commit (the target frozen and
 * held, every overwritten byte journaled), only the pages that may differ from the image are written back,
 * from the image, and the tracking is armed again before the target runs. Which pages:
 *
 * - the pages the tracking reports written since the image was taken (its `untracked` regions whole: mapped,
 *   moved or mapped back since);
 * - the image's data pages that are no longer populated (a page released with `MADV_DONTNEED` and not
 *   touched since loses its written bit with its page table entry, so it is found this way).
 *
 * Of those, pages the image holds data for get that data; pages that are holes in private anonymous memory
 * (first populated since the image) are released again by an injected `madvise(MADV_DONTNEED)` (their bytes
 * journaled first), so the process's RSS returns too; holes in file mappings get the file's contents back.
 *
 * @module
 */

import { MADV } from "../../ffi/constants.ts";
import { inject } from "../kernel/inject.ts";
import type { Frozen } from "../kernel/freeze.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import { RunBuilder } from "../kernel/runs.ts";
import type { ProcessTracking } from "../kernel/tracking.ts";
import {
  concatRuns,
  intersectRuns,
  runBytes,
  type Runs,
  runsOf,
  subtractRuns,
  unionRuns,
} from "../kernel/run_sets.ts";
import { KIND } from "../image/format.ts";
import type { MemoryLoader } from "../image/loader.ts";
import { anonymousRange, RemoteWriter } from "../image/remote.ts";
import { BouncedWrites } from "../image/bounce.ts";
import type { LoadTarget } from "../image/targets.ts";

/** What {@link loadWritten} did. */
export interface WrittenLoad {
  /** Bytes the tracking reported written (tracked regions), and of regions not tracked, before clipping. */
  writtenBytes: number;
  /** Bytes of image data written back (before the journal skipped pages that had not changed). */
  copiedBytes: number;
  /** Bytes of holes given back (released, or a file's contents). */
  holeBytes: number;
  /** Bytes released by `MADV_DONTNEED` (populated since the image, a hole in it). */
  releasedBytes: number;
}

/** Bytes of the buffer the written pages are read into from the image. */
const BUFFER = 8 << 20;
/** The runs of each open image's data records. */
const dataRuns = new WeakMap<MemoryLoader, Runs>();

const isFile = (g: { inode: bigint; kind: string }) =>
  g.inode !== 0n || g.kind === "file" || g.kind === "deleted";

/**
 * Write back only what changed since the image was taken (see the module doc), then arm the tracking again.
 * Call it from a restore's commit, after the layout fix and the thread fixes.
 *
 * @param loader The verified image.
 * @param target The commit's target (its journal saves every byte first).
 * @param frozen The frozen target (for the injected `madvise`).
 * @param tracking The tracking armed when the image was taken.
 * @returns What was written.
 */
export async function loadWritten(
  loader: MemoryLoader,
  target: LoadTarget,
  frozen: Frozen,
  tracking: ProcessTracking,
): Promise<WrittenLoad> {
  const pid = frozen.pid;
  const regions = loader.regions.filter((g) => !g.relocatable).sort((x, y) => (x.start < y.start ? -1 : 1));
  const written = tracking.written({ rearm: false, regions });
  const present: Runs[] = [];
  {
    using pm = Pagemap.open(pid);
    for (const g of regions) present.push(pm.runs(g.start, g.end, { anonOnly: isFile(g) }));
  }
  const populated = concatRuns(present); // the image's regions are in address order, disjoint
  let data = dataRuns.get(loader); // found once per open image (a snapshot holds its image open)
  if (!data) {
    const b = new RunBuilder(); // user addresses (below 2^57) are exact as numbers
    for (const r of loader.index.segment(0)) {
      if (r.kind === KIND.DATA) b.add(Number(r.address), Number(r.address) + r.length);
    }
    data = b.finish();
    dataRuns.set(loader, data);
  }
  const lost = subtractRuns(data, populated);
  const todo = intersectRuns(unionRuns(written.all, lost), runsOf(regions));
  const out: WrittenLoad = {
    writtenBytes: runBytes(written.all),
    copiedBytes: 0,
    holeBytes: 0,
    releasedBytes: 0,
  };
  const release: { start: bigint; end: bigint }[] = [];
  const fileHoles: { address: bigint; length: number }[] = [];
  {
    using remote = new RemoteWriter(pid, target.journal);
    // Raw pages are read from the image with pread (all of a batch in one helper call) into a buffer, not
    // through a mapping of it, where each scattered page would cost a page fault; then written from there.
    const bounced = new BouncedWrites((ops, n) => loader.readStoredMany(ops, n), remote, BUFFER);
    let j = 0;
    for (const r of loader.index.segment(0)) {
      const rs = r.address, re = r.address + BigInt(r.length);
      while (j < todo.length && todo[j + 1] <= rs) j += 2;
      let decoded: Uint8Array | undefined;
      for (let k = j; k < todo.length && todo[k] < re; k += 2) {
        const s = todo[k] > rs ? todo[k] : rs, e = todo[k + 1] < re ? todo[k + 1] : re;
        const len = Number(e - s), off = Number(s - rs);
        if (r.kind === KIND.HOLE) {
          out.holeBytes += len;
          if (anonymousRange(regions, s, e)) release.push({ start: s, end: e });
          else fileHoles.push({ address: s, length: len });
          continue;
        }
        out.copiedBytes += len;
        if (r.codec === 0) {
          bounced.add(s, r.fileOffset + off, len);
        } else {
          decoded ??= await loader.readRecord(r);
          bounced.flush();
          remote.write(s, decoded.subarray(off, off + len));
        }
      }
    }
    bounced.flush();
    if (fileHoles.length) remote.holes(fileHoles, regions);
  }
  const toRelease = intersectRuns(runsOf(release), populated);
  if (toRelease.length) {
    using inj = inject(frozen);
    for (let i = 0; i < toRelease.length; i += 2) {
      const len = toRelease[i + 1] - toRelease[i];
      target.journal?.save(toRelease[i], Number(len)); // an undo writes them back
      inj.madvise(toRelease[i], len, MADV.DONTNEED);
      out.releasedBytes += Number(len);
    }
  }
  tracking.arm(regions); // the target is still frozen: nothing can write between the rollback and the arming
  return out;
}
