/**
 * The batched gathering of a pid source's runs (raw images): batch k + 1 is read, zero-scanned and checksummed
 * in C on a pool thread (`cryo_gather`) while batch k's records and frames are made and earlier batches are
 * written behind, into a pool of bounce buffers that grows only while the writes fall behind the reads.
 *
 * @module
 */

import { helper } from "../../ffi/helper.ts";
import { MAP, PROT } from "../../ffi/constants.ts";
import { mmap, munmap, PAGE_SIZE, ptrOf, systemError, unwrap } from "../../ffi/libc.ts";
import { hex } from "../hex.ts";
import { MAX_RECORD_LENGTH } from "./format.ts";
import { dataRecord, type FrameWriter } from "./frame_writer.ts";
import type { MemorySource } from "./sources.ts";
import type { WriteQueue } from "./write_queue.ts";

/** A bounce buffer: where it is, its length when the pool mapped it (slot 0 is the pid source's own), its last write. */
interface Slot {
  addr: bigint;
  mapped?: number;
  busy: boolean;
  free: Promise<void>;
}

/**
 * Bounce buffers kept for the next image's stores, up to {@link SPARE_BYTES}: a buffer mapped afresh costs a page
 * fault per page on its first read (2-7 µs each here, tens under load), which for a checkpoint of a few MiB
 * (an incremental one) is most of its read. Each is owned by one pool at a time.
 */
const spare: { addr: bigint; len: number }[] = [];
const SPARE_BYTES = 8 << 20;

/** The bounce buffers of one image's gathered stores, each free once its last write finished. */
export class BouncePool {
  #slots: Slot[] = [];
  #oldest = 0;

  /**
   * Give the buffers back (every write using them has finished): up to 8 MiB are kept for the next image's
   * stores, the others unmapped (they are mapped, not garbage-collected, so that memory returns at once and the
   * pool stays within its memory budget).
   */
  clear(): void {
    let kept = spare.reduce((n, s) => n + s.len, 0);
    for (const s of this.#slots) {
      if (!s.mapped) continue;
      if (kept + s.mapped <= SPARE_BYTES) {
        spare.push({ addr: s.addr, len: s.mapped });
        kept += s.mapped;
      } else munmap(s.addr, BigInt(s.mapped));
    }
    this.#slots = [];
  }

  /**
   * Store runs of a pid source, with holes from `at` on between them and for zero pages: the records go to
   * `frames`, each batch's frames are written behind by `queue` (up to `writeBehind` bytes of bounce buffers),
   * and a buffer is read into again only after its write has finished.
   *
   * @param pairs Sorted, disjoint, page-aligned runs `[start0, end0, start1, end1, …]`.
   * @param at Where the range starts.
   * @param segment The segment of the runs (0 for absolute addresses).
   * @param source A pid source (with `bounce`).
   * @param frames Where records go.
   * @param queue The image's write queue.
   * @param opts `detect` zero pages; `writeBehind` bytes (default 1 GiB); `signal` to abort between batches;
   *   `hole` records a gap between runs (default: one hole record for it).
   * @returns Where the last data ends.
   */
  async gather(
    pairs: BigUint64Array,
    at: bigint,
    segment: number,
    source: MemorySource,
    frames: FrameWriter,
    queue: WriteQueue,
    opts: {
      detect: boolean;
      writeBehind?: number;
      signal?: AbortSignal;
      progress?: (bytes: number) => void;
      hole?: (from: bigint, to: bigint) => void;
    },
  ): Promise<bigint> {
    const hole = opts.hole ?? ((from: bigint, to: bigint) => frames.hole(from, Number(to - from), segment));
    const signal = opts.signal;
    const done = { run: 0, off: 0n }; // where the progress reported so far ends
    const window = source.window;
    const slots = Math.max(3, Math.floor((opts.writeBehind ?? 1 << 30) / window));
    if (this.#slots.length === 0) {
      this.#slots.push({ addr: source.bounce!(), busy: false, free: Promise.resolve() });
    }
    const detect = opts.detect ? 1 : 0;
    const maxPieces = Math.ceil(window / PAGE_SIZE);
    const sets = [0, 1].map(() => ({
      pieces: new BigUint64Array(3 * maxPieces),
      sums: new BigUint64Array(maxPieces),
      count: new BigUint64Array(1),
    }));
    const cursor = new BigUint64Array(2);
    const count = BigInt(pairs.length / 2);
    const read = async (k: number, slot: number) => {
      await this.#slots[slot].free; // its last write has finished
      const set = sets[k % 2];
      const args = [
        source.pid,
        ptrOf(this.#slots[slot].addr),
        BigInt(window),
        pairs,
        count,
        cursor,
        BigInt(PAGE_SIZE),
        detect,
        BigInt(MAX_RECORD_LENGTH), // each piece is one raw record
        set.pieces,
        null, // checksummed below, on this thread, while the next batch is read
        BigInt(maxPieces),
        set.count,
      ] as const;
      // A live source's gather takes the copies its write-fault server made aside (lib/kernel/wp_server.ts).
      const got = source.live
        ? await helper().cryo_live_gather(source.live.handle, ...args)
        : await helper().cryo_gather(...args);
      if (got < 0n) {
        const i = Number(cursor[0]);
        const where = i < pairs.length / 2 ? hex(pairs[2 * i] + cursor[1]) : "the end";
        if (source.live) throw source.live.error(Number(-got), where);
        throw systemError("process_vm_readv", Number(-got), `pid ${source.pid} at ${where}`);
      }
      return set;
    };
    // A free buffer if there is one, else a new one while fewer than `slots`, else the one written longest ago:
    // memory grows only while the writes fall behind the reads.
    const nextSlot = (current = -1) => {
      let slot = this.#slots.findIndex((b) => !b.busy);
      if (slot < 0 && this.#slots.length < slots) {
        const k = spare.findIndex((s) => s.len === window);
        const addr = k >= 0
          ? spare.splice(k, 1)[0].addr
          : mmap(0n, BigInt(window), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
        slot = this.#slots.push({ addr, mapped: window, busy: false, free: Promise.resolve() }) - 1;
      }
      while (slot < 0 || slot === current) { // never the buffer whose batch is being made into records
        slot = this.#oldest;
        this.#oldest = (this.#oldest + 1) % this.#slots.length;
      }
      this.#slots[slot].busy = true;
      return slot;
    };
    let slot = nextSlot();
    let next = count > 0n ? read(0, slot) : undefined;
    try {
      for (let k = 0; next; k++) {
        signal?.throwIfAborted();
        const { pieces, sums, count: n } = await next;
        unwrap(helper().cryo_checksums(pieces, n[0], 3n, sums), "cryo_checksums");
        if (opts.progress) { // the bytes of runs read so far; the cursor is still until the next read starts
          const [run, off] = [Number(cursor[0]), cursor[1]];
          let bytes = 0n;
          for (; done.run < run && done.run < pairs.length / 2; done.run++) {
            bytes += pairs[2 * done.run + 1] - pairs[2 * done.run] - done.off;
            done.off = 0n;
          }
          if (done.run < pairs.length / 2) {
            bytes += off - done.off;
            done.off = off;
          }
          opts.progress(Number(bytes));
        }
        const current = slot;
        if (cursor[0] < count) {
          slot = nextSlot(current);
          next = read(k + 1, slot); // on a pool thread, while this batch becomes records
          next.catch(() => {}); // observed when awaited
        } else next = undefined;
        for (let j = 0, np = Number(n[0]); j < np; j++) {
          const a = pieces[3 * j + 2], len = Number(pieces[3 * j + 1]), sum = sums[j];
          if (a > at) hole(at, a);
          frames.append(dataRecord(a, len, segment, 0, len, sum, sum), pieces[3 * j]);
          at = a + BigInt(len);
        }
        frames.flush();
        const b = this.#slots[current], free = queue.writeBehind();
        b.free = free;
        free.then(() => b.free === free && (b.busy = false), () => {});
      }
    } catch (e) {
      await queue.writing.catch(() => {}); // no write or read may still use the fd or the buffers
      await next?.catch(() => {});
      throw e;
    }
    return at;
  }
}
