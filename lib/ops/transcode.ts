/**
 * Transcoding: a raw image written again with a codec and/or a sealer (what a compressed or encrypted
 * checkpoint does after the thaw, lib/ops/checkpoint.ts). The raw image's records (1 MiB each) are read with
 * `pread` into a ring of three window buffers and handed to the persister a window at a time
 * (`MemoryPersister.storeLocal`): every chunk of a window is encoded at once on pool threads while the window
 * before is written behind on another, and an incompressible chunk is written from its buffer, not copied.
 * Reading the raw image through a mapping instead cost a page fault per page (measured: 0.76-0.91 s per GiB to
 * touch a fresh mapping of an image in the page cache, against 0.21 s to `pread` it).
 *
 * @module
 */

import { FALLOC, O } from "../../ffi/constants.ts";
import { addressOf, close, errno, libc, open, PAGE_SIZE, systemError, transferAll } from "../../ffi/libc.ts";
import type { Codec } from "../codecs/codec.ts";
import type { Sealer } from "../codecs/seal.ts";
import { MemoryLoader } from "../image/loader.ts";
import { KIND } from "../image/format.ts";
import { type ImageSummary, type LocalPiece, MemoryPersister } from "../image/persister.ts";
import { imageSource } from "../image/sources.ts";
import { checkBudget, DEFAULT_MEMORY_BUDGET } from "../image/budget.ts";
import { isIncremental } from "../image/chain.ts";
import { dirOf, linkUnnamed } from "../image/tempfile.ts";
import { type Progress, silentProgress, startPhase } from "./progress.ts";

/** Options of {@link transcode}. */
export interface TranscodeOptions {
  /** The codec of data chunks (default raw). */
  codec?: Codec;
  /** Decoded bytes per encoded record. */
  chunkSize?: number;
  /** Encrypt every chunk. */
  sealer?: Sealer;
  /** fsync the new image before it is named (default true). */
  fsync?: boolean;
  /** The memory budget (lib/image/budget.ts): the three window buffers take 3/16 of it, at most 6 MiB. */
  memoryBudget?: number;
  /** Receives the `transcode` and `sync` phases. */
  progress?: Progress;
  /** Abort between windows. */
  signal?: AbortSignal;
}

/**
 * Write the raw image at `rawPath` again at `path` with the options' codec and sealer.
 *
 * @param rawPath A raw image (a file or `/proc/self/fd/N`).
 * @param path Where the new image goes (`"-"`: stdout).
 * @param opts Codec, sealer, fsync, budget, progress and abort.
 * @returns What the new image holds.
 */
export async function transcode(
  rawPath: string,
  path: string,
  opts: TranscodeOptions,
): Promise<ImageSummary> {
  using loader = await MemoryLoader.open(rawPath);
  // Windows of a sixteenth of the budget, at most 2 MiB: three of them (the one read and encoded, the one written
  // behind, the one whose writes are waited for) and the encoded chunks of three stay well within the budget.
  // Measured (1 GiB random, cold, 2 runs each): 2 MiB windows took the peak RSS of an encrypted checkpoint from
  // 100-105 to 88-90 MiB and of a zstd:1 one from 91-93 to 82-85, in the same time as 4 MiB (two chunks in
  // flight keep both cores busy: the writes are the bottleneck).
  const budget = opts.memoryBudget ?? DEFAULT_MEMORY_BUDGET;
  checkBudget(budget);
  const window = Math.max(PAGE_SIZE, Math.floor(Math.min(2 << 20, budget / 16) / PAGE_SIZE) * PAGE_SIZE);
  const fd = open(rawPath, O.RDONLY | O.CLOEXEC);
  try {
    await using persister = await MemoryPersister.create(path, {
      source: imageSource(loader),
      regions: loader.regions,
      codec: opts.codec,
      chunkSize: opts.chunkSize,
      sealer: opts.sealer,
      fsync: opts.fsync ?? true,
      incremental: isIncremental(loader),
    });
    const progress = opts.progress ?? silentProgress;
    startPhase(progress, "transcode", loader.footer.dataBytes);
    // A window's buffer is read into again three windows later: by then its writes have finished (storeLocal
    // waits, before it returns, for the writes of every window but the one before).
    const ring = [0, 1, 2].map(() => new Uint8Array(window));
    let turn = 0, batch: LocalPiece[] = [], used = 0;
    const flush = async () => {
      if (!batch.length) return;
      await persister.storeLocal(batch, { stable: true });
      progress.advance(used);
      [turn, batch, used] = [(turn + 1) % ring.length, [], 0];
    };
    try {
      for (const r of loader.index) {
        opts.signal?.throwIfAborted();
        if (r.kind === KIND.HOLE) {
          batch.push({ addr: r.address, len: r.length });
          continue;
        }
        if (used + r.length > window) await flush(); // a record is split only when larger than a window
        for (let off = 0; off < r.length;) {
          if (used === window) await flush();
          const n = Math.min(r.length - off, window - used);
          const bytes = ring[turn].subarray(used, used + n), local = addressOf(bytes);
          transferAll("pread", fd, bytes, r.fileOffset + off, rawPath);
          const checksum = n === r.length ? r.checksum : undefined; // a raw record's checksum is of its bytes
          batch.push({ local, addr: r.address + BigInt(off), len: n, checksum, bytes });
          // The raw bytes are ours now: give the file's pages back (a memfd's memory, or page cache the new
          // image's writes then reuse). Advice only: a file system without hole punching keeps them.
          libc.fallocate(fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, BigInt(r.fileOffset + off), BigInt(n));
          used += n;
          off += n;
        }
      }
      await flush();
    } finally {
      progress.done();
    }
    for (const s of loader.sections) persister.addSection(s.name, loader.section(s.name)!);
    startPhase(progress, "sync");
    try {
      return await persister.finalize();
    } finally {
      progress.done();
    }
  } finally {
    close(fd);
  }
}

/** Bytes sampled from each sampled record by {@link incompressible}, and records sampled at most. */
const SAMPLE_BYTES = 64 << 10, SAMPLES = 64;

/**
 * Whether the raw image at `rawPath` is so incompressible that `codec` would store it raw anyway: `codec`
 * compresses 64 KiB from each of up to 64 data records spread over the image, and the answer is yes when that
 * saves less than 2%. A compressed checkpoint of such memory then keeps its raw intermediate as the image (zstd
 * stores an incompressible chunk raw, so the image would hold the same bytes), instead of writing every byte a
 * second time: measured, that second write is most of a compressed checkpoint's cost on random data.
 *
 * @param rawPath A raw image.
 * @param codec The codec the checkpoint was asked for.
 * @returns Whether to keep the raw image.
 */
export async function incompressible(rawPath: string, codec: Codec): Promise<boolean> {
  using loader = await MemoryLoader.open(rawPath);
  // One walk of the index, a frame at a time (an array of every record would be ~160 bytes each on V8's heap:
  // 130 MiB more at the peak of a checkpoint of 524,288 one-page records). A sample is taken from the first
  // record long enough at or after each sixty-fourth of the data bytes.
  const every = Math.max(1, loader.footer.dataBytes / SAMPLES);
  const fd = open(rawPath, O.RDONLY | O.CLOEXEC);
  try {
    const sample = new Uint8Array(SAMPLE_BYTES);
    let raw = 0, stored = 0, seen = 0, next = 0;
    for (const r of loader.index) {
      if (r.kind === KIND.HOLE) continue;
      if (seen >= next && r.length >= SAMPLE_BYTES) {
        transferAll("pread", fd, sample, r.fileOffset, rawPath);
        raw += SAMPLE_BYTES;
        stored += (await codec.encode(sample))?.length ?? SAMPLE_BYTES;
        if (raw === SAMPLES * SAMPLE_BYTES) break;
        while (next <= seen) next += every;
      }
      seen += r.length;
    }
    return raw > 0 && stored >= raw * 0.98;
  } finally {
    close(fd);
  }
}

/**
 * Give the unnamed raw image open at `fd` the name `path` (fsynced first when asked), as the image itself.
 *
 * @param fd An unnamed file (`O_TMPFILE`) holding a complete raw image.
 * @param path The image's name.
 * @param fsync fsync the file and the directory.
 * @returns False when the file cannot be named (a file system without `O_TMPFILE`): transcode it instead.
 */
export function nameRawImage(fd: number, path: string, fsync: boolean): boolean {
  if (fsync && libc.fsync(fd) !== 0) throw systemError("fsync", errno(), path);
  try {
    linkUnnamed(fd, path);
  } catch {
    return false;
  }
  if (fsync) {
    const dir = open(dirOf(path), O.RDONLY | O.DIRECTORY | O.CLOEXEC);
    libc.fsync(dir);
    close(dir);
  }
  return true;
}
