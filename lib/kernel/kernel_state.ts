/**
 * What a memory rollback cannot undo: the kernel objects a process holds (open files and their offsets, pipes,
 * sockets, other descriptors) and its child processes, read from `/proc/PID` while it is frozen. A checkpoint
 * records them in its `kernel` section (JSON) so that `inspect` can say what a rollback to that image will
 * leave as it is.
 *
 * @module
 */

import { ImageError } from "../errors.ts";

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
}

/** The kernel state of a process that its memory does not hold. */
export interface KernelState {
  /** Its open descriptors. */
  descriptors: OpenDescriptor[];
  /** Its child processes (pids). */
  children: number[];
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
      const kind = kindOf(target);
      descriptors.push({
        fd: Number(name),
        target,
        kind,
        ...(kind === "file" && pos ? { offset: Number(pos) } : {}),
      });
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
  return { descriptors, children: [...children].sort((a, b) => a - b) };
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
      };
    });
    return { descriptors, children: v.children.filter((c: unknown) => Number.isInteger(c)) };
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
  if (n("file")) parts.push(`${plural(n("file"), "file")} (their offsets are not rolled back)`);
  if (n("pipe")) parts.push(`${plural(n("pipe"), "pipe")} (what they held is gone)`);
  if (n("socket")) parts.push(`${plural(n("socket"), "socket")} (connections stay as they are)`);
  if (n("other")) parts.push(`${plural(n("other"), "other descriptor")}`);
  if (state.children.length) {
    parts.push(`${plural(state.children.length, "child process")} (not rolled back)`);
  }
  return parts.join(", ");
}
