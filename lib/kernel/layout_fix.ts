/**
 * Make a frozen target's layout follow an image before a restore writes into it. Real programs move: an
 * allocator trims a heap region, a runtime ends an idle thread and its stack goes, an arena grows. The plan
 * ({@link planLayout}) says, region by region, what must change so that every image region is mapped again as
 * it was; {@link applyLayout} makes each change by a system call injected into the target, each undo recorded
 * in the restore's journal first, so a restore that fails later still leaves the target exactly as it was.
 *
 * The rules (docs/RESTORE.md, "Layout follows the image"):
 * - an image region that vanished (wholly or in part) is mapped again at its address with its protection:
 *   anonymous private memory fresh, a private file mapping from the same file and offset; the restore then
 *   writes its data;
 * - a part covered by something else (another file, anonymous where a file was) is unmapped and mapped again;
 * - a protection that changed is put back (`mprotect`), and the program break (`brk`) is put back to the
 *   image's `[heap]` end;
 * - with the image's `layout` section (the source's whole map at the checkpoint): memory mapped since in
 *   address space that was free then is unmapped (its bytes saved in the journal first), and a private
 *   anonymous region that is not in the image (a `PROT_NONE` reservation) is made fresh again when its
 *   protection changed (an allocator counts on such memory being zero when it grows into it again);
 * - never touched: `[vdso]`, `[vvar]`, `[vsyscall]`, `[stack]`, the stacks of the target's live threads, shared
 *   mappings born since (their undo could not bring them back);
 * - what cannot be recreated is a refusal naming it: a shared mapping that vanished or was replaced, a deleted
 *   file, a device or special mapping.
 *
 * @module
 */

import { hex } from "../hex.ts";
import { MAP, MREMAP, PROT } from "../../ffi/constants.ts";
import type { RestoreJournal } from "./journal.ts";
import { type Perms, permsString, type Region, type RegionKind } from "./region.ts";
import { type Injector, SYS } from "./inject.ts";
import type { RecordedRegion } from "./layout_section.ts";

/** An address range. */
export interface Range {
  /** First address. */
  start: bigint;
  /** One past the last. */
  end: bigint;
}

/** One change {@link applyLayout} makes. */
export type LayoutChange =
  | { op: "unmap"; start: bigint; end: bigint; was: Region; why: string }
  | {
    op: "map";
    start: bigint;
    end: bigint;
    perms: Perms;
    /** The file of a private file mapping; undefined for anonymous memory. */
    path?: string;
    offset: bigint;
    why: string;
  }
  | { op: "protect"; start: bigint; end: bigint; perms: Perms; was: Perms; why: string }
  | { op: "brk"; to: bigint; from: bigint; why: string };

/** What {@link planLayout} found. */
export interface LayoutPlan {
  /** The changes, in the order they are made: unmaps, the break, maps, protections. */
  changes: LayoutChange[];
  /** What cannot be made to match (a restore is refused, naming each). */
  refusals: string[];
  /**
   * Where regions to unmap are moved aside (`mremap`) instead of having their bytes saved in the journal: a
   * free range of address space large enough for all of them, out of the way of every change (0n or absent:
   * save and unmap).
   */
  parkAt?: bigint;
}

/** What {@link applyLayout} leaves to do once the restore has committed. */
export interface AppliedLayout {
  /** Unmap the regions moved aside (to run once nothing can be undone any more). */
  release(): void;
  /** Bytes moved aside instead of saved. */
  parkedBytes: bigint;
}

const MREMAP_MAYMOVE_FIXED = MREMAP.MAYMOVE | MREMAP.FIXED;

/**
 * Bytes of address space {@link applyLayout} needs at {@link LayoutPlan.parkAt} for the plan's unmaps (each
 * followed by a free page, so that parked regions never merge).
 *
 * @param changes The planned changes.
 * @returns The bytes (0n when nothing is unmapped).
 */
export function parkingBytes(changes: readonly LayoutChange[]): bigint {
  let n = 0n;
  for (const c of changes) if (c.op === "unmap") n += c.end - c.start + 4096n;
  return n;
}

/** One line describing a change, for `--dry-run` and results. */
export function describeChange(c: LayoutChange): string {
  const range = c.op === "brk" ? "" : `${hex(c.start)}-${hex(c.end)}`;
  switch (c.op) {
    case "unmap":
      return `unmap ${range} ${permsString(c.was.perms)}${c.was.path ? ` ${c.was.path}` : ""} (${c.why})`;
    case "map":
      return `map ${range} ${permsString(c.perms)} ${
        c.path ? `${c.path} at offset ${hex(c.offset)}` : "anonymous"
      } (${c.why})`;
    case "protect":
      return `protect ${range} ${permsString(c.was)} -> ${permsString(c.perms)} (${c.why})`;
    case "brk":
      return `brk ${hex(c.from)} -> ${hex(c.to)} (${c.why})`;
  }
}

const NEVER: ReadonlySet<RegionKind> = new Set(["vdso", "vvar", "vsyscall", "special"]);
const ANON: ReadonlySet<RegionKind> = new Set(["anonymous", "heap", "stack", "named"]);

function isAnon(r: { kind: RegionKind; inode?: bigint }): boolean {
  return ANON.has(r.kind) && !r.inode;
}

function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && a.end > b.start;
}

const byStart = (a: Range, b: Range) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0);

/** `r` minus the union of `cut` (sorted by start, any overlap): the pieces left. */
function subtract(r: Range, cut: readonly Range[]): Range[] {
  const out: Range[] = [];
  let at = r.start;
  for (const c of cut) {
    if (c.end <= at || c.start >= r.end) continue;
    if (c.start > at) out.push({ start: at, end: c.start });
    if (c.end > at) at = c.end;
    if (at >= r.end) break;
  }
  if (at < r.end) out.push({ start: at, end: r.end });
  return out;
}

/** Only r, w, x (mprotect cannot change sharing). */
function sameProt(a: Perms, b: Perms): boolean {
  return a.read === b.read && a.write === b.write && a.exec === b.exec;
}

/** `PROT` bits of perms. */
export function protOf(p: Perms): number {
  return (p.read ? PROT.READ : 0) | (p.write ? PROT.WRITE : 0) | (p.exec ? PROT.EXEC : 0);
}

/**
 * Plan the changes that make `current` (the frozen target's map) follow the image.
 *
 * @param image The image's absolute regions.
 * @param current The target's regions, sorted by start.
 * @param opts `recorded`: the source's whole map at the checkpoint (the `layout` section; without it nothing
 *   is unmapped as born since); `keep`: ranges never to unmap (the stacks of the target's live threads).
 * @returns The changes and the refusals.
 */
export function planLayout(
  image: readonly Region[],
  current: readonly Region[],
  opts: { recorded?: readonly RecordedRegion[]; keep?: readonly Range[] } = {},
): LayoutPlan {
  const keep = [...(opts.keep ?? [])];
  const untouchable = (m: Region) =>
    NEVER.has(m.kind) || m.path === "[stack]" || keep.some((k) => overlaps(k, m));
  type Ranged = Exclude<LayoutChange, { op: "brk" }>;
  const unmaps: Ranged[] = [], maps: Ranged[] = [], protects: Ranged[] = [];
  const brks: LayoutChange[] = [];
  const refusals: string[] = [];
  const sortedImage = [...image].sort(byStart);

  // What must be mapped: the image's regions, and (with the recorded map) the private anonymous regions the
  // image left out (reservations), which must be there, fresh, with their recorded protection.
  type Want = Region & { data: boolean };
  const wants: Want[] = sortedImage.map((g) => ({ ...g, data: true }));
  if (opts.recorded) {
    for (const r of opts.recorded) {
      if (r.kind !== "anonymous" || r.perms.shared) continue;
      for (const piece of subtract(r, sortedImage)) {
        wants.push({
          ...piece,
          perms: r.perms,
          offset: 0n,
          device: "00:00",
          inode: 0n,
          path: "",
          kind: r.kind,
          data: false,
        });
      }
    }
    wants.sort(byStart);
  }

  const heap = current.find((m) => m.kind === "heap");
  let brkRange: Range | undefined; // what brk changes: neither unmapped as born since nor mapped
  for (const w of wants) {
    const name = `${hex(w.start)}-${hex(w.end)} ${permsString(w.perms)}${w.path ? ` ${w.path}` : ""}`;
    const canMap = !w.perms.shared && (isAnon(w) || w.kind === "file") && w.kind !== "heap";
    let end = w.end;
    if (w.kind === "heap") {
      if (!heap || heap.start !== w.start) {
        refusals.push(`${name}: the target's heap ${heap ? `starts at ${hex(heap.start)}` : "is gone"}`);
        continue;
      }
      if (heap.end !== w.end) {
        brks.push({
          op: "brk",
          from: heap.end,
          to: w.end,
          why: heap.end < w.end
            ? "the heap shrank since the checkpoint"
            : "the heap grew since the checkpoint",
        });
        brkRange = { start: heap.end < w.end ? heap.end : w.end, end: heap.end < w.end ? w.end : heap.end };
        end = heap.end < w.end ? heap.end : w.end; // the part that stays: its protection is checked below
      }
    }
    const over = current.filter((m) => m.start < end && m.end > w.start).sort(byStart);
    let at = w.start;
    const gap = (a: bigint, b: bigint) => {
      if (!canMap) {
        refusals.push(`${name}: ${hex(a)}-${hex(b)} is no longer mapped and cannot be recreated (${why(w)})`);
        return;
      }
      maps.push({
        op: "map",
        start: a,
        end: b,
        perms: w.perms,
        path: w.kind === "file" ? w.path : undefined,
        offset: w.kind === "file" ? w.offset + (a - w.start) : 0n,
        why: w.data ? "vanished since the checkpoint" : "a reservation, fresh again",
      });
    };
    for (const m of over) {
      const a = m.start > w.start ? m.start : w.start;
      const b = m.end < end ? m.end : end;
      if (a > at) gap(at, a);
      if (compatible(m, w, a)) {
        if (sameProt(m.perms, w.perms)) { /* as it was */ }
        else if (w.data) {
          protects.push({
            op: "protect",
            start: a,
            end: b,
            perms: w.perms,
            was: m.perms,
            why: "protection changed",
          });
        } else {
          // A reservation made accessible since: its pages may have been written; make it fresh.
          unmaps.push({ op: "unmap", start: a, end: b, was: m, why: "a reservation made accessible since" });
          gap(a, b);
        }
      } else if (untouchable(m)) {
        refusals.push(`${name}: ${hex(a)}-${hex(b)} is now ${describe(m)}, which cannot be unmapped`);
      } else if (m.perms.shared) {
        refusals.push(`${name}: ${hex(a)}-${hex(b)} is now the shared mapping ${describe(m)}`);
      } else {
        unmaps.push({ op: "unmap", start: a, end: b, was: m, why: `${describe(m)} took its place` });
        gap(a, b);
      }
      at = b;
    }
    if (at < end) gap(at, end);
  }

  if (opts.recorded) {
    // Born since: what the target maps in address space that was free at the checkpoint.
    const then = [...opts.recorded, ...sortedImage, ...(brkRange ? [brkRange] : [])].sort(byStart);
    for (const m of current) {
      if (untouchable(m) || m.perms.shared || m.kind === "heap") continue;
      for (const piece of subtract(m, then)) {
        unmaps.push({
          op: "unmap",
          start: piece.start,
          end: piece.end,
          was: m,
          why: "mapped since the checkpoint",
        });
      }
    }
  }
  unmaps.sort(byStart);
  maps.sort(byStart);
  return { changes: [...unmaps, ...brks, ...maps, ...protects], refusals };
}

function describe(m: Region): string {
  return `${hex(m.start)}-${hex(m.end)} ${permsString(m.perms)}${m.path ? ` ${m.path}` : ""}`;
}

function why(w: Region): string {
  if (w.perms.shared) return "a shared mapping: its other users' view cannot be recreated";
  if (w.kind === "deleted") return "its file was deleted";
  if (w.kind === "heap") return "the heap is put back with brk only";
  return `a ${w.kind} mapping`;
}

/** Whether target region `m` holds the same backing as wanted region `w` at address `a`. */
function compatible(m: Region, w: Region, a: bigint): boolean {
  if (m.perms.shared !== w.perms.shared) return false;
  if (isAnon(w)) return isAnon(m);
  if (m.inode !== w.inode || m.device !== w.device || m.path !== w.path) return false;
  return m.offset + (a - m.start) === w.offset + (a - w.start);
}

/**
 * Make the planned changes in the frozen target, each undo recorded in `journal` before the change: a region
 * about to be unmapped is moved aside to `plan.parkAt` (`mremap`; the undo moves it back, and `release()`
 * unmaps it once the restore has committed) or, without a place or when `mremap` refuses, has its populated
 * pages saved and is mapped again on undo; a mapping made is unmapped on undo; protections and the break are
 * put back.
 *
 * @param plan The plan (its refusals must be empty).
 * @param inj An injector into the frozen target.
 * @param journal The restore's undo journal.
 * @returns What is left to do once the restore has committed.
 */
export function applyLayout(plan: LayoutPlan, inj: Injector, journal: RestoreJournal): AppliedLayout {
  const parked: { at: bigint; length: bigint }[] = [];
  let park = plan.parkAt ?? 0n;
  for (const c of plan.changes) {
    const what = describeChange(c);
    switch (c.op) {
      case "unmap": {
        const len = c.end - c.start;
        if (park) {
          // Moved aside whole, page tables and all: no byte is copied, the undo moves it back.
          const to = park;
          let moved = false;
          journal.recordUndo(`move back ${what}`, () => {
            if (moved) inj.syscall(SYS.mremap, to, len, len, MREMAP_MAYMOVE_FIXED, c.start);
          });
          moved = BigInt.asUintN(64, inj.raw(SYS.mremap, c.start, len, len, MREMAP_MAYMOVE_FIXED, to)) === to;
          if (moved) {
            parked.push({ at: to, length: len });
            park += len + 4096n;
            break;
          } // refused (it spans mappings): saved and unmapped below
        }
        journal.savePopulated(c.start, c.end);
        const was = c.was;
        journal.recordUndo(`map back ${what}`, () => {
          const flags = MAP.PRIVATE | MAP.FIXED_NOREPLACE;
          if (isAnon(was)) inj.mmap(c.start, len, protOf(was.perms), flags | MAP.ANONYMOUS);
          else {inj.mapFile(
              was.path,
              c.start,
              len,
              protOf(was.perms),
              flags,
              was.offset + (c.start - was.start),
            );}
        });
        inj.munmap(c.start, len);
        break;
      }
      case "brk": {
        if (c.to < c.from) journal.savePopulated(c.to, c.from);
        journal.recordUndo(`put the break back for ${what}`, () => {
          const got = inj.brk(c.from);
          if (got !== c.from) throw new Error(`brk(${hex(c.from)}) left the break at ${hex(got)}`);
        });
        const got = inj.brk(c.to);
        if (got !== c.to) throw new Error(`Cannot ${what}: brk left the break at ${hex(got)}`);
        break;
      }
      case "map": {
        let made = false;
        journal.recordUndo(`unmap ${what}`, () => {
          if (made) inj.munmap(c.start, c.end - c.start);
        });
        const flags = MAP.PRIVATE | MAP.FIXED_NOREPLACE;
        const len = c.end - c.start;
        const at = c.path
          ? inj.mapFile(c.path, c.start, len, protOf(c.perms), flags, c.offset)
          : inj.mmap(c.start, len, protOf(c.perms), flags | MAP.ANONYMOUS);
        made = true;
        if (at !== c.start) throw new Error(`Cannot ${what}: mapped at ${hex(at)}`);
        break;
      }
      case "protect":
        journal.recordUndo(`put back ${what}`, () => inj.mprotect(c.start, c.end - c.start, protOf(c.was)));
        inj.mprotect(c.start, c.end - c.start, protOf(c.perms));
        break;
    }
  }
  return {
    parkedBytes: parked.reduce((n, p) => n + p.length, 0n),
    release() {
      for (const p of parked.splice(0)) inj.munmap(p.at, p.length);
    },
  };
}

/**
 * A free place for the injector's scratch page: the highest gap below the top of user space that touches
 * nothing in `occupied` (1 MiB clear on both sides), so it never takes an address a change maps.
 *
 * @param occupied Every range in use or about to be (target and image regions).
 * @param size Bytes needed.
 * @returns The address, or 0n for none (let the kernel choose).
 */
export function freeGap(occupied: readonly Range[], size: bigint): bigint {
  const margin = 1n << 20n;
  const top = 0x7ffffffff000n;
  const sorted = [...occupied].sort(byStart);
  let hi = top;
  for (let i = sorted.length - 1; i >= -1; i--) {
    const lo = i >= 0 ? sorted[i].end : 0x10000n;
    if (lo >= top) continue;
    if (hi - lo >= size + 2n * margin && lo > 0x100000000n) return ((hi - margin - size) >> 12n) << 12n;
    if (i >= 0 && sorted[i].start < hi) hi = sorted[i].start;
  }
  return 0n;
}
