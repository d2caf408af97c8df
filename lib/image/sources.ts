/**
 * Memory sources a {@link MemoryPersister} stores from: this process (zero-copy), another pid
 * (`process_vm_readv` into a reusable bounce buffer, batched iovecs), or an `ArrayBuffer`/`SharedArrayBuffer`
 * as a relocatable named segment.
 *
 * @module
 */

import { MADV } from "../../ffi/constants.ts";
import { errno, libc, PAGE_SIZE, ptrOf, systemError } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { type ImageRecord, KIND } from "./format.ts";
import { CryoError } from "../errors.ts";
import type { WriteProtectServer } from "../kernel/wp_server.ts";

const ESTALE = 116;

/** Where a persister reads memory from. */
export interface MemorySource {
  /** What kind of source this is. */
  readonly kind: "self" | "pid" | "segment" | "image";
  /** The source process (this process for a segment). */
  readonly pid: number;
  /** Whether all-zero pages become holes by default. */
  readonly detectZeros: boolean;
  /** For a segment: its name. */
  readonly name?: string;
  /** For a segment: its byte length. */
  readonly length?: number;
  /** Bytes one {@link MemorySource.read} may copy (the bounce buffer); Infinity for direct sources. */
  readonly window: number;
  /**
   * The local address of `[addr, addr + len)` when it can be read in place, else null.
   *
   * @param addr Source address (offset for a segment).
   * @param len Bytes.
   * @returns A local address, or null.
   */
  direct(addr: bigint, len: number): bigint | null;
  /**
   * Copy `[addr, addr + len)` (at most `window` bytes) into local memory and return where it is.
   *
   * @param addr Source address.
   * @param len Bytes.
   * @returns The local address of the copy (valid until the next read).
   */
  read(addr: bigint, len: number): bigint;
  /** For a pid source: the local address of its bounce buffer (`window` bytes), allocated on first use. */
  bounce?(): bigint;
  /**
   * Whether the bytes `read()` returns stay readable, unchanged, at that address until the image is finalized
   * (a mapped image file): the writer may then write from there instead of a copy.
   */
  readonly stable?: boolean;
  /** For a windowed image source: give up the windows still mapped (once every write has finished). */
  release?(): void;
  /**
   * For a live source: the write-fault server whose `cryo_live_gather` reads the runs (taking the copies that
   * faults made aside), and the error a failed gather throws.
   */
  live?: { handle: Deno.PointerObject; error(errno: number, where: string): Error };
}

/**
 * This process: bytes are written straight from memory (`write(fd, ptr, len)`), never copied.
 *
 * @param opts `detectZeros` (default true): turn all-zero pages into holes.
 * @returns The source.
 */
export function selfSource(opts: { detectZeros?: boolean } = {}): MemorySource {
  return {
    kind: "self",
    pid: Deno.pid,
    detectZeros: opts.detectZeros ?? true,
    window: Infinity,
    direct: (addr) => addr,
    read: (addr) => addr,
  };
}

/**
 * Another process, read with `process_vm_readv` into a reusable bounce buffer, in batches of iovecs of at
 * most 1 MiB each (the kernel handles up to 1024 per call).
 *
 * @param pid The process (it should be frozen while it is stored).
 * @param opts `detectZeros` (default true); `bufferSize` of the bounce buffer (default 16 MiB).
 * @returns The source.
 */
export function pidSource(
  pid: number,
  opts: { detectZeros?: boolean; bufferSize?: number } = {},
): MemorySource {
  if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`Cannot read pid ${pid}: not a process id`);
  const size = opts.bufferSize ?? 16 << 20;
  if (size < 4096 || size % 4096 !== 0) throw new RangeError(`Cannot use a bounce buffer of ${size} bytes`);
  let bounce: Uint8Array<ArrayBuffer> | undefined;
  let bounceAddr = 0n;
  return {
    kind: "pid",
    pid,
    detectZeros: opts.detectZeros ?? true,
    window: size,
    direct: () => null,
    bounce() {
      if (!bounce) {
        bounce = new Uint8Array(size);
        bounceAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bounce)));
      }
      return bounceAddr;
    },
    read(addr, len) {
      if (len > size) {
        throw new RangeError(`Cannot read ${len} bytes: more than the ${size}-byte bounce buffer`);
      }
      transferRemote("process_vm_readv", pid, this.bounce!(), addr, len);
      return bounceAddr;
    },
  };
}

/**
 * Another process that runs while it is read (a live checkpoint): its pages to persist are write-protected and
 * a {@link WriteProtectServer} copies each page aside before the process writes it; this source reads with
 * `cryo_live_gather`, which takes those copies, so every page reads as it was at the freeze. Only
 * `storeRuns()` of page-aligned runs into a raw image reads it (the gathered path).
 *
 * @param pid The process.
 * @param server Its running write-fault server.
 * @param opts `detectZeros` (default true); `bufferSize` of the bounce buffer (default 16 MiB).
 * @returns The source.
 */
export function liveSource(
  pid: number,
  server: WriteProtectServer,
  opts: { detectZeros?: boolean; bufferSize?: number } = {},
): MemorySource {
  const base = pidSource(pid, opts);
  return {
    ...base,
    bounce: base.bounce,
    read(addr) {
      throw new CryoError(
        `Cannot read pid ${pid} at ${hex(addr)} one window at a time during a live checkpoint: ` +
          "store it with storeRuns() into a raw image",
      );
    },
    live: {
      handle: server.handle,
      error(e, where) {
        if (e !== ESTALE) return systemError("process_vm_readv", e, `pid ${pid} at ${where}`);
        const st = server.stats();
        return new CryoError(
          `Cannot take a live checkpoint of pid ${pid}: it unmapped or replaced ${st.lostPages} page(s) from ` +
            `${hex(st.firstLost)} on before they were copied, so its memory at the freeze is gone; ` +
            "take a stopped checkpoint instead",
        );
      },
    },
  };
}

/**
 * A relocatable named segment: an `ArrayBuffer` or `SharedArrayBuffer` (or a view of one), stored by offset
 * and loaded into any caller-supplied buffer of the same length. Declare it in the persister's `segments`.
 *
 * @param name The segment's name (1-255 bytes of UTF-8, unique in an image).
 * @param buffer The bytes; they must stay alive and unchanged until the persister is finalized.
 * @param opts `detectZeros` (default false).
 * @returns The source.
 */
export function segmentSource(
  name: string,
  buffer: ArrayBuffer | SharedArrayBuffer | ArrayBufferView,
  opts: { detectZeros?: boolean } = {},
): MemorySource {
  const bytes = ArrayBuffer.isView(buffer)
    ? new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
    : new Uint8Array(buffer);
  const n = new TextEncoder().encode(name).length;
  if (n === 0 || n > 255) throw new RangeError(`Cannot name a segment "${name}": 1-255 bytes expected`);
  const base = bytes.length ? BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))) : 0n;
  const at = (addr: bigint, len: number) => {
    if (addr < 0n || addr + BigInt(len) > BigInt(bytes.length)) {
      throw new RangeError(
        `Cannot read ${len} bytes at ${addr} of segment "${name}" (${bytes.length} bytes)`,
      );
    }
    return base + addr;
  };
  return {
    kind: "segment",
    pid: Deno.pid,
    name,
    length: bytes.length,
    detectZeros: opts.detectZeros ?? false,
    window: Infinity,
    direct: at,
    read: at,
  };
}

const PIECE = 1 << 20;
const liov = new BigUint64Array(2 * 1024);
const riov = new BigUint64Array(2 * 1024);

/**
 * Copy `len` bytes between local memory and process `pid` with `process_vm_readv`/`process_vm_writev`,
 * in batches of up to 1024 iovecs of 1 MiB, resuming after partial transfers.
 *
 * @param call Which direction.
 * @param pid The other process.
 * @param local Local address.
 * @param remote Address in `pid`.
 * @param len Bytes.
 * @throws {SystemError} With the failing remote address (EFAULT for unmapped or, on write, read-only pages).
 */
export function transferRemote(
  call: "process_vm_readv" | "process_vm_writev",
  pid: number,
  local: bigint,
  remote: bigint,
  len: number,
): void {
  let done = 0;
  while (done < len) {
    let n = 0, batch = 0;
    while (done + batch < len && n < 1024) {
      const l = Math.min(PIECE, len - done - batch);
      liov[2 * n] = local + BigInt(done + batch);
      liov[2 * n + 1] = BigInt(l);
      riov[2 * n] = remote + BigInt(done + batch);
      riov[2 * n + 1] = BigInt(l);
      batch += l;
      n++;
    }
    const got = libc[call](pid, liov, BigInt(n), riov, BigInt(n), 0n);
    if (got < 0n) throw systemError(call, errno(), `pid ${pid} at ${hex(remote + BigInt(done))}`);
    if (got === 0n) throw systemError(call, 14, `pid ${pid} at ${hex(remote + BigInt(done))}`);
    done += Number(got);
  }
}

/**
 * Another image's records, read in place from its mapping: to write an image again with another codec or
 * key (a compressed checkpoint is taken raw, so the target is stopped only for the reading, then transcoded).
 * Every stored range must lie inside one raw data record.
 *
 * With a `window`, the image is read a window at a time, and the pages of the window read two reads ago (whose
 * writes have finished) are released from this process's mapping (`MADV_DONTNEED`; the file keeps them, and a
 * page touched again is read from it again): mapped pages count
 * in the resident set, so without it, transcoding a 1 GiB image would make the process 1 GiB large.
 *
 * @param loader The open (and, unless it was just written by this process, verified) raw image.
 * @param opts `window`: bytes read at once (a multiple of the page size; default: all of a record, direct).
 * @returns The source; valid while the loader is open.
 */
export function imageSource(loader: {
  source: { pid: number };
  findRecord(address: bigint): ImageRecord | undefined;
  storedBytes(r: ImageRecord): Uint8Array;
}, opts: { window?: number } = {}): MemorySource {
  const window = opts.window ?? Infinity;
  if (window !== Infinity && (!Number.isInteger(window) || window <= 0 || window % PAGE_SIZE !== 0)) {
    throw new RangeError(
      `Cannot read an image ${window} bytes at a time: expected a multiple of ${PAGE_SIZE}`,
    );
  }
  const at = (addr: bigint, len: number) => {
    const r = loader.findRecord(addr);
    if (!r || r.kind !== KIND.DATA || r.codec !== 0 || addr + BigInt(len) > r.address + BigInt(r.length)) {
      throw new RangeError(
        `Cannot read ${len} bytes at ${hex(addr)} of the image: not inside one raw data record`,
      );
    }
    return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(loader.storedBytes(r)))) +
      (addr - r.address);
  };
  // The windows read last and before it: when the persister reads a window, the one before last is written
  // (it waits for every write but that of the last window's records before it reads).
  let before: { at: bigint; len: number } | undefined, last: typeof before;
  const drop = (w: typeof before) => {
    if (!w) return;
    const page = BigInt(PAGE_SIZE);
    const start = (w.at + page - 1n) / page * page, end = (w.at + BigInt(w.len)) / page * page;
    if (end > start) libc.madvise(ptrOf(start), end - start, MADV.DONTNEED); // advice: a failure costs only RSS
  };
  return {
    kind: "image",
    pid: loader.source.pid,
    detectZeros: false, // its zero pages are holes already
    window,
    stable: true, // a released page is read again from the file if a write still needs it
    direct: window === Infinity ? at : () => null,
    read(addr, len) {
      const p = at(addr, len);
      if (window === Infinity) return p;
      drop(before);
      [before, last] = [last, { at: p, len }];
      return p;
    },
    release() {
      drop(before);
      drop(last);
      before = last = undefined;
    },
  };
}
