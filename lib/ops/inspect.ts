/**
 * What an image holds, as plain data: header, source, region table, totals, sections and (optionally) every
 * record. And `verify()`: the full verification pass as a typed result.
 *
 * @module
 */

import { ARCH_X86_64, KIND, OPTIONAL, REQUIRED } from "../image/format.ts";
import { ImageChain, imageDigest, isIncremental } from "../image/chain.ts";
import { requireSealed, sealParamsOf } from "../image/sealing.ts";
import { FIXED_HEADER_LENGTH } from "../image/format.ts";
import { decodeFixedHeader } from "../image/header.ts";
import { decodeKernelState, describeKernelState, type KernelState } from "../kernel/kernel_state.ts";
import { MemoryLoader } from "../image/loader.ts";
import type { ImageSummary } from "../image/persister.ts";
import { permsString } from "../kernel/region.ts";
import type { Codec } from "../codecs/codec.ts";
import { ImageError } from "../errors.ts";
import { openInput, verifyStream } from "../image/stream.ts";
import { Sealer } from "../codecs/seal.ts";
import type { SealKey } from "../codecs/keys.ts";
import { phaseCounter, type Progress, silentProgress, startPhase } from "./progress.ts";

/**
 * `loader.verify()`, reported to `progress` as the phases `verify` (the file's checksums) and `decode` (every
 * compressed record decoded). A sink without `phase()` is told nothing: its one bar is the operation's main
 * work (a restore's write), not the verification before it.
 *
 * @param loader The open image.
 * @param progress The progress sink.
 */
export async function verifyWithProgress(loader: MemoryLoader, progress: Progress): Promise<void> {
  if (!progress.phase) return await loader.verify();
  let decodeBytes = 0;
  for (const r of loader.index) {
    if (r.kind === KIND.DATA && r.codec !== 0 && r.flags === 0) decodeBytes += r.length;
  }
  await loader.verify(phaseCounter(progress, { verify: loader.fileSize, decode: decodeBytes }));
}

/** One region of {@link ImageInfo}. */
export interface InspectRegion {
  /** First address (or 0 for a named segment). */
  start: bigint;
  /** One past the last address (or the segment's length). */
  end: bigint;
  /** `rwxp` as maps prints it. */
  perms: string;
  /** Region kind (anonymous, heap, stack, …). */
  kind: string;
  /** Path or pseudo-path. */
  path: string;
  /** Whether it is a relocatable named segment. */
  relocatable: boolean;
  /** Data bytes the image holds for it. */
  dataBytes: number;
  /** Hole bytes the image records for it. */
  holeBytes: number;
}

/** One record of {@link ImageInfo}. */
export interface InspectRecord {
  /** Address (or offset in a segment). */
  address: bigint;
  /** Decoded bytes. */
  length: number;
  /** `data` or `hole`. */
  kind: "data" | "hole";
  /** Codec name. */
  codec: string;
  /** Bytes in the file. */
  storedLength: number;
  /** Offset in the file (0 for a hole). */
  fileOffset: number;
  /** Whether the record is encrypted. */
  encrypted: boolean;
  /** 1-based segment, 0 for absolute. */
  segment: number;
}

/** What {@link inspect} reports. */
export interface ImageInfo {
  /** The image file. */
  path: string;
  /** Its size in bytes. */
  fileBytes: number;
  /** The disk space it takes (blocks × 512). */
  allocatedBytes: number;
  /** Format version. */
  version: number;
  /** Page size. */
  pageSize: number;
  /** Architecture name. */
  arch: string;
  /** Names of the required features in use. */
  requiredFeatures: string[];
  /** Names of the optional features in use. */
  optionalFeatures: string[];
  /** Whether the records are encrypted: sizes and layout are shown, contents need the key. */
  encrypted: boolean;
  /** Where the image came from. */
  source: { pid: number; time: string; commandLine: string[]; kernelRelease: string; bootId: string };
  /** The region table, with per-region totals. */
  regions: InspectRegion[];
  /** Totals over the index. */
  totals: Omit<ImageSummary, "path" | "fileSize">;
  /** Sections by name with their sizes. */
  sections: { name: string; bytes: number }[];
  /**
   * What a rollback to this image leaves as it is (the `kernel` section: open files and their offsets, pipes,
   * sockets, child processes); undefined when the image does not record it or its sections are encrypted.
   */
  kernel?: KernelState & { summary: string };
  /** Every record, when asked for. */
  records?: InspectRecord[];
  /**
   * An incremental image's chain, this image first, down to the full image it builds on (lib/image/chain.ts);
   * undefined for a full image.
   */
  chain?: { path: string; digest: string; incremental: boolean; dataBytes: number; fileBytes: number }[];
  /** Why the chain could not be followed (a parent missing or not the one named). */
  chainError?: string;
}

const CODECS = ["raw", "zstd", "lz4"];

/** The image's `kernel` section, decoded, with its one-line summary (undefined when absent or sealed). */
function kernelOf(loader: MemoryLoader): (KernelState & { summary: string }) | undefined {
  const entry = loader.sections.find((s) => s.name === "kernel");
  if (!entry || loader.encrypted) return undefined;
  const state = decodeKernelState(loader.section("kernel")!, loader.path, entry.offset);
  return { ...state, summary: describeKernelState(state) };
}

function featureNames(bits: bigint, names: Record<string, bigint>): string[] {
  const out = Object.entries(names).filter(([, b]) => (bits & b) !== 0n).map(([n]) => n.toLowerCase());
  let known = 0n;
  for (const b of Object.values(names)) known |= b;
  for (let i = 0n; i < 64n; i++) if ((bits & ~known & (1n << i)) !== 0n) out.push(`bit${i}`);
  return out;
}

/**
 * Describe the image at `path` without reading its data (header, index and section table are checked).
 *
 * @param path The image.
 * @param opts `records`: include every record.
 * @returns The description.
 * @throws {ImageError} When the structure is damaged (`verify` gives the full account).
 */
export async function inspect(path: string, opts: { records?: boolean } = {}): Promise<ImageInfo> {
  using loader = await MemoryLoader.open(path);
  const stat = Deno.statSync(path);
  let chain: ImageInfo["chain"];
  let chainError: string | undefined;
  if (isIncremental(loader)) {
    try {
      using c = await ImageChain.open(path, { verify: false });
      chain = c.images.map((l) => ({
        path: l.path,
        digest: imageDigest(l.path).digest,
        incremental: isIncremental(l),
        dataBytes: l.footer.dataBytes,
        fileBytes: l.fileSize,
      }));
    } catch (e) {
      chainError = (e as Error).message;
    }
  }
  const regions: InspectRegion[] = loader.regions.map((g) => ({
    start: g.start,
    end: g.end,
    perms: permsString(g.perms),
    kind: g.kind,
    path: g.path,
    relocatable: g.relocatable,
    dataBytes: 0,
    holeBytes: 0,
  }));
  const totals = { records: 0, dataRecords: 0, holeRecords: 0, dataBytes: 0, holeBytes: 0, storedBytes: 0 };
  const absolute = regions.map((g, i) => ({ g, i })).filter(({ g }) => !g.relocatable);
  let cursor = 0;
  for (const r of loader.index) {
    totals.records++;
    const data = r.kind === KIND.DATA;
    if (data) {
      totals.dataRecords++;
      totals.dataBytes += r.length;
      totals.storedBytes += r.storedLength;
    } else {
      totals.holeRecords++;
      totals.holeBytes += r.length;
    }
    let g: InspectRegion | undefined;
    if (r.segment > 0) g = regions[r.segment - 1];
    else {
      // Records and absolute regions are both in address order: advance a cursor.
      while (cursor < absolute.length && absolute[cursor].g.end <= r.address) cursor++;
      g = absolute[cursor]?.g;
    }
    if (g) {
      if (data) g.dataBytes += r.length;
      else g.holeBytes += r.length;
    }
  }
  return {
    path,
    fileBytes: loader.fileSize,
    allocatedBytes: (stat.blocks ?? 0) * 512,
    version: loader.header.version,
    pageSize: loader.header.pageSize,
    arch: loader.header.arch === ARCH_X86_64 ? "x86_64" : `e_machine ${loader.header.arch}`,
    requiredFeatures: featureNames(loader.header.requiredFeatures, REQUIRED),
    optionalFeatures: featureNames(loader.header.optionalFeatures, OPTIONAL),
    encrypted: loader.encrypted,
    source: {
      pid: loader.source.pid,
      time: new Date(loader.source.timeMs).toISOString(),
      commandLine: loader.source.commandLine,
      kernelRelease: loader.source.kernelRelease,
      bootId: loader.source.bootId,
    },
    regions,
    totals,
    sections: loader.sections.map((s) => ({ name: s.name, bytes: s.length })),
    kernel: kernelOf(loader),
    records: opts.records
      ? loader.index.toArray().map((r) => ({
        address: r.address,
        length: r.length,
        kind: r.kind === KIND.DATA ? "data" : "hole",
        codec: CODECS[r.codec] ?? `codec ${r.codec}`,
        storedLength: r.storedLength,
        fileOffset: r.fileOffset,
        encrypted: (r.flags & 1) !== 0,
        segment: r.segment,
      }))
      : undefined,
    chain,
    chainError,
  };
}

/** What {@link verify} found. */
export interface VerifyResult {
  /** The image. */
  path: string;
  /** Whether every check passed. */
  ok: boolean;
  /** The first problem, naming the offset and what was expected (absent when ok). */
  problem?: string;
  /** For an encrypted image: whether its chunks were also authenticated with the key (else checksums only). */
  authenticated: boolean;
  /** Bytes of the file checked. */
  bytes: number;
  /** How long verification took, in milliseconds. */
  ms: number;
}

/**
 * Verify the image at `path` completely: footer, header, bounds, index, frames, every checksum.
 *
 * @param path The image.
 * @param opts `codecs` for compressed records.
 * @returns `ok`, or the first problem found.
 */
export async function verify(
  path: string,
  opts: { codecs?: readonly Codec[]; key?: SealKey; progress?: Progress } = {},
): Promise<VerifyResult> {
  const started = performance.now();
  const progress = opts.progress ?? silentProgress;
  let bytes = 0;
  try {
    if (path === "-") {
      startPhase(progress, "verify"); // a stream's length is known only at its end
      const s = await verifyStream("-", { ...opts, path: "stdin" });
      return {
        path,
        ok: true,
        authenticated: s.encrypted,
        bytes: s.bytesRead,
        ms: performance.now() - started,
      };
    }
    if (opts.key && (await MemoryLoader.head(path)).header.requiredFeatures & REQUIRED.ENCRYPTED) {
      // Checked in full by the stream reader alone (each frame, record and padding byte, the tail, every chunk
      // authenticated): opening the file too walked every record twice more (524,288 records: 108 -> 93 MiB).
      bytes = (await Deno.stat(path)).size;
      startPhase(progress, "verify", bytes);
      let read = 0;
      await verifyStream(await openInput(path), {
        ...opts,
        path,
        onChunk: (r) => {
          read += r.storedLength;
          progress.advance(r.storedLength);
        },
      });
      progress.advance(Math.max(0, bytes - read));
      return { path, ok: true, authenticated: true, bytes, ms: performance.now() - started };
    }
    using loader = await MemoryLoader.open(path, opts);
    bytes = loader.fileSize;
    await verifyWithProgress(loader, progress);
    requireSealed(loader.encrypted, opts.key, path); // a key means only a sealed image is sound
    return { path, ok: true, authenticated: false, bytes, ms: performance.now() - started };
  } catch (e) {
    if (e instanceof ImageError) {
      return {
        path,
        ok: false,
        problem: e.message,
        authenticated: false,
        bytes,
        ms: performance.now() - started,
      };
    }
    throw e;
  } finally {
    progress.done();
  }
}

/**
 * Check that `key` is the one the image at `path` was sealed with, from its fixed header alone (the key check
 * value beside the salt): no record is read or decrypted; {@link verify} with the key authenticates them all.
 *
 * @param path The image file.
 * @param key The key.
 * @throws {KeyError} When the image is not encrypted, or the key is not the one it was sealed with.
 * @throws {ImageError} When the file does not start with a cryo header.
 */
export async function checkKey(path: string, key: SealKey): Promise<void> {
  const block = new Uint8Array(FIXED_HEADER_LENGTH);
  {
    using file = await Deno.open(path, { read: true });
    let got = 0;
    while (got < block.length) {
      const n = await file.read(block.subarray(got));
      if (n === null) throw new ImageError(path, got, `file ends in the fixed header`);
      got += n;
    }
  }
  const header = decodeFixedHeader(path, block);
  const encrypted = (header.requiredFeatures & REQUIRED.ENCRYPTED) !== 0n;
  requireSealed(encrypted, key, path);
  if (!encrypted) return;
  await Sealer.open(key, sealParamsOf(block), path);
}
