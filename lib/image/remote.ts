/**
 * Writing another process's memory for a load: {@link RemoteWriter} copies data with `process_vm_writev`
 * (batched, falling back to `/proc/<pid>/mem` for pages the process cannot write) and makes holes read as
 * they did at the checkpoint: zero in private anonymous memory, the file's contents in a private file mapping,
 * untouched in a shared one.
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import { addressOf, cstr, errno, libc, open, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { CryoError, SystemError } from "../errors.ts";
import { readRegions } from "../kernel/maps.ts";
import type { Region } from "../kernel/region.ts";
import { findZeroPages } from "../kernel/zero.ts";
import { transferRemote } from "./sources.ts";
import { Pagemap } from "../kernel/pagemap.ts";
import type { RestoreJournal } from "../kernel/journal.ts";

/** Bytes of address space whose pages a hole zeroer reads at a time ({@link RemoteWriter.holeZeroerAt}). */
const HOLE_WINDOW = 64 << 20;

/**
 * Whether every region that overlaps `[start, end)` is private anonymous memory, where a page that is not
 * present reads as zero (so zeroing may skip it).
 *
 * @param regions Regions (an image's region table, or the target's).
 * @param start First address.
 * @param end One past the last.
 * @returns True when some region overlaps and all that do are private and anonymous.
 */
export function anonymousRange(
  regions: readonly (Region & { relocatable?: boolean })[],
  start: bigint,
  end: bigint,
): boolean {
  let any = false;
  for (const g of regions) {
    if (g.relocatable || g.end <= start || g.start >= end) continue;
    if (g.inode !== 0n || g.perms.shared || g.kind === "file" || g.kind === "deleted") return false;
    any = true;
  }
  return any;
}

const ZEROS = new Uint8Array(1 << 20);
let sharedBounce: Uint8Array<ArrayBuffer> | undefined;
/** One 16 MiB bounce buffer for every writer of this process (they use it synchronously), not one per load. */
const bounce = () => (sharedBounce ??= new Uint8Array(16 << 20));
const IOV_BATCH = 1024; // UIO_MAXIOV

/** A region of an image's region table, as far as loading needs it. */
type ImageRegionLike = Region & { relocatable?: boolean };
let zerosAddr_: bigint | undefined;
/** Its address, taken on first use (importing this module needs no `--allow-ffi`). */
const zerosAddr =
  (): bigint => (zerosAddr_ ??= BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(ZEROS))));

/** Writes another process's memory: `process_vm_writev`, falling back to `/proc/<pid>/mem` (read-only pages). */
export class RemoteWriter implements Disposable {
  #mem = -1;
  #pagemap: Pagemap | undefined;
  #bounce: Uint8Array<ArrayBuffer> | undefined;
  #zero = new Uint8Array(0);
  #maps: Region[] | undefined;
  #files = new Map<string, number>();
  #liov = new BigUint64Array(2 * IOV_BATCH);
  #riov = new BigUint64Array(2 * IOV_BATCH);
  #queued = 0;
  #queuedBytes = 0;
  readonly #window: number;

  /**
   * Write process `pid`.
   *
   * @param pid The process.
   * @param journal Where every byte about to be overwritten is saved first (a restore's undo record).
   * @param opts `window`: bytes queued before they are written (default 8 MiB; the memory budget's window).
   */
  constructor(readonly pid: number, readonly journal?: RestoreJournal, opts: { window?: number } = {}) {
    this.#window = opts.window ?? 8 << 20;
  }

  /**
   * Write `bytes` at `addr` in the process.
   *
   * @param addr Remote address.
   * @param bytes Local bytes (e.g. a view of the mapped image).
   */
  write(addr: bigint, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    // Its buffer's address is taken once (ffi/libc.ts `addressOf`): a reader writes chunk after chunk from a
    // ring of a few buffers, and `Deno.UnsafePointer.of()` of a view per chunk kept the views alive across
    // scavenges (a streamed encrypted restore of 524,288 one-page records, whose ring has two buffers, grew V8's
    // young generation to 32 MiB).
    this.#writeAt(addr, addressOf(bytes), bytes.length);
  }
  /** The hole zeroer whose window the pagemap's run buffer holds ({@link holeZeroerAt}). */
  #scanned: object | undefined;

  /**
   * Write the file's contents over `[a, e)` of a private file mapping, where the process wrote its pages since
   * (they are anonymous now). The file is read through `/proc/<pid>/map_files/`, so it is the very object mapped
   * (a deleted file too).
   */
  #fileRange(a: bigint, e: bigint, region: Region): void {
    const fd = this.#mappedFile(a);
    const size = 16 << 20;
    this.#bounce ??= bounce();
    const local = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#bounce)));
    while (a < e) {
      const n = Math.min(size, Number(e - a));
      const at = region.offset + (a - region.start);
      let got = 0;
      while (got < n) { // past the file's end a mapping reads as zero
        const r = Number(libc.pread(fd, ptrOf(local + BigInt(got)), BigInt(n - got), at + BigInt(got)));
        if (r < 0) throw systemError("pread", errno(), `the file mapped at ${hex(a)} in pid ${this.pid}`);
        if (r === 0) break;
        got += r;
      }
      if (got < n) libc.memset(ptrOf(local + BigInt(got)), 0, BigInt(n - got));
      this.#writeAt(a, local, n);
      a += BigInt(n);
    }
  }

  /**
   * Make holes read as they did at the checkpoint, with one pagemap scan per region rather than one per hole:
   * zero in private anonymous memory, the file's contents in a private file mapping, and a shared mapping left
   * as its object holds it (it was never the process's alone to roll back). Only the pages the process has now
   * (anonymous ones, in a file mapping) inside a hole are touched.
   *
   * @param holes Holes sorted by address, not overlapping.
   * @param regions The image's region table.
   */
  holes(holes: Iterable<{ address: bigint; length: number }>, regions: readonly ImageRegionLike[]): void {
    const zero = this.holeZeroer(regions);
    for (const h of holes) zero(h);
  }

  /**
   * {@link holes}, one hole at a time: a function to call with each hole in address order (they need not all be
   * known at once, so a load can make them zero as it walks the index).
   *
   * @param regions The image's region table.
   * @returns The function.
   */
  holeZeroer(regions: readonly ImageRegionLike[]): (hole: { address: bigint; length: number }) => void {
    const zero = this.holeZeroerAt(regions);
    return (hole) => zero(Number(hole.address), hole.length);
  }

  /**
   * {@link holeZeroer} with the hole's address as a number (user addresses are below 2^47, exact in a double):
   * no bigint or object per hole, for a load that walks hundreds of thousands of them.
   *
   * @param regions The image's region table.
   * @returns The function, called with each hole's address and length in address order.
   */
  holeZeroerAt(regions: readonly ImageRegionLike[]): (address: number, length: number) => void {
    const absolute = regions.filter((g) => !g.relocatable).sort((x, y) => (x.start < y.start ? -1 : 1));
    const starts = absolute.map((g) => Number(g.start)), ends = absolute.map((g) => Number(g.end));
    // Holes and regions are both sorted: a cursor over the regions, and the pages the process has read a window
    // of address space at a time (all of a 2 GiB region with every other page present were 4 MiB of runs, 8
    // MiB with their numbers).
    let gi = 0, runs: Float64Array = new Float64Array(0), r = 0, windowEnd = 0, file = false;
    const me = {}; // the pagemap's run buffer is shared: another zeroer's scan since means scanning again
    return (hole, length) => {
      const end = hole + length;
      if (this.#scanned !== me) windowEnd = 0;
      for (let at = hole; at < end;) {
        while (gi < absolute.length && ends[gi] <= at) {
          gi++;
          windowEnd = 0;
        }
        const g = absolute[gi];
        if (!g || at < starts[gi]) { // outside every region: read and compare
          const to = g ? Math.min(end, starts[gi]) : end;
          this.#zeroScan(BigInt(at), to - at);
          at = to;
          continue;
        }
        const to = Math.min(end, ends[gi]);
        if (g.perms.shared) { // a shared mapping's holes are its object's: untouched
          at = to;
          continue;
        }
        if (at >= windowEnd) {
          file = g.inode !== 0n || g.kind === "file" || g.kind === "deleted";
          windowEnd = Math.min(ends[gi], at + HOLE_WINDOW);
          this.#pagemap ??= Pagemap.open(this.pid);
          runs = this.#pagemap.runNumbers(BigInt(at), BigInt(windowEnd), { anonOnly: file });
          this.#scanned = me;
          r = 0;
        }
        // Intersect the hole with the pages the process has (both sorted): two cursors.
        const upto = Math.min(to, windowEnd);
        while (r < runs.length && runs[r + 1] <= at) r += 2;
        for (let q = r; q < runs.length && runs[q] < upto; q += 2) {
          const a = Math.max(runs[q], at), e = Math.min(runs[q + 1], upto);
          if (file) this.#fileRange(BigInt(a), BigInt(e), g);
          else this.#zeroScan(BigInt(a), e - a);
        }
        at = upto;
      }
    };
  }

  /**
   * Queue a write of `len` bytes from local memory (which must stay valid until {@link flush}) to `addr`;
   * queued writes go out up to 1024 or a window of bytes at a time in one `process_vm_writev`.
   *
   * @param addr Remote address.
   * @param local Local address.
   * @param len Bytes.
   */
  queue(addr: bigint, local: bigint, len: number): void {
    for (let off = 0; off < len;) {
      const n = Math.min(len - off, this.#window);
      const q = this.#queued++;
      this.#liov[2 * q] = local + BigInt(off);
      this.#liov[2 * q + 1] = BigInt(n);
      this.#riov[2 * q] = addr + BigInt(off);
      this.#riov[2 * q + 1] = BigInt(n);
      this.#queuedBytes += n;
      off += n;
      if (this.#queued === IOV_BATCH || this.#queuedBytes >= this.#window) this.flush();
    }
  }

  /** Write every queued write. A piece the kernel refuses (a read-only page) goes through `/proc/<pid>/mem`. */
  flush(): void {
    const count = this.#queued;
    this.#queued = 0;
    this.#queuedBytes = 0;
    this.#flush(count);
  }

  #flush(count: number): void {
    let liov = this.#liov, riov = this.#riov;
    // Journaled and written in the helper, a batch a call; what it could not write is written below.
    if (count && this.journal) ({ liov, riov, count } = this.journal.saveAndWrite(liov, riov, count));
    for (let i = 0; i < count;) {
      const n = BigInt(Math.min(count - i, IOV_BATCH));
      let got = libc.process_vm_writev(
        this.pid,
        liov.subarray(2 * i),
        n,
        riov.subarray(2 * i),
        n,
        0n,
      );
      if (got <= 0n) {
        const e = got < 0n ? errno() : 14;
        if (e !== 14 /* EFAULT */) {
          throw systemError("process_vm_writev", e, `pid ${this.pid} at ${hex(riov[2 * i])}`);
        }
        this.#writeAt(riov[2 * i], liov[2 * i], Number(liov[2 * i + 1]));
        i++;
        continue;
      }
      while (got > 0n) { // skip what was written; a partly written piece continues where it stopped
        const l = liov[2 * i + 1];
        if (got >= l) {
          got -= l;
          i++;
        } else {
          for (const iov of [liov, riov]) {
            iov[2 * i] += got;
            iov[2 * i + 1] -= got;
          }
          got = 0n;
        }
      }
    }
  }

  /** An fd of the file mapped at `addr` in the process, from `/proc/<pid>/map_files/` (cached per mapping). */
  #mappedFile(addr: bigint): number {
    this.#maps ??= readRegions(this.pid);
    const m = this.#maps.find((r) => r.start <= addr && addr < r.end);
    if (!m) {
      throw new CryoError(`Cannot restore the file contents at ${hex(addr)} in pid ${this.pid}: not mapped`);
    }
    const path = `/proc/${this.pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`;
    let fd = this.#files.get(path);
    if (fd === undefined) {
      fd = libc.open(cstr(path), O.RDONLY | O.CLOEXEC, 0);
      if (fd < 0) throw systemError("open", errno(), path);
      this.#files.set(path, fd);
    }
    return fd;
  }

  /** Read `[addr, addr + len)` and write zeros over its pages that are not zero. */
  #zeroScan(addr: bigint, len: number): void {
    const size = 16 << 20;
    this.#bounce ??= bounce();
    const local = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#bounce)));
    for (let off = 0; off < len; off += size) {
      const n = Math.min(size, len - off);
      const a = addr + BigInt(off);
      transferRemote("process_vm_readv", this.pid, local, a, n);
      const pages = Math.floor(n / PAGE_SIZE);
      if (this.#zero.length < pages) this.#zero = new Uint8Array(pages);
      const z = findZeroPages(local, pages * PAGE_SIZE, PAGE_SIZE, this.#zero);
      for (let i = 0; i < pages;) {
        let j = i;
        while (j < pages && z[j] === z[i]) j++;
        if (!z[i]) this.#writeZeros(a + BigInt(i * PAGE_SIZE), (j - i) * PAGE_SIZE);
        i = j;
      }
      if (n > pages * PAGE_SIZE) this.#writeZeros(a + BigInt(pages * PAGE_SIZE), n - pages * PAGE_SIZE);
    }
  }

  #writeZeros(addr: bigint, len: number): void {
    for (let off = 0; off < len; off += ZEROS.length) {
      this.#writeAt(addr + BigInt(off), zerosAddr(), Math.min(ZEROS.length, len - off));
    }
  }

  #writeAt(remote: bigint, local: bigint, len: number): void {
    this.journal?.save(remote, len);
    try {
      transferRemote("process_vm_writev", this.pid, local, remote, len);
      return;
    } catch (e) {
      if (!(e instanceof SystemError) || e.code !== "EFAULT") throw e;
    }
    if (this.#mem < 0) this.#mem = open(`/proc/${this.pid}/mem`, O.RDWR | O.CLOEXEC);
    let done = 0;
    while (done < len) {
      const n = libc.pwrite(
        this.#mem,
        ptrOf(local + BigInt(done)),
        BigInt(len - done),
        remote + BigInt(done),
      );
      if (n <= 0n) {
        throw systemError(
          "pwrite",
          n < 0n ? errno() : 5,
          `/proc/${this.pid}/mem at ${hex(remote + BigInt(done))}`,
        );
      }
      done += Number(n);
    }
  }

  /** Close `/proc/<pid>/mem` and the pagemap. Idempotent. */
  close(): void {
    if (this.#mem >= 0) libc.close(this.#mem);
    for (const fd of this.#files.values()) libc.close(fd);
    this.#files.clear();
    this.#mem = -1;
    this.#pagemap?.close();
    this.#pagemap = undefined;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
