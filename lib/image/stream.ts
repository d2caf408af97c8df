/**
 * Streaming restore and verify: read an image sequentially from a non-seekable input (a pipe, stdin) without
 * an index up front. The header block is read and checked first, and the target's layout is compared with the
 * header's region table before the first chunk; then each frame is read, checked (frame header, order,
 * bounds, checksum, authentication when encrypted, decoded checksum) and only then written; the tail (index,
 * sections, footer) is checked against the frames seen, and only then are holes zeroed. A stream that ends
 * early is refused, and nothing after the last verified chunk has been written.
 *
 * @module
 */

import { hex } from "../hex.ts";
import type { Codec } from "../codecs/codec.ts";
import { codecForId } from "../codecs/select.ts";
import { ImageError, KeyError, LayoutMismatchError } from "../errors.ts";
import { chunkAad, SEAL_OVERHEAD, Sealer } from "../codecs/seal.ts";
import type { SealKey } from "../codecs/keys.ts";
import { checksum } from "./checksum.ts";
import {
  FIXED_HEADER_LENGTH,
  FOOTER_FIELD,
  FRAME_FIELD,
  FRAME_LENGTH,
  type ImageRecord,
  type ImageRegion,
  KIND,
  REQUIRED,
  uncoveredMeaning,
} from "./format.ts";
import { decodeFixedHeader, decodeHeaderBlock, type HeaderFields, type SourceInfo } from "./header.ts";
import type { SectionEntry } from "./sections.ts";
import { checkMetadataMac, headerDigest, requireSealed, sealParamsOf } from "./sealing.ts";
import { openInput, StreamSource } from "./stream_input.ts";
import { type FrameWalk, readTail, walkFrames } from "./reader.ts";
import { BytesSource } from "./byte_source.ts";
import {
  checkFooter,
  checkHost,
  checkTail,
  checkTailLayout,
  checkTailLength,
  refuseIncremental,
} from "./rules.ts";
import { DIRECTORY_ENTRY_LENGTH, type FrameInfo, sameFrame } from "./frames.ts";
import { addHeld } from "./records.ts";
import { IndexCheck } from "./index.ts";
import { Spool } from "./spool.ts";
import { compareTarget, type LoadTarget, targetName } from "./targets.ts";
import { type ChunkSink, openSink } from "./sink.ts";

export { openInput };

/** Options of {@link loadStream} and {@link verifyStream}. */
export interface StreamOptions {
  /** The key, required for an encrypted image. */
  key?: SealKey;
  /** Codecs for compressed records (default: the built-in raw, zstd and lz4). */
  codecs?: readonly Codec[];
  /** The name of the input in messages (default `"-"`). */
  path?: string;
  /** Called after each chunk has been verified and written, with its record. */
  onChunk?: (record: ImageRecord) => void;
  /**
   * Called with the header's source block and region table once they are verified, before the target's layout
   * is checked and before the first chunk is written (a restore checks identity and fixes the layout here).
   */
  onHeader?: (source: SourceInfo, regions: readonly ImageRegion[]) => void;
}

/** What a streamed load or verify read and did. */
export interface StreamSummary {
  /** The fixed header's fields. */
  header: HeaderFields;
  /** Where the image came from. */
  source: SourceInfo;
  /** The region table. */
  regions: readonly ImageRegion[];
  /** Records (data and holes) of the index. */
  recordCount: number;
  /** The section table. */
  sections: readonly SectionEntry[];
  /** Each section's bytes (checksummed; authenticated when encrypted), by name. */
  sectionBytes: ReadonlyMap<string, Uint8Array>;
  /** Bytes read from the input (the image's size). */
  bytesRead: number;
  /** Data records verified (and written, when loading). */
  chunks: number;
  /** Decoded bytes of data records. */
  dataBytes: number;
  /** Bytes of holes (zeroed, when loading). */
  holeBytes: number;
  /** Whether the image was encrypted. */
  encrypted: boolean;
}

/** The input of a streamed load: a byte stream, or `"-"` for stdin. */
export type StreamInput = ReadableStream<Uint8Array> | "-";

function inputOf(input: StreamInput): ReadableStream<Uint8Array> {
  return input === "-" ? Deno.stdin.readable : input;
}

/**
 * Verify an image read sequentially from a stream, writing nothing.
 *
 * @param input The image bytes, or `"-"` for stdin.
 * @param opts The key (for an encrypted image), codecs, the input's name.
 * @returns What was read.
 * @throws {ImageError} At the first problem, naming the input and the offset.
 * @throws {KeyError} When the image is encrypted and the key is missing or wrong.
 */
export function verifyStream(input: StreamInput, opts: StreamOptions = {}): Promise<StreamSummary> {
  return readStream(inputOf(input), undefined, opts);
}

/**
 * Restore an image read sequentially from a stream into `target`. The target's layout is checked from the
 * header's region table before the first chunk ({@link LayoutMismatchError}, nothing written); each chunk is
 * verified before it is written; holes are zeroed once the tail has been verified.
 *
 * @param input The image bytes, or `"-"` for stdin.
 * @param target The destination (`pidTarget(pid)` for another process, which should be frozen).
 * @param opts The key (for an encrypted image), codecs, the input's name, a per-chunk callback.
 * @returns What was read and written.
 * @throws {ImageError} At the first problem; chunks before it were written, nothing after it.
 * @throws {KeyError} When the image is encrypted and the key is missing or wrong (nothing written).
 * @throws {LayoutMismatchError} When the target does not match (nothing written).
 */
export function loadStream(
  input: StreamInput,
  target: LoadTarget,
  opts: StreamOptions = {},
): Promise<StreamSummary> {
  return readStream(inputOf(input), target, opts);
}

async function readStream(
  stream: ReadableStream<Uint8Array>,
  target: LoadTarget | undefined,
  opts: StreamOptions,
): Promise<StreamSummary> {
  const path = opts.path ?? "-";
  const input = new StreamSource(stream, path);
  let sink: ChunkSink | undefined;
  // Kept until the tail is checked (in memory, past 1 MiB in a scratch file): the holes, zeroed only then, and
  // an encrypted image's frame tables, which its metadata MAC covers. The records are checked as they are read
  // (lib/image/index.ts `IndexCheck`) and not kept.
  using holes = new Spool(`holes of ${path}`);
  using tables = new Spool(`frame tables of ${path}`);
  try {
    // 1. The header block, checked.
    const fixed = await input.read(0, FIXED_HEADER_LENGTH, "fixed header");
    const f0 = decodeFixedHeader(path, fixed); // its header length is at most MAX_HEADER_LENGTH
    const block = new Uint8Array(f0.headerLength);
    block.set(fixed);
    await input.read(
      FIXED_HEADER_LENGTH,
      f0.headerLength - FIXED_HEADER_LENGTH,
      "header block",
      block.subarray(FIXED_HEADER_LENGTH),
    );
    const h = decodeHeaderBlock(path, block);
    const header = h.fields;
    checkHost(path, header);
    // 2. The key, before anything else.
    const encrypted = (header.requiredFeatures & REQUIRED.ENCRYPTED) !== 0n;
    requireSealed(encrypted, opts.key, path);
    let sealer: Sealer | undefined;
    let digest: Uint8Array | undefined;
    if (encrypted) {
      if (!opts.key) {
        throw new KeyError(
          `Cannot read image ${path}: it is encrypted; give its key`,
        );
      }
      sealer = await Sealer.open(opts.key, sealParamsOf(block), path);
      digest = await headerDigest(block);
    }
    // 3. The target's layout, from the header's region table, before the first chunk.
    if (target) {
      refuseIncremental(path, header);
      opts.onHeader?.(h.source, h.regions);
      const { differences, plan } = compareTarget(h.regions, [], target);
      if (differences.length) throw new LayoutMismatchError(targetName(target), differences);
      sink = openSink(target, plan, h.regions);
    }
    // 4. Frames, each verified before it is written, read by the frame reader (lib/image/reader.ts).
    const codecs = new Map<number, Codec>((opts.codecs ?? []).map((c) => [c.id, c]));
    const codecOf = (
      r: ImageRecord,
    ) => (r.codec === 0 ? undefined : codecs.get(r.codec) ?? codecForId(r.codec));
    // One chunk is authenticated and decoded (on pool threads) while the next is read; writes stay in order,
    // each after its chunk verified, and none after a chunk that failed. Decoded chunks use a ring of two.
    const ring: { buf: Uint8Array }[] = [{ buf: new Uint8Array(0) }, {
      buf: new Uint8Array(0),
    }];
    // Stored bytes too: chunk i is read into slot i % 2 once chunk i - 2 has been written (or has failed).
    const storedRing: Uint8Array<ArrayBuffer>[] = [new Uint8Array(0), new Uint8Array(0)];
    let pending: Promise<void> = Promise.resolve();
    let walk: FrameWalk;
    const frameInfos: FrameInfo[] = [];
    const check = new IndexCheck();
    const uncovered = uncoveredMeaning(header.requiredFeatures);
    const held: ImageRecord[] = []; // at most a frame's records and the hole before them (lib/image/records.ts)
    const pairs = new BigUint64Array(3 * 4096); // holes as (address, length, segment), appended 4096 at a time
    let paired = 0;
    const take = (r: ImageRecord) => {
      check.add(r);
      if (r.kind !== KIND.HOLE) return;
      pairs[paired++] = r.address;
      pairs[paired++] = BigInt(r.length);
      pairs[paired++] = BigInt(r.segment);
      if (paired === pairs.length) {
        holes.append(new Uint8Array(pairs.buffer));
        paired = 0;
      }
    };
    // Other chunks are opened (on pool threads) while the next is read, and written in order.
    let inFlight = 0;
    const later = async (r: ImageRecord, stored: Uint8Array, ordinal: number, codec: Codec | undefined) => {
      const job = openChunk(path, r, stored, ordinal, codec, sealer, digest, ring[ordinal % 2]);
      job.catch(() => {}); // observed through `pending`
      const previous = pending;
      inFlight++;
      pending = (async () => {
        try {
          await previous;
          const decoded = await job;
          sink?.write(r, 0, decoded);
          opts.onChunk?.(r);
        } finally {
          inFlight--;
        }
      })();
      pending.catch(() => {}); // observed below
      await previous; // the chunk before this one is written (or failed): its ring slot is free again
    };
    try {
      walk = await walkFrames(input, {
        header,
        regions: h.regions,
        collect: false,
        onFrame: (fr) => {
          frameInfos.push(fr.frame);
          if (sealer) tables.append(fr.table);
          const done = addHeld(held, fr.frame, fr.entries, uncovered);
          for (let k = 0; k < done; k++) take(held[k]);
          held.splice(0, done);
        },
        prepare: (r, ordinal) => {
          if (r.codec !== 0 && !codecOf(r)) {
            throw new ImageError(path, r.fileOffset, `unknown codec ${r.codec}`);
          }
          // checkRecord has bounded it: at most MAX_RECORD_LENGTH bytes (+ the seal's nonce and tag).
          const slot = ordinal % 2;
          if (storedRing[slot].length < r.storedLength) storedRing[slot] = new Uint8Array(r.storedLength);
          return storedRing[slot];
        },
        onRecord: (r, stored, ordinal) => {
          const codec = codecOf(r); // looked up again, not kept in a map set and emptied per record
          // A raw chunk, or a small sealed raw one, with no chunk before it still in flight: opened and written
          // here, without a promise (an image of one-page records made several per record, and the garbage
          // collector's young generation grew with them).
          if (!codec && inFlight === 0) {
            const now = openNow(path, r, stored, ordinal, sealer, digest, ring[ordinal % 2]);
            if (now) {
              sink?.write(r, 0, now);
              opts.onChunk?.(r);
              return;
            }
          }
          return later(r, stored, ordinal, codec);
        },
      });
      await pending;
    } catch (e) {
      await pending.catch(() => {}); // nothing may still be writing when the sink closes
      throw e;
    }
    for (const r of held.splice(0)) take(r);
    holes.append(new Uint8Array(pairs.buffer, 0, 8 * paired));
    const endFrame = walk.end;
    // 5. The tail, checked against the frames seen.
    const tailAt = walk.tailAt;
    checkTailLength(
      path,
      tailAt - FRAME_LENGTH + FRAME_FIELD.DATA_LENGTH,
      endFrame.dataLength,
      frameInfos.length,
    );
    const tail = await input.read(tailAt, endFrame.dataLength, "index and footer");
    if (!await input.atEnd()) throw new ImageError(path, input.offset, "bytes after the footer");
    const fileSize = tailAt + tail.length;
    const tailSource = new BytesSource(path, tail, tailAt);
    const { footer, footerAt, index: indexBytes, directory, sections } = await readTail(
      tailSource,
      fileSize,
      tailAt,
    );
    checkFooter(path, footerAt, footer, header, fileSize, "stream");
    if (footer.indexOffset !== tailAt) {
      throw new ImageError(path, footerAt + FOOTER_FIELD.INDEX_OFFSET, "index is not after the END frame");
    }
    if (directory.length !== footer.frameCount) {
      throw new ImageError(
        path,
        footerAt + FOOTER_FIELD.FRAME_COUNT,
        `${directory.length} frames, the footer says ${footer.frameCount}`,
      );
    }
    directory.forEach((d, i) => {
      if (!frameInfos[i] || !sameFrame(d, frameInfos[i])) {
        const at = footer.indexOffset + i * DIRECTORY_ENTRY_LENGTH;
        throw new ImageError(path, at, `directory entry ${i} disagrees with the frames read`);
      }
    });
    if (frameInfos.length !== directory.length) {
      throw new ImageError(
        path,
        footer.indexOffset,
        `${frameInfos.length - directory.length} frame(s) missing from the index`,
      );
    }
    checkTail(path, footerAt, footer, header, sections, check);
    const blobs = sections.map((s) => {
      const data = tailSource.read(s.offset, s.length, `section "${s.name}"`);
      if (checksum(data) !== s.checksum) {
        throw new ImageError(path, s.offset, `section "${s.name}" checksum mismatch`);
      }
      return { name: s.name, data, offset: s.offset };
    });
    checkTailLayout(path, tail, tailAt, footer, sections);
    if (sealer) {
      await checkMetadataMac(sealer, path, digest!, indexBytes, tables, blobs);
    }
    // 6. Holes, now that the index is known to be good, read back a piece at a time.
    let holeBytes = 0;
    const words = new Uint32Array(pairs.buffer); // read as numbers: no bigint per hole
    for (let at = 0; at < holes.length; at += pairs.byteLength) {
      const n = Math.min(pairs.byteLength, holes.length - at);
      holes.read(at, n, new Uint8Array(pairs.buffer));
      for (let k = 0; k < n / 8; k += 3) {
        const length = words[2 * k + 2] + words[2 * k + 3] * 4294967296;
        sink?.zero(words[2 * k] + words[2 * k + 1] * 4294967296, length, words[2 * k + 4]);
        holeBytes += length;
      }
    }
    const dataBytes = footer.dataBytes;
    return {
      header,
      source: h.source,
      regions: h.regions,
      recordCount: check.count,
      sections,
      sectionBytes: new Map(blobs.map((b) => [b.name, b.data])),
      bytesRead: fileSize,
      chunks: walk.dataRecords,
      dataBytes,
      holeBytes,
      encrypted,
    };
  } finally {
    sink?.close();
    await input.close();
  }
}

/** The AAD of the chunk {@link openNow} opens (one at a time, on this thread): one buffer, whose view chunkAad keeps. */
const OPEN_AAD = new Uint8Array(72);

/**
 * A raw chunk's decoded bytes at once, without a promise: its stored bytes, or, sealed, its plaintext opened on
 * this thread into the ring (when the sealer can: libcrypto, at most 64 KiB); undefined when it cannot.
 */
function openNow(
  path: string,
  r: ImageRecord,
  stored: Uint8Array,
  ordinal: number,
  sealer: Sealer | undefined,
  digest: Uint8Array | undefined,
  scratch: { buf: Uint8Array },
): Uint8Array | undefined {
  if (stored.length !== (sealer ? r.length + SEAL_OVERHEAD : r.length)) return undefined; // openChunk says why
  if (!sealer) return stored;
  if (scratch.buf.length < r.length) scratch.buf = new Uint8Array(r.length);
  const aad = chunkAad(ordinal, r.address, r.length, r.codec, r.segment, digest, OPEN_AAD);
  return sealer.openNow(stored, aad, path, r.fileOffset, scratch.buf);
}

/** Authenticate (sealed) and decode one chunk, and check its decoded checksum; the decoded bytes. */
async function openChunk(
  path: string,
  r: ImageRecord,
  stored: Uint8Array,
  ordinal: number,
  codec: Codec | undefined,
  sealer: Sealer | undefined,
  digest: Uint8Array | undefined,
  scratch: { buf: Uint8Array; plain?: Uint8Array },
): Promise<Uint8Array> {
  // Decrypted into the ring (a raw record's plaintext is its decoded bytes) when the sealer can.
  if (sealer && !codec && scratch.buf.length < r.length) scratch.buf = new Uint8Array(r.length);
  if (sealer && codec && (scratch.plain?.length ?? 0) < r.storedLength) {
    scratch.plain = new Uint8Array(r.storedLength);
  }
  const plain = sealer
    ? await sealer.open(
      stored,
      chunkAad(ordinal, r.address, r.length, r.codec, r.segment, digest),
      path,
      r.fileOffset,
      codec ? scratch.plain : scratch.buf,
    )
    : stored;
  const ours = (b: Uint8Array) => b.buffer !== scratch.buf.buffer && b.buffer !== scratch.plain?.buffer;
  if (!codec) {
    if (plain.length !== r.length) {
      throw new ImageError(path, r.fileOffset, `raw record holds ${plain.length} of ${r.length} bytes`);
    }
    if (!sealer) return plain;
  }
  if (scratch.buf.length < r.length) scratch.buf = new Uint8Array(r.length);
  const decoded = scratch.buf.subarray(0, r.length);
  if (!codec) { // decrypted raw: into the ring, so that the plaintext can be freed now (below)
    if (ours(plain)) {
      decoded.set(plain);
      (plain.buffer as ArrayBuffer).transfer(0);
    }
    return decoded;
  }
  try {
    await codec.decode(plain, decoded);
  } catch (e) {
    throw new ImageError(
      path,
      r.fileOffset,
      `record at ${hex(r.address)} does not decode: ${(e as Error).message}`,
    );
  }
  // The plaintext is ours alone and done with: free it now (detaching it) rather than when the collector gets
  // to it, so that a stream of large chunks does not pile them up.
  if (sealer && ours(plain)) (plain.buffer as ArrayBuffer).transfer(0);
  if (!sealer && checksum(decoded) !== r.decodedChecksum) {
    throw new ImageError(path, r.fileOffset, `decoded bytes of the record at ${hex(r.address)} do not match`);
  }
  return decoded;
}

/**
 * Restore an encrypted image file: a full verification pass (every chunk authenticated, the index and sections
 * too), then the load, so nothing is written into memory unless the whole image is good.
 *
 * @param path The image file.
 * @param target The destination.
 * @param opts The key, codecs.
 * @returns What the load read and wrote.
 */
export async function loadVerified(
  path: string,
  target: LoadTarget,
  opts: StreamOptions = {},
): Promise<StreamSummary> {
  await verifyStream(await openInput(path), { ...opts, path, onChunk: undefined });
  return await loadStream(await openInput(path), target, { ...opts, path });
}
