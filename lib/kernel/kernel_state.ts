/**
 * What a memory rollback cannot undo: the kernel objects a process holds (open files, pipes, sockets, other
 * descriptors), its timers (POSIX timers and timerfds) and its child processes, read from `/proc/PID` while it is frozen. A checkpoint records them in
 * its `kernel` section (JSON) so that `inspect` can say what a rollback to that image will leave as it is. The
 * one thing a restore does put back is a file offset, where the same descriptor is still open on the same file
 * ({@link planOffsets}: an injected `lseek`).
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { rawSyscall } from "./syscall.ts";

/** One open descriptor of a process. */
export interface OpenDescriptor {
  /** The descriptor number. */
  fd: number;
  /** What it refers to: a path, `pipe:[…]`, `socket:[…]`, `anon_inode:[…]`. */
  target: string;
  /** A file, a pipe, a socket or another kernel object. */
  kind: "file" | "pipe" | "socket" | "other";
  /** The file offset (`pos` in /proc/PID/fdinfo), when it has one. */
  offset?: number;
  /** For a regular file: its device (`st_dev`), so that a restore knows it is still the same file. */
  device?: number;
  /** For a regular file: its inode (`st_ino`). */
  inode?: number;
  /**
   * The open flags (`flags` in /proc/PID/fdinfo, `O_CLOEXEC` included when the descriptor has it): recorded for
   * every descriptor since the `shares` field; older images have them for regular files only.
   */
  flags?: number;
  /**
   * The lowest other descriptor of the process that shares this one's open file description (a `dup`: the same
   * file, offset and status flags), by `kcmp(KCMP_FILE)`; absent when none does (or in an older image).
   */
  shares?: number;
}

/**
 * A timer of the process: a POSIX timer (`timer_create`, from `/proc/PID/timers`) or a timerfd (from the
 * descriptor's fdinfo). A rollback leaves it running as it is.
 */
export interface ProcessTimer {
  /** Which kind. */
  kind: "posix" | "timerfd";
  /** The timer id (`posix`) or the descriptor (`timerfd`). */
  id: number;
  /** Its clock (`CLOCK_*` number). */
  clock: number;
  /** How it notifies (`posix`: e.g. `signal/pid.1234`, signal number in `signal`); absent for a timerfd. */
  notify?: string;
  /** The signal it sends (`posix`). */
  signal?: number;
  /** Time left until it fires, in nanoseconds (`timerfd`; 0 when disarmed). */
  valueNs?: number;
  /** Its interval, in nanoseconds (`timerfd`; 0 for a one-shot). */
  intervalNs?: number;
}

/** The kernel state of a process that its memory does not hold. */
export interface KernelState {
  /** Its open descriptors. */
  descriptors: OpenDescriptor[];
  /** Its child processes (pids). */
  children: number[];
  /** Its timers (an image from before timers were recorded has none listed). */
  timers?: ProcessTimer[];
}

function statOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.statSync(path);
  } catch {
    return null;
  }
}

function kindOf(target: string): OpenDescriptor["kind"] {
  if (target.startsWith("/")) return "file";
  if (target.startsWith("pipe:")) return "pipe";
  if (target.startsWith("socket:")) return "socket";
  return "other";
}

/**
 * Read a process's open descriptors and children from `/proc` (best effort: a descriptor closed meanwhile is
 * left out).
 *
 * @param pid The process (frozen, so that the list holds still).
 * @returns Its kernel state.
 */
export function readKernelState(pid: number): KernelState {
  const descriptors: OpenDescriptor[] = [];
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(`/proc/${pid}/fd`)].map((e) => e.name);
  } catch { /* gone, or not ours to read */ }
  for (const name of names.sort((a, b) => Number(a) - Number(b))) {
    try {
      const target = Deno.readLinkSync(`/proc/${pid}/fd/${name}`);
      const info = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${name}`);
      const pos = /^pos:\s+(\d+)/m.exec(info)?.[1];
      const flags = /^flags:\s+([0-7]+)/m.exec(info)?.[1];
      const kind = kindOf(target);
      const st = kind === "file" ? statOrNull(`/proc/${pid}/fd/${name}`) : null;
      descriptors.push({
        fd: Number(name),
        target,
        kind,
        ...(kind === "file" && pos ? { offset: Number(pos) } : {}),
        ...(st?.isFile ? { device: st.dev, inode: st.ino ?? 0 } : {}),
        ...(flags ? { flags: parseInt(flags, 8) } : {}),
      });
    } catch { /* closed meanwhile */ }
  }
  markShared(pid, descriptors);
  const timers: ProcessTimer[] = [...readPosixTimers(pid)];
  for (const d of descriptors) {
    if (d.target !== "anon_inode:[timerfd]") continue;
    try {
      const t = timerfdOf(d.fd, Deno.readTextFileSync(`/proc/${pid}/fdinfo/${d.fd}`));
      if (t) timers.push(t);
    } catch { /* closed meanwhile */ }
  }
  const children = new Set<number>();
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const text = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/children`).trim();
        for (const c of text ? text.split(/\s+/) : []) children.add(Number(c));
      } catch { /* thread gone */ }
    }
  } catch { /* gone */ }
  return { descriptors, children: [...children].sort((a, b) => a - b), timers };
}

/** `kcmp(2)` and its `KCMP_FILE`: whether two descriptors name the same open file description. */
const SYS_KCMP = 312;
const KCMP_FILE = 0n;

/**
 * Set `shares` on each descriptor that shares its open file description with a lower one of the same process
 * (`kcmp(KCMP_FILE)`, asked only between descriptors with the same `/proc` link target). Without `kcmp` (a
 * kernel without CONFIG_KCMP, or not permitted) nothing is marked.
 */
function markShared(pid: number, descriptors: OpenDescriptor[]): void {
  const byTarget = new Map<string, OpenDescriptor[]>();
  for (const d of descriptors) {
    const group = byTarget.get(d.target);
    if (group) group.push(d);
    else byTarget.set(d.target, [d]);
  }
  for (const group of byTarget.values()) {
    for (let i = 1; i < group.length; i++) {
      for (let j = 0; j < i; j++) {
        if (group[j].shares !== undefined) continue; // compare with the lowest of each description only
        const r = rawSyscall(
          SYS_KCMP,
          BigInt(pid),
          BigInt(pid),
          KCMP_FILE,
          BigInt(group[j].fd),
          BigInt(group[i].fd),
        );
        if (r < 0n) return;
        if (r === 0n) {
          group[i].shares = group[j].fd;
          break;
        }
      }
    }
  }
}

/**
 * The POSIX timers of `/proc/PID/timers` (`ID`, `signal: N/…`, `notify: …`, `ClockID` per timer); none when
 * the file is missing (a kernel without CONFIG_CHECKPOINT_RESTORE).
 */
function readPosixTimers(pid: number): ProcessTimer[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/timers`);
  } catch {
    return [];
  }
  const timers: ProcessTimer[] = [];
  for (const block of text.split(/^(?=ID:)/m)) {
    const id = /^ID:\s+(-?\d+)/m.exec(block)?.[1];
    if (id === undefined) continue;
    timers.push({
      kind: "posix",
      id: Number(id),
      clock: Number(/^ClockID:\s+(\d+)/m.exec(block)?.[1] ?? -1),
      signal: Number(/^signal:\s+(\d+)/m.exec(block)?.[1] ?? 0),
      notify: /^notify:\s+(\S+)/m.exec(block)?.[1] ?? "",
    });
  }
  return timers;
}

/** A timerfd's fdinfo (`clockid`, `it_value: (s, ns)`, `it_interval: (s, ns)`). */
function timerfdOf(fd: number, info: string): ProcessTimer | null {
  const clock = /^clockid:\s+(\d+)/m.exec(info)?.[1];
  if (clock === undefined) return null;
  const ns = (field: string) => {
    const m = new RegExp(`^${field}:\\s+\\((\\d+),\\s*(\\d+)\\)`, "m").exec(info);
    return m ? Number(m[1]) * 1e9 + Number(m[2]) : 0;
  };
  return {
    kind: "timerfd",
    id: fd,
    clock: Number(clock),
    valueNs: ns("it_value"),
    intervalNs: ns("it_interval"),
  };
}

/**
 * The bytes of a `kernel` section.
 *
 * @param state What {@link readKernelState} read.
 * @returns UTF-8 JSON.
 */
export function encodeKernelState(state: KernelState): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify({ version: 1, ...state }));
}

/**
 * Decode a `kernel` section.
 *
 * @param bytes The section's bytes.
 * @param path The image, for errors.
 * @param offset The section's offset in the image.
 * @returns The recorded state.
 * @throws {ImageError} When it is not such a section.
 */
export function decodeKernelState(bytes: Uint8Array, path: string, offset = 0): KernelState {
  try {
    const v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    if (v?.version !== 1 || !Array.isArray(v.descriptors) || !Array.isArray(v.children)) {
      throw new Error("shape");
    }
    const descriptors: OpenDescriptor[] = v.descriptors.map((d: OpenDescriptor) => {
      if (!Number.isInteger(d.fd) || typeof d.target !== "string") throw new Error("descriptor");
      return {
        fd: d.fd,
        target: d.target,
        kind: kindOf(d.target),
        ...(Number.isSafeInteger(d.offset) ? { offset: d.offset } : {}),
        ...(Number.isSafeInteger(d.device) && Number.isSafeInteger(d.inode)
          ? { device: d.device, inode: d.inode }
          : {}),
        ...(Number.isSafeInteger(d.flags) ? { flags: d.flags } : {}),
        ...(Number.isInteger(d.shares) ? { shares: d.shares } : {}),
      };
    });
    const timers: ProcessTimer[] | undefined = v.timers === undefined ? undefined : v.timers.map(
      (t: ProcessTimer) => {
        if ((t.kind !== "posix" && t.kind !== "timerfd") || !Number.isInteger(t.id)) throw new Error("timer");
        return t;
      },
    );
    return {
      descriptors,
      children: v.children.filter((c: unknown) => Number.isInteger(c)),
      ...(timers ? { timers } : {}),
    };
  } catch {
    throw new ImageError(path, offset, "the kernel section is not a version 1 JSON record of descriptors");
  }
}

/**
 * One line per kind of what a rollback leaves as it is, e.g. `3 files (offsets not rolled back), 1 pipe (its
 * contents are gone), 2 sockets`.
 *
 * @param state The recorded state.
 * @returns The summary (empty when there is nothing).
 */
export function describeKernelState(state: KernelState): string {
  const n = (k: OpenDescriptor["kind"]) => state.descriptors.filter((d) => d.kind === k).length;
  const parts: string[] = [];
  const plural = (count: number, one: string) => `${count} ${one}${count === 1 ? "" : "s"}`;
  if (n("file")) {
    parts.push(`${plural(n("file"), "file")} (offsets put back where still open on the same file)`);
  }
  if (n("pipe")) parts.push(`${plural(n("pipe"), "pipe")} (what they held is gone)`);
  if (n("socket")) parts.push(`${plural(n("socket"), "socket")} (connections stay as they are)`);
  if (n("other")) parts.push(`${plural(n("other"), "other descriptor")}`);
  if (state.children.length) {
    parts.push(`${plural(state.children.length, "child process")} (not rolled back)`);
  }
  const timers = state.timers ?? [];
  if (timers.length) {
    const fds = timers.filter((t) => t.kind === "timerfd").length;
    parts.push(
      `${plural(timers.length, "timer")}${fds ? ` (${fds} timerfd)` : ""} (they run on: not rolled back)`,
    );
  }
  return parts.join(", ");
}

/** A file offset a restore puts back. */
export interface OffsetChange {
  /** The descriptor, in the target. */
  fd: number;
  /** The file. */
  path: string;
  /** Its offset now. */
  from: number;
  /** Its offset at the checkpoint. */
  to: number;
}

/**
 * The file offsets a rollback puts back: each descriptor of the checkpoint that is still open at the same
 * number on the same regular file (device and inode) with the same open flags, and whose offset moved since.
 * Anything else (closed, another file, pipes and sockets) is left as it is.
 *
 * @param recorded The image's kernel section, decoded.
 * @param now The target's state now ({@link readKernelState}, while frozen).
 * @returns The changes, by descriptor.
 */
export function planOffsets(recorded: KernelState, now: KernelState): OffsetChange[] {
  const live = new Map(now.descriptors.map((d) => [d.fd, d]));
  const changes: OffsetChange[] = [];
  for (const d of recorded.descriptors) {
    const n = live.get(d.fd);
    if (d.inode === undefined || d.offset === undefined || n?.inode === undefined || n.offset === undefined) {
      continue;
    }
    if (n.device !== d.device || n.inode !== d.inode || n.flags !== d.flags || n.offset === d.offset) {
      continue;
    }
    changes.push({ fd: d.fd, path: n.target, from: n.offset, to: d.offset });
  }
  return changes;
}

/**
 * One line for a dry run, e.g. `fd 3 (/var/log/app.log): offset 8192 -> 4096 (lseek)`.
 *
 * @param c The change.
 * @returns The line.
 */
export function describeOffsetChange(c: OffsetChange): string {
  return `fd ${c.fd} (${c.path}): offset ${c.from} -> ${c.to} (lseek)`;
}
