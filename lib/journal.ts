/**
 * The undo journal of a restore: before a byte of the target's memory or a thread's registers is changed, what
 * was there is saved here, so that a restore that fails, is aborted (SIGINT, SIGTERM) or meets a register set
 * the kernel refuses can put the target back exactly as it was. Memory goes to an unlinked 0600 temporary file
 * (`O_TMPFILE`: it has no name, so nothing is left behind even if cryo is killed), read through a bounded
 * bounce buffer; registers are kept in memory.
 *
 * @module
 */

import { O } from "../ffi/constants.ts";
import { cstr, errno, hex, libc, ptrOf, systemError } from "../ffi/libc.ts";
import type { Registers } from "./threads.ts";

const O_TMPFILE = 0o20000000 | O.DIRECTORY;
const BOUNCE = 16 << 20;
const EFAULT = 14;

/** Where a journal keeps saved memory: `$CRYO_JOURNAL_DIR`, else `$TMPDIR`, else `/var/tmp`. */
export function journalDir(): string {
  return Deno.env.get("CRYO_JOURNAL_DIR") ?? Deno.env.get("TMPDIR") ?? "/var/tmp";
}

/** One saved range: where it lies in the target and in the journal file. */
interface Entry {
  addr: bigint;
  len: number;
  at: number;
}

/** The undo record of a restore into process `pid`. Close it (or `using`) when done. */
export class RestoreJournal implements Disposable {
  /** The process. */
  readonly pid: number;
  readonly #dir: string;
  #fd = -1;
  #mem = -1;
  #size = 0;
  readonly #entries: Entry[] = [];
  readonly #registers = new Map<number, Registers>();
  #bounce: Uint8Array<ArrayBuffer> | undefined;
  #liov = new BigUint64Array(2 * 1024);
  #riov = new BigUint64Array(2 * 1024);

  /**
   * A journal for process `pid`.
   *
   * @param pid The target.
   * @param dir Where the unlinked file is made (default {@link journalDir}).
   */
  constructor(pid: number, dir: string = journalDir()) {
    this.pid = pid;
    this.#dir = dir;
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
    let fd = libc.open(cstr(this.#dir), O_TMPFILE | O.RDWR | O.CLOEXEC, 0o600);
    if (fd < 0) {
      // A file system without O_TMPFILE: a named 0600 file, unlinked at once.
      const name = `${this.#dir}/.cryo-journal-${Deno.pid}-${crypto.randomUUID()}`;
      fd = libc.open(cstr(name), O.RDWR | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
      if (fd < 0) throw systemError("open", errno(), `the restore journal in ${this.#dir}`);
      libc.unlink(cstr(name));
    }
    this.#fd = fd;
    return fd;
  }

  #bounceAddr(): bigint {
    this.#bounce ??= new Uint8Array(BOUNCE);
    return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#bounce)));
  }

  /**
   * Save the target's bytes of `[addr, addr + len)` before they are overwritten.
   *
   * @param addr Remote address.
   * @param len Bytes.
   */
  save(addr: bigint, len: number): void {
    for (let off = 0; off < len; off += BOUNCE) {
      const n = Math.min(BOUNCE, len - off);
      const a = addr + BigInt(off);
      this.#readTarget(a, n);
      this.#append(a, n);
    }
  }

  /**
   * Save many ranges at once (the remote half of a `process_vm_writev` batch: `[addr, len]` pairs).
   *
   * @param riov `2 × count` words: address, length.
   * @param count Pairs.
   */
  saveMany(riov: BigUint64Array, count: number): void {
    let i = 0;
    while (i < count) {
      // Gather consecutive ranges into one bounce buffer, one process_vm_readv per batch.
      let n = 0, used = 0;
      const local = this.#bounceAddr();
      while (i + n < count && n < 1024) {
        const len = Number(riov[2 * (i + n) + 1]);
        if (len > BOUNCE) break;
        if (used + len > BOUNCE) break;
        this.#liov[2 * n] = local + BigInt(used);
        this.#liov[2 * n + 1] = BigInt(len);
        this.#riov[2 * n] = riov[2 * (i + n)];
        this.#riov[2 * n + 1] = BigInt(len);
        used += len;
        n++;
      }
      if (n === 0) { // one range larger than the bounce buffer
        this.save(riov[2 * i], Number(riov[2 * i + 1]));
        i++;
        continue;
      }
      const got = libc.process_vm_readv(this.pid, this.#liov, BigInt(n), this.#riov, BigInt(n), 0n);
      if (got !== BigInt(used)) {
        for (let k = 0; k < n; k++) this.save(this.#riov[2 * k], Number(this.#riov[2 * k + 1])); // slow path
      } else {
        let off = 0;
        for (let k = 0; k < n; k++) {
          const len = Number(this.#riov[2 * k + 1]);
          this.#appendFrom(this.#riov[2 * k], len, local + BigInt(off));
          off += len;
        }
      }
      i += n;
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
   * Put everything back: memory in reverse order of saving (so the oldest bytes win), then registers.
   *
   * @param setRegisters Writes one thread's registers (the frozen handle's `setRegisters`).
   * @returns Bytes of memory written back.
   */
  undo(setRegisters: (tid: number, regs: Registers) => void): number {
    const local = this.#bounceAddr();
    let written = 0;
    for (let i = this.#entries.length - 1; i >= 0; i--) {
      const e = this.#entries[i];
      let done = 0;
      while (done < e.len) {
        const r = libc.pread(
          this.#fd,
          ptrOf(local + BigInt(done)),
          BigInt(e.len - done),
          BigInt(e.at + done),
        );
        if (r <= 0n) {
          throw systemError("pread", r < 0n ? errno() : 5, `the restore journal at ${e.at + done}`);
        }
        done += Number(r);
      }
      this.#writeTarget(e.addr, local, e.len);
      written += e.len;
    }
    for (const [tid, regs] of this.#registers) setRegisters(tid, regs);
    return written;
  }

  #append(addr: bigint, len: number): void {
    this.#appendFrom(addr, len, this.#bounceAddr());
  }

  #appendFrom(addr: bigint, len: number, local: bigint): void {
    const fd = this.#file();
    let done = 0;
    while (done < len) {
      const r = libc.pwrite(fd, ptrOf(local + BigInt(done)), BigInt(len - done), BigInt(this.#size + done));
      if (r <= 0n) throw systemError("pwrite", r < 0n ? errno() : 28, `the restore journal in ${this.#dir}`);
      done += Number(r);
    }
    this.#entries.push({ addr, len, at: this.#size });
    this.#size += len;
  }

  /** Read the target into the bounce buffer: `process_vm_readv`, `/proc/<pid>/mem` for what it refuses. */
  #readTarget(addr: bigint, len: number): void {
    const local = this.#bounceAddr();
    const got = libc.process_vm_readv(
      this.pid,
      pair(this.#liov, local, len),
      1n,
      pair(this.#riov, addr, len),
      1n,
      0n,
    );
    if (got === BigInt(len)) return;
    this.#memIo("pread", addr, local, len);
  }

  #writeTarget(addr: bigint, local: bigint, len: number): void {
    const got = libc.process_vm_writev(
      this.pid,
      pair(this.#liov, local, len),
      1n,
      pair(this.#riov, addr, len),
      1n,
      0n,
    );
    if (got === BigInt(len)) return;
    this.#memIo("pwrite", addr, local, len);
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
    if (this.#fd >= 0) libc.close(this.#fd);
    if (this.#mem >= 0) libc.close(this.#mem);
    this.#fd = this.#mem = -1;
    this.#entries.length = 0;
    this.#registers.clear();
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
