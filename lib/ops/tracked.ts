/**
 * Tracking that outlives one cryo: a checkpoint with `track` arms write tracking on the target (a userfaultfd
 * kept open inside it, lib/kernel/tracking.ts), and records in the image **which arming** it was taken at: the
 * descriptor's number in the target and a random token (section `tracking`). The same token goes into a
 * private marker file (`tracking-PID.json`, lib/ops/recovery.ts: its directory, its checks) that names the
 * process by pid and start time. A later restore of that image into that process may then trust the written
 * bits (they are those since the image was taken) only when all of these hold: the marker names this process,
 * its descriptor and token equal the image's, and that descriptor is still a userfaultfd. Every later arming
 * (another tracked checkpoint) writes a new token, so an older image falls back to the full path.
 *
 * @module
 */

import { CryoError } from "../errors.ts";
import { freeze, type Frozen } from "../kernel/freeze.ts";
import type { PolicyOptions } from "../kernel/policy.ts";
import {
  adoptTracking,
  type ProcessTracking,
  trackingUnavailable,
  trackProcess,
} from "../kernel/tracking.ts";
import { isUserfaultfd } from "../kernel/uffd.ts";
import { readPrivateMarker, removePrivateMarker, writePrivateMarker } from "./recovery.ts";
import { startTimeOf } from "../kernel/process_status.ts";

/** The image section that records the tracking a checkpoint was taken at. */
export const TRACKING_SECTION = "tracking";

/** What the `tracking` section and the marker hold. */
export interface TrackingMark {
  /** The userfaultfd's descriptor number in the target. */
  fd: number;
  /** The arming's token (random, new at each arming). */
  token: string;
}

interface TrackingMarker extends TrackingMark {
  pid: number;
  startTime: string;
}

const markerName = (pid: number) => `tracking-${pid}.json`;

/**
 * The `tracking` section's bytes: UTF-8 JSON `{"version": 1, "fd": N, "token": "…"}`.
 *
 * @param mark The arming.
 * @returns The bytes.
 */
export function encodeTrackingSection(mark: TrackingMark): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({ version: 1, fd: mark.fd, token: mark.token }));
}

/**
 * Decode a `tracking` section.
 *
 * @param bytes The section.
 * @param path The image, for errors.
 * @returns The arming.
 * @throws {CryoError} When it is not version 1 of the section.
 */
export function decodeTrackingSection(bytes: Uint8Array, path: string): TrackingMark {
  let v: { version?: unknown; fd?: unknown; token?: unknown };
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new CryoError(`Cannot read the tracking section of ${path}: not UTF-8 JSON`);
  }
  if (v.version !== 1 || typeof v.fd !== "number" || typeof v.token !== "string") {
    throw new CryoError(`Cannot read the tracking section of ${path}: expected version 1 with fd and token`);
  }
  return { fd: v.fd, token: v.token };
}

/** The tracking the marker records for `pid`, when it names this process. */
export function readTrackingMark(pid: number): TrackingMark | undefined {
  const m = readPrivateMarker<TrackingMarker>(markerName(pid), pid);
  return m ? { fd: m.fd, token: m.token } : undefined;
}

/**
 * Record that the tracking of `pid` (its descriptor `fd`) was just armed, under `token`.
 *
 * @param pid The process.
 * @param mark Its descriptor and the new token.
 */
export function writeTrackingMark(pid: number, mark: TrackingMark): void {
  writePrivateMarker(markerName(pid), "tracking", { pid, startTime: startTimeOf(pid), ...mark });
}

/** Forget the tracking of `pid` (the marker). */
export function removeTrackingMark(pid: number): void {
  removePrivateMarker(markerName(pid));
}

/**
 * The tracking of `pid` kept in it (adopted) when the marker says so and its descriptor is still a
 * userfaultfd; else a new one (kept in the target). The caller arms it and records the token.
 *
 * @param pid The process.
 * @param opts Policy, and the freeze the target is in (to create a new one).
 * @returns The tracking (armed when new, not re-armed when adopted).
 */
export function keptTracking(pid: number, opts: PolicyOptions & { frozen?: Frozen } = {}): ProcessTracking {
  const mark = readTrackingMark(pid);
  if (mark && isUserfaultfd(pid, mark.fd)) return adoptTracking(pid, mark.fd, opts);
  return trackProcess(pid, { ...opts, keepInTarget: true });
}

/**
 * Whether `pid` holds the tracking armed when the image with the `tracking` section `section` was taken (its
 * written bits are those since), without taking it: the marker, the token and the descriptor are checked.
 *
 * @param pid The process.
 * @param section The image's `tracking` section (undefined: the image was taken without tracking).
 * @param path The image, for messages.
 * @returns The arming, or why there is none.
 */
export function trackedSince(
  pid: number,
  section: Uint8Array | undefined,
  path: string,
): { mark: TrackingMark } | { reason: string } {
  const unavailable = trackingUnavailable();
  if (unavailable) return { reason: unavailable };
  if (!section) return { reason: `${path} was taken without write tracking (checkpoint --track)` };
  const want = decodeTrackingSection(section, path);
  const mark = readTrackingMark(pid);
  if (!mark) return { reason: `pid ${pid} has no write tracking recorded (or it is another process now)` };
  if (mark.fd !== want.fd || mark.token !== want.token) {
    return { reason: `the write tracking of pid ${pid} was armed again since ${path} was taken` };
  }
  if (!isUserfaultfd(pid, mark.fd)) {
    return { reason: `pid ${pid} no longer holds its tracking userfaultfd (fd ${mark.fd})` };
  }
  return { mark };
}

/**
 * The tracking of `pid` whose written bits are those since the image with the `tracking` section `section`
 * was taken, or why there is none (then the caller takes the full path, and says so).
 *
 * @param pid The process.
 * @param section The image's `tracking` section (undefined: the image was taken without tracking).
 * @param path The image, for messages.
 * @returns The adopted tracking, or a reason.
 */
export function trackingSince(
  pid: number,
  section: Uint8Array | undefined,
  path: string,
): { tracking: ProcessTracking; mark: TrackingMark } | { reason: string } {
  const found = trackedSince(pid, section, path);
  if ("reason" in found) return found;
  return { tracking: adoptTracking(pid, found.mark.fd), mark: found.mark };
}

/**
 * End the tracking `pid` keeps: its userfaultfd closed inside it (an injected `close`, the process frozen
 * briefly), and the marker removed. Nothing to do when the marker names no tracking of this process.
 *
 * @param pid The process.
 */
export function releaseTracking(pid: number): void {
  const mark = readTrackingMark(pid);
  removeTrackingMark(pid);
  if (!mark || !isUserfaultfd(pid, mark.fd)) return;
  using frozen = freeze(pid, { registers: false });
  using tracking = adoptTracking(pid, mark.fd);
  tracking.release(frozen);
}
