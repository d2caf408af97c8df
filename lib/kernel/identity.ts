/**
 * Who a process is: its pid, its start time (clock ticks since boot, `/proc/<pid>/stat` field 22), the boot it
 * runs in, and its executable (path, device and inode). A checkpoint records it in the image's `identity`
 * section (docs/FORMAT.md); a restore compares it with the target and refuses anything else unless forced, so
 * an image of process A is never rolled silently into a process B that happens to share its layout.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { procPath, readProcText } from "./procfs.ts";
import { parseStat } from "./process_status.ts";

/** The identity of a process. */
export interface ProcessIdentity {
  /** Process id. */
  pid: number;
  /** Start time in clock ticks after boot (`/proc/<pid>/stat` field 22): a reused pid has another. */
  startTicks: bigint;
  /** `/proc/sys/kernel/random/boot_id` of the machine it ran in. */
  bootId: string;
  /** The executable's path (`/proc/<pid>/exe`; ` (deleted)` when it was replaced). */
  exePath: string;
  /** The executable's device (`st_dev`). */
  exeDevice: bigint;
  /** The executable's inode. */
  exeInode: bigint;
}

/** The start time of `pid` in clock ticks after boot. */
export function startTicks(pid: number): bigint {
  return BigInt(parseStat(readProcText(procPath(pid, "stat")))[22 - 3]);
}

/**
 * Read the identity of a live process.
 *
 * @param pid The process.
 * @returns Its identity.
 * @throws {SystemError} When its `/proc` files cannot be read.
 */
export function processIdentity(pid: number): ProcessIdentity {
  const ticks = startTicks(pid);
  let exePath = "";
  let exeDevice = 0n, exeInode = 0n;
  try {
    exePath = Deno.readLinkSync(procPath(pid, "exe"));
    const st = Deno.statSync(procPath(pid, "exe")); // follows the magic link, even to a deleted file
    exeDevice = BigInt(st.dev);
    exeInode = BigInt(st.ino ?? 0);
  } catch { /* a kernel thread or no permission: recorded as empty */ }
  return { pid, startTicks: ticks, bootId: bootId(), exePath, exeDevice, exeInode };
}

/** This machine's boot id. */
export function bootId(): string {
  return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
}

const MAGIC = 0x544e444943595243n; // "CRYCIDNT" little-endian
const VERSION = 1;
const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Encode the `identity` section: magic `CRYCIDNT` (u64), version u32 (1), pid u32, startTicks u64, exeDevice
 * u64, exeInode u64, then two strings (len u32 + UTF-8): boot id, executable path; zero padding to 8.
 *
 * @param id The identity.
 * @returns The section's bytes.
 */
export function encodeIdentity(id: ProcessIdentity): Uint8Array {
  const boot = enc.encode(id.bootId), exe = enc.encode(id.exePath);
  const len = Math.ceil((40 + 4 + boot.length + 4 + exe.length) / 8) * 8;
  const out = new Uint8Array(len);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, MAGIC, true);
  v.setUint32(8, VERSION, true);
  v.setUint32(12, id.pid, true);
  v.setBigUint64(16, id.startTicks, true);
  v.setBigUint64(24, id.exeDevice, true);
  v.setBigUint64(32, id.exeInode, true);
  let at = 40;
  for (const s of [boot, exe]) {
    v.setUint32(at, s.length, true);
    out.set(s, at + 4);
    at += 4 + s.length;
  }
  return out;
}

/**
 * Decode the `identity` section, every length checked.
 *
 * @param bytes The section.
 * @param path The image, for errors.
 * @returns The identity.
 * @throws {ImageError} When it is malformed or of a newer version.
 */
export function decodeIdentity(bytes: Uint8Array, path: string): ProcessIdentity {
  const bad = (what: string) => new ImageError(path, undefined, `identity section: ${what}`);
  if (bytes.length < 48) throw bad(`${bytes.length} bytes (at least 48)`);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getBigUint64(0, true) !== MAGIC) throw bad("bad magic");
  const version = v.getUint32(8, true);
  if (version !== VERSION) throw bad(`version ${version} (this reader knows 1)`);
  const strings: string[] = [];
  let at = 40;
  for (let i = 0; i < 2; i++) {
    if (at + 4 > bytes.length) throw bad("truncated");
    const n = v.getUint32(at, true);
    if (at + 4 + n > bytes.length) throw bad(`a string of ${n} bytes runs past its end`);
    strings.push(dec.decode(bytes.subarray(at + 4, at + 4 + n)));
    at += 4 + n;
  }
  return {
    pid: v.getUint32(12, true),
    startTicks: v.getBigUint64(16, true),
    exeDevice: v.getBigUint64(24, true),
    exeInode: v.getBigUint64(32, true),
    bootId: strings[0],
    exePath: strings[1],
  };
}

/**
 * How a live process differs from the one an image was taken from.
 *
 * @param image The image's identity (from its `identity` section, or from its source block for older images:
 *   pid and boot id only, the other fields empty or zero and not compared).
 * @param live The target's identity.
 * @returns One line per difference (empty: the same process).
 */
export function identityDifferences(image: ProcessIdentity, live: ProcessIdentity): string[] {
  const d: string[] = [];
  if (image.bootId && image.bootId !== live.bootId) {
    d.push(`the image was taken in another boot (${image.bootId}; this one is ${live.bootId})`);
  }
  if (image.pid && image.pid !== live.pid) {
    d.push(`the image was taken from pid ${image.pid}, not ${live.pid}`);
  } else if (image.startTicks && image.startTicks !== live.startTicks) {
    d.push(
      `pid ${live.pid} started at tick ${live.startTicks}, the image's process at tick ${image.startTicks} ` +
        `(the pid was reused)`,
    );
  }
  if (image.exeInode && (image.exeInode !== live.exeInode || image.exeDevice !== live.exeDevice)) {
    d.push(
      `the executable differs: the image's was ${image.exePath} (device ${image.exeDevice}, inode ` +
        `${image.exeInode}), pid ${live.pid} runs ${live.exePath} (device ${live.exeDevice}, inode ` +
        `${live.exeInode})`,
    );
  }
  return d;
}
