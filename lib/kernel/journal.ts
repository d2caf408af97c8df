/**
 * The undo journal of a restore: before a byte of the target's memory or a thread's registers is changed, what
 * was there is saved here, so that a restore that fails, is aborted (SIGINT, SIGTERM) or meets a register set
 * the kernel refuses can put the target back exactly as it was. Memory goes to an unlinked 0600 temporary file
 * (`O_TMPFILE`: it has no name, so nothing is left behind even if cryo is killed), read through a bounded
 * bounce buffer, except what {@link RestoreJournal.saveAndWrite} keeps in memory (up to two 16 MiB chunks);
 * registers are kept in memory.
 *
 * @module
 */

import { O } from "../../ffi/constants.ts";
import { cstr, errno, libc, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { helper } from "../../ffi/helper.ts";
import type { Registers } from "./threads.ts";
import { Pagemap } from "./pagemap.ts";

const O_TMPFILE = 0o20000000 | O.DIRECTORY;
const BOUNCE = 16 << 20;
const EFAULT = 14;
const ENOSPC = 28;
const EDQUOT = 122;

let sharedBounce: Uint8Array<ArrayBuffer> | undefined;

/**
 * Where a journal keeps saved memory, in order: `$CRYO_JOURNAL_DIR` alone when set; else `/dev/shm` (memory:
 * the fastest, and the journal lives only as long as the restore) and, should it fill up, `$TMPDIR` or
 * `/var/tmp`.
 *
 * @returns The directories to try.
 */
export function journalDirs(): string[] {
  const set = Deno.env.get("CRYO_JOURNAL_DIR");
  if (set) return [set];
  const disk = Deno.env.get("TMPDIR") ?? "/var/tmp";
  try {
    if (Deno.statSync("/dev/shm").isDirectory) return ["/dev/shm", disk];
  } catch { /* no tmpfs there */ }
  return [disk];
}

/**
 * Saved ranges, packed one after another in the journal file from `at`: `(address, length)` pairs; or, with
 * `zero`, ranges whose old bytes were all zero (nothing stored: the undo writes zeros).
 */
interface Entry {
  pairs: BigUint64Array;
  len: number;
  at: number;
  fd: number;
  zero?: boolean;
}

/**
 * A batch written by {@link RestoreJournal.saveAndWrite}: its runs as `cryo_diff_runs` found them (range index,
 * offset, length, old bytes all zero), the batch's remote iovecs, and the data runs' old bytes packed in `mem`
 * from `at` (kept in memory: no copy into the journal file).
 */
interface MemEntry {
  runs: BigUint64Array;
  riov: BigUint64Array;
  mem: Uint8Array<ArrayBuffer>;
  at: number;
}

/** Bytes of a chunk of old bytes kept in memory. */
const CHUNK = 16 << 20;
/** Chunks a journal may keep in memory (the rest goes to its file). */
const MEMORY_CHUNKS = 2;
/** Chunks given back by closed journals, for the next (a snapshot's rollbacks would fault them in each time). */
const chunkPool: Uint8Array<ArrayBuffer>[] = [];

/** A change other than a write (a mapping, a protection, the break), with its undo. */
interface Undo {
  what: string;
  undo: () => void;
}

/** A batch of writes: `count` pairs of local and remote `(address, length)` iovecs. */
export interface IovBatch {
  /** Local iovecs. */
  liov: BigUint64Array<ArrayBuffer>;
  /** Remote iovecs. */
  riov: BigUint64Array<ArrayBuffer>;
  /** Pairs. */
  count: number;
}

/** The undo record of a restore into process `pid`. Close it (or `using`) when done. */
export class RestoreJournal implements Disposable {
  /** The process. */
  readonly pid: number;
  readonly #dirs: string[];
  /** Ranges whose old pages were moved aside ({@link markAside}), by address. */
  #aside: { start: bigint; end: bigint }[] = [];
  #dir = 0;
  #fd = -1;
  #at = 0;
  readonly #fds: number[] = [];
  #mem = -1;
  #size = 0;
  readonly #entries: (Entry | Undo | MemEntry)[] = [];
  readonly #chunks: Uint8Array<ArrayBuffer>[] = [];
  #chunkAt = CHUNK;
  #result = new BigUint64Array(2);
  readonly #registers = new Map<number, Registers>();
  readonly #actions: (() => void)[] = [];
  #bounce: Uint8Array<ArrayBuffer> | undefined;
  #liov = new BigUint64Array(2 * 1024);
  #riov = new BigUint64Array(2 * 1024);

  /**
   * A journal for process `pid`.
   *
   * @param pid The target.
   * @param dirs Where the unlinked file is made, in order of preference: the next is used when one is full
   *   (default {@link journalDirs}).
   */
  constructor(pid: number, dirs: string | string[] = journalDirs()) {
    this.pid = pid;
    this.#dirs = typeof dirs === "string" ? [dirs] : dirs;
  }

  /** Bytes of memory saved. */
  get bytes(): number {
    return this.#size;
  }

  /** Threads whose registers were saved. */
  get threads(): number {
    return this.#registers.size;
  }

  #file(): number {
    if (this.#fd >= 0) return this.#fd;
    const dir = this.#dirs[this.#dir];
    let fd = libc.open(cstr(dir), O_TMPFILE | O.RDWR | O.CLOEXEC, 0o600);
    if (fd < 0) {
      // A file system without O_TMPFILE: a named 0600 file, unlinked at once.
      const name = `${dir}/.cryo-journal-${Deno.pid}-${crypto.randomUUID()}`;
      fd = libc.open(cstr(name), O.RDWR | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
      if (fd < 0) throw systemError("open", errno(), `the restore journal in ${dir}`);
      libc.unlink(cstr(name));
    }
    this.#fds.push(fd);
    this.#fd = fd;
    this.#at = 0;
    return fd;
  }

  #bounceAddr(): bigint {
    // One bounce buffer for every journal of this process (they use it synchronously): a restore a minute
    // would otherwise leave 16 MiB freed each time for malloc to keep.
    sharedBounce ??= new Uint8Array(BOUNCE);
    this.#bounce = sharedBounce;
    return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#bounce)));
  }

  /**
   * Save the target's bytes of `[addr, addr + len)` before they are overwritten.
   *
   * @param addr Remote address.
   * @param len Bytes.
   */
  save(addr: bigint, len: number): void {
    if (this.#inAside(addr, BigInt(len))) return; // its old pages are aside, whole
    for (let off = 0; off < len; off += BOUNCE) {
      const n = Math.min(BOUNCE, len - off);
      const a = addr + BigInt(off);
      this.#readInto(a, n, this.#bounceAddr());
      this.#appendFrom(new BigUint64Array([a, BigInt(n)]), n, this.#bounceAddr());
    }
  }

  /**
   * Save the populated pages of `[start, end)` (present or swapped, by the pagemap), before the range is
   * unmapped or cut off: an undo maps it again and writes them back.
   *
   * @param start First address, page aligned.
   * @param end One past the last.
   */
  savePopulated(start: bigint, end: bigint): void {
    let runs: BigUint64Array;
    {
      using pm = Pagemap.open(this.pid);
      runs = pm.runs(start, end);
    }
    for (let i = 0; i < runs.length; i += 2) {
      for (let a = runs[i]; a < runs[i + 1]; a += BigInt(BOUNCE)) {
        const n = runs[i + 1] - a < BigInt(BOUNCE) ? Number(runs[i + 1] - a) : BOUNCE;
        this.save(a, n);
      }
    }
  }

  /**
   * Record that the old pages of `[start, end)` were moved aside whole (an injected `mremap` with
   * `MREMAP_DONTUNMAP`, whose undo, moving them back, the caller recorded with {@link recordUndo}): the range is
   * empty now, and writes into it are not saved (nor compared: there is nothing to compare with).
   *
   * @param start First address, page aligned.
   * @param end One past the last.
   */
  markAside(start: bigint, end: bigint): void {
    this.#aside.push({ start, end });
    this.#aside.sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  /** Whether `[addr, addr + len)` lies inside one range marked aside. */
  #inAside(addr: bigint, len: bigint): boolean {
    for (const r of this.#aside) if (r.start <= addr && addr + len <= r.end) return true;
    return false;
  }

  /**
   * Record the undo of a change about to be made to the target (a mapping made or removed, a protection, the
   * break). The journal plays memory and these undos back in one reverse order, so a region unmapped after its
   * bytes were saved is mapped again before they are written back.
   *
   * @param what The change, for errors.
   * @param undo Puts it back (runs inside {@link undo}).
   */
  recordUndo(what: string, undo: () => void): void {
    this.#entries.push({ what, undo });
  }

  /** Changes other than writes recorded with {@link recordUndo}. */
  get changes(): number {
    return this.#entries.filter((e) => "undo" in e).length;
  }

  /**
   * Save what a batch of writes would overwrite, and keep only the writes that change something: the target's
   * bytes under the batch are read (one `process_vm_readv` per bounce buffer), compared page by page with the
   * bytes to be written, and only the pages that differ are journaled and returned to be written. A rollback
   * then costs what changed.
   *
   * @param liov Local iovecs (the new bytes).
   * @param riov Remote iovecs (where they go).
   * @param count Pairs.
   * @returns The writes that change something (new arrays; the inputs are not changed).
   */
  saveChanged(liov: BigUint64Array, riov: BigUint64Array, count: number): IovBatch {
    const out: IovBatch = { liov: new BigUint64Array(2 * 64), riov: new BigUint64Array(2 * 64), count: 0 };
    const push = (l: bigint, r: bigint, len: bigint) => {
      if (out.count * 2 === out.liov.length) {
        for (const k of ["liov", "riov"] as const) {
          const grown = new BigUint64Array(out[k].length * 2);
          grown.set(out[k]);
          out[k] = grown;
        }
      }
      out.liov[2 * out.count] = l;
      out.liov[2 * out.count + 1] = len;
      out.riov[2 * out.count] = r;
      out.riov[2 * out.count + 1] = len;
      out.count++;
    };
    const local = this.#bounceAddr();
    let i = 0;
    while (i < count) {
      let n = 0, used = 0;
      while (i + n < count && n < 1024) {
        const len = Number(riov[2 * (i + n) + 1]);
        if (used + len > BOUNCE) break;
        used += len;
        n++;
      }
      if (n === 0) { // one range larger than the bounce buffer: its own batches
        const len = Number(riov[2 * i + 1]);
        for (let off = 0; off < len; off += BOUNCE) {
          const piece = BigInt(Math.min(BOUNCE, len - off));
          const one = this.saveChanged(
            new BigUint64Array([liov[2 * i] + BigInt(off), piece]),
            new BigUint64Array([riov[2 * i] + BigInt(off), piece]),
            1,
          );
          for (let k = 0; k < one.count; k++) push(one.liov[2 * k], one.riov[2 * k], one.liov[2 * k + 1]);
        }
        i++;
        continue;
      }
      const batchL = liov.subarray(2 * i, 2 * (i + n));
      const batchR = riov.subarray(2 * i, 2 * (i + n));
      this.#readBatch(batchR, n, local, used);
      const runs = this.#runs(n, used);
      const found = Number(
        helper().cryo_diff_runs(
          batchL,
          BigInt(n),
          ptrOf(local),
          BigInt(PAGE_SIZE),
          runs,
          BigInt(runs.length / 4),
        ),
      );
      if (found < 0) throw systemError("cryo_diff_runs", -found);
      if (found > 0) {
        const data: bigint[] = [], zero: bigint[] = [];
        let kept = 0;
        for (let k = 0; k < found; k++) {
          const idx = Number(runs[4 * k]), off = runs[4 * k + 1], len = runs[4 * k + 2];
          (runs[4 * k + 3] ? zero : data).push(batchR[2 * idx] + off, len);
          push(batchL[2 * idx] + off, batchR[2 * idx] + off, len);
          if (!runs[4 * k + 3]) kept += Number(len);
        }
        if (data.length) this.#appendFrom(new BigUint64Array(data), kept, local);
        if (zero.length) {
          this.#entries.push({ pairs: new BigUint64Array(zero), len: 0, at: -1, fd: -1, zero: true });
        }
      }
      i += n;
    }
    return out;
  }

  /**
   * Save what a batch of writes would overwrite and write the pages that change, in one helper call per batch
   * of up to 1024 writes (`cryo_save_write`): the target's bytes under the batch are read, compared page by
   * page, and only the differing pages are kept (in memory, up to {@link MEMORY_CHUNKS} chunks; then in the
   * journal file, {@link saveChanged}) and written. A batch the helper cannot read or write in full goes
   * through the slow path: its writes are returned.
   *
   * @param liov Local iovecs (the new bytes).
   * @param riov Remote iovecs (where they go).
   * @param count Pairs.
   * @returns The writes still to do (journaled already): those the helper could not do.
   */
  saveAndWrite(liov: BigUint64Array, riov: BigUint64Array, count: number): IovBatch {
    if (this.#aside.length) {
      let all = true;
      for (let k = 0; k < count && all; k++) all = this.#inAside(riov[2 * k], riov[2 * k + 1]);
      // Into pages moved aside: nothing to save, all to write.
      if (all) return { liov: liov.slice(0, 2 * count), riov: riov.slice(0, 2 * count), count };
    }
    const left: IovBatch = { liov: new BigUint64Array(0), riov: new BigUint64Array(0), count: 0 };
    const keep = (b: IovBatch) => {
      if (!b.count) return;
      const l = new BigUint64Array(2 * (left.count + b.count)), r = new BigUint64Array(l.length);
      l.set(left.liov.subarray(0, 2 * left.count));
      r.set(left.riov.subarray(0, 2 * left.count));
      l.set(b.liov.subarray(0, 2 * b.count), 2 * left.count);
      r.set(b.riov.subarray(0, 2 * b.count), 2 * left.count);
      left.liov = l, left.riov = r, left.count += b.count;
    };
    let i = 0;
    while (i < count) {
      let n = 0, used = 0;
      while (i + n < count && n < 1024) {
        const len = Number(riov[2 * (i + n) + 1]);
        if (used + len > CHUNK) break;
        used += len;
        n++;
      }
      const batchL = liov.subarray(2 * i, 2 * (i + n)), batchR = riov.subarray(2 * i, 2 * (i + n));
      const mem = n === 0 ? undefined : this.#room(used);
      if (!mem) { // one range larger than a chunk, or the memory allowed is used: the journal file
        const m = Math.max(n, 1);
        keep(this.saveChanged(liov.subarray(2 * i, 2 * (i + m)), riov.subarray(2 * i, 2 * (i + m)), m));
        i += m;
        continue;
      }
      const runs = this.#runs(n, used);
      const at = this.#chunkAt;
      const found = Number(
        helper().cryo_save_write(
          this.pid,
          batchL,
          batchR,
          BigInt(n),
          ptrOf(BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(mem))) + BigInt(at)),
          BigInt(CHUNK - at),
          BigInt(PAGE_SIZE),
          runs,
          BigInt(runs.length / 4),
          this.#result,
        ),
      );
      if (found === -11 /* EAGAIN: not all readable, nothing written */) {
        keep(this.saveChanged(batchL, batchR, n));
        i += n;
        continue;
      }
      if (found < 0) throw systemError("cryo_save_write", -found, `pid ${this.pid}`);
      const kept = Number(this.#result[1]);
      let written = this.#result[0];
      if (found > 0) {
        this.#entries.push({ runs: runs.slice(0, 4 * found), riov: batchR.slice(), mem, at });
        this.#chunkAt += kept;
        this.#size += kept;
      }
      for (let k = 0; k < found; k++) { // what the helper did not write (a page the process cannot write)
        const idx = Number(runs[4 * k]), off = runs[4 * k + 1], len = runs[4 * k + 2];
        if (written >= len) {
          written -= len;
          continue;
        }
        const from = off + written;
        keep({
          liov: new BigUint64Array([batchL[2 * idx] + from, len - written]),
          riov: new BigUint64Array([batchR[2 * idx] + from, len - written]),
          count: 1,
        });
        written = 0n;
      }
      i += n;
    }
    return left;
  }

  /** A chunk with `bytes` free from {@link #chunkAt} (a new one when the last is full), or none. */
  #room(bytes: number): Uint8Array<ArrayBuffer> | undefined {
    if (bytes > CHUNK) return undefined;
    if (this.#chunks.length && CHUNK - this.#chunkAt >= bytes) return this.#chunks[this.#chunks.length - 1];
    if (this.#chunks.length >= MEMORY_CHUNKS) return undefined;
    this.#chunks.push(chunkPool.pop() ?? new Uint8Array(CHUNK));
    this.#chunkAt = 0;
    return this.#chunks[this.#chunks.length - 1];
  }

  #runsBuf = new BigUint64Array(0);

  /** Room for the runs of a batch of `n` ranges and `bytes` bytes (at most one run per page, plus one each). */
  #runs(n: number, bytes: number): BigUint64Array<ArrayBuffer> {
    const need = 4 * (n + Math.ceil(bytes / PAGE_SIZE) + 1);
    if (this.#runsBuf.length < need) this.#runsBuf = new BigUint64Array(need);
    return this.#runsBuf as BigUint64Array<ArrayBuffer>;
  }

  /** Read the target's bytes under `n` remote iovecs into `local`, packed; `/proc/<pid>/mem` for what fails. */
  #readBatch(riov: BigUint64Array, n: number, local: bigint, used: number): void {
    let off = 0;
    for (let k = 0; k < n; k++) {
      this.#liov[2 * k] = local + BigInt(off);
      this.#liov[2 * k + 1] = riov[2 * k + 1];
      off += Number(riov[2 * k + 1]);
    }
    const got = libc.process_vm_readv(this.pid, this.#liov, BigInt(n), riov.slice(0, 2 * n), BigInt(n), 0n);
    if (got === BigInt(used)) return;
    off = 0;
    for (let k = 0; k < n; k++) { // slow path: one at a time, with the fallback
      const len = Number(riov[2 * k + 1]);
      this.#readInto(riov[2 * k], len, local + BigInt(off));
      off += len;
    }
  }

  /**
   * Save a thread's registers before they are replaced (the first save of a thread wins).
   *
   * @param tid The thread.
   * @param regs Its current registers.
   */
  saveRegisters(tid: number, regs: Registers): void {
    if (!this.#registers.has(tid)) this.#registers.set(tid, regs);
  }

  /**
   * Record how to take back a change that is not memory or registers (e.g. a thread's rseq registration made
   * or removed); undone last, newest first.
   *
   * @param undo Takes the change back.
   */
  addUndo(undo: () => void): void {
    this.#actions.push(undo);
  }

  /**
   * Put everything back: memory in reverse order of saving (so the oldest bytes win), then registers, then the
   * other changes ({@link addUndo}), newest first.
   *
   * @param setRegisters Writes one thread's registers (the frozen handle's `setRegisters`).
   * @returns Bytes of memory written back.
   */
  undo(setRegisters: (tid: number, regs: Registers) => void): number {
    const local = this.#bounceAddr();
    let written = 0;
    for (let i = this.#entries.length - 1; i >= 0; i--) {
      const e = this.#entries[i];
      if ("undo" in e) {
        try {
          e.undo();
        } catch (err) {
          throw new Error(`Cannot undo "${e.what}": ${(err as Error).message}`, { cause: err });
        }
        continue;
      }
      if ("mem" in e) {
        let at = e.at;
        const base = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(e.mem)));
        for (let k = 0; k < e.runs.length; k += 4) {
          const idx = Number(e.runs[k]), len = Number(e.runs[k + 2]);
          const addr = e.riov[2 * idx] + e.runs[k + 1];
          if (e.runs[k + 3]) this.#writeZeros(addr, len);
          else {
            this.#writeTarget(addr, base + BigInt(at), len);
            written += len;
            at += len;
          }
        }
        continue;
      }
      if (e.zero) {
        for (let k = 0; k < e.pairs.length; k += 2) this.#writeZeros(e.pairs[k], Number(e.pairs[k + 1]));
        continue;
      }
      let done = 0;
      while (done < e.len) {
        const r = libc.pread(
          e.fd,
          ptrOf(local + BigInt(done)),
          BigInt(e.len - done),
          BigInt(e.at + done),
        );
        if (r <= 0n) {
          throw systemError("pread", r < 0n ? errno() : 5, `the restore journal at ${e.at + done}`);
        }
        done += Number(r);
      }
      let off = 0;
      for (let k = 0; k < e.pairs.length; k += 2) {
        const len = Number(e.pairs[k + 1]);
        this.#writeTarget(e.pairs[k], local + BigInt(off), len);
        off += len;
      }
      written += e.len;
    }
    for (const [tid, regs] of this.#registers) setRegisters(tid, regs);
    for (const undo of this.#actions.reverse()) undo();
    return written;
  }

  #zeros: Uint8Array<ArrayBuffer> | undefined;

  /** Write zeros over `[addr, addr + len)` of the target (the undo of a range that was all zero). */
  #writeZeros(addr: bigint, len: number): void {
    this.#zeros ??= new Uint8Array(1 << 20);
    const zeros = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#zeros)));
    for (let off = 0; off < len; off += this.#zeros.length) {
      this.#writeTarget(addr + BigInt(off), zeros, Math.min(this.#zeros.length, len - off));
    }
  }

  /** Append `len` bytes at `local` to the journal file: the old bytes of the ranges `pairs`, packed. */
  #appendFrom(pairs: BigUint64Array, len: number, local: bigint): void {
    for (;;) {
      const fd = this.#file();
      let done = 0, e = 0;
      while (done < len) {
        const r = libc.pwrite(fd, ptrOf(local + BigInt(done)), BigInt(len - done), BigInt(this.#at + done));
        if (r <= 0n) {
          e = r < 0n ? errno() : ENOSPC;
          break;
        }
        done += Number(r);
      }
      if (!e) {
        this.#entries.push({ pairs, len, at: this.#at, fd });
        this.#at += len;
        this.#size += len;
        return;
      }
      // Full (a small /dev/shm): go on in the next directory; what this file holds stays valid for the undo.
      if ((e !== ENOSPC && e !== EDQUOT) || this.#dir + 1 >= this.#dirs.length) {
        throw systemError("pwrite", e, `the restore journal in ${this.#dirs[this.#dir]}`);
      }
      this.#dir++;
      this.#fd = -1;
    }
  }

  /** Read the target's `[addr, addr + len)` to `local`: `process_vm_readv`, `/proc/<pid>/mem` for what it refuses. */
  #readInto(addr: bigint, len: number, local: bigint): void {
    this.#transfer("process_vm_readv", addr, local, len);
  }

  #writeTarget(addr: bigint, local: bigint, len: number): void {
    this.#transfer("process_vm_writev", addr, local, len);
  }

  #transfer(call: "process_vm_readv" | "process_vm_writev", addr: bigint, local: bigint, len: number): void {
    const got = libc[call](this.pid, pair(this.#liov, local, len), 1n, pair(this.#riov, addr, len), 1n, 0n);
    if (got === BigInt(len)) return;
    this.#memIo(call === "process_vm_readv" ? "pread" : "pwrite", addr, local, len);
  }

  #memIo(call: "pread" | "pwrite", addr: bigint, local: bigint, len: number): void {
    if (this.#mem < 0) {
      this.#mem = libc.open(cstr(`/proc/${this.pid}/mem`), O.RDWR | O.CLOEXEC, 0);
      if (this.#mem < 0) throw systemError("open", errno(), `/proc/${this.pid}/mem`);
    }
    let done = 0;
    while (done < len) {
      const r = libc[call](this.#mem, ptrOf(local + BigInt(done)), BigInt(len - done), addr + BigInt(done));
      if (r <= 0n) {
        throw systemError(call, r < 0n ? errno() : EFAULT, `pid ${this.pid} at ${hex(addr + BigInt(done))}`);
      }
      done += Number(r);
    }
  }

  /** Drop the journal (its file has no name: closing frees it). Idempotent. */
  close(): void {
    for (const fd of this.#fds) libc.close(fd);
    this.#fds.length = 0;
    if (this.#mem >= 0) libc.close(this.#mem);
    this.#fd = this.#mem = -1;
    this.#entries.length = 0;
    for (const c of this.#chunks.splice(0)) { // for the next journal (a snapshot's next rollback)
      if (chunkPool.length < MEMORY_CHUNKS) chunkPool.push(c);
    }
    this.#chunkAt = CHUNK;
    this.#registers.clear();
    this.#actions.length = 0;
    this.#bounce = undefined;
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function pair(iov: BigUint64Array, addr: bigint, len: number): BigUint64Array {
  iov[0] = addr;
  iov[1] = BigInt(len);
  return iov;
}
