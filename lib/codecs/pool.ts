/**
 * Spread chunk work over all cores with a deterministic output order. `ordered()` keeps at most `window` work
 * items in flight (the codecs run large chunks as `nonblocking` FFI calls on pool threads, so N in flight use N
 * cores) and yields their results in input order, whatever order they finish in.
 *
 * Buffer lifetime: an item's buffers are referenced by its work until the work settles; `ordered()` never
 * abandons work in flight (on an error or an early `return` it waits for all of it before finishing), so once
 * the generator is done every buffer handed to it may be reused or freed. A source that reuses buffers needs a
 * ring of `window + 1`: the result being consumed plus `window` in flight.
 *
 * @module
 */

import type { Codec } from "./codec.ts";

/**
 * The default number of chunks in flight: two per core, plus two, so that the cores stay busy while the main
 * thread reads memory and writes the image (measured on 2 cores: a few per cent faster than cores + 1).
 *
 * @returns The window size (at least 4).
 */
export function defaultWindow(): number {
  return 2 * (navigator.hardwareConcurrency || 1) + 2;
}

/**
 * Run `work` over `items` with at most `window` in flight and yield the results in input order.
 *
 * @param items The inputs, pulled only when there is room in the window.
 * @param work The work for one item (its index is the position in `items`).
 * @param window How many items may be in flight (default {@link defaultWindow}).
 * @returns The results, in the order of `items`.
 * @throws {RangeError} When `window` is not a positive integer.
 * @example Results come back in input order
 * ```ts
 * import { ordered } from "./pool.ts";
 *
 * const out: number[] = [];
 * const slow = (n: number) => new Promise<number>((r) => setTimeout(() => r(n * 2), 10 - n));
 * for await (const v of ordered([1, 2, 3, 4], slow, 3)) out.push(v);
 * if (out.join() !== "2,4,6,8") throw new Error("out of order");
 * ```
 */
export async function* ordered<T, R>(
  items: Iterable<T> | AsyncIterable<T>,
  work: (item: T, index: number) => Promise<R>,
  window: number = defaultWindow(),
): AsyncGenerator<R> {
  if (!Number.isInteger(window) || window < 1) {
    throw new RangeError(`Cannot run ${window} items in flight: expected a positive integer`);
  }
  const it = Symbol.asyncIterator in items
    ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
    : (items as Iterable<T>)[Symbol.iterator]();
  const inFlight: Promise<R>[] = [];
  let index = 0;
  let exhausted = false;
  try {
    for (;;) {
      while (!exhausted && inFlight.length < window) {
        const next = await it.next();
        if (next.done) {
          exhausted = true;
          break;
        }
        const p = work(next.value, index++);
        p.catch(() => {}); // observed below, in order; never an unhandled rejection
        inFlight.push(p);
      }
      const head = inFlight.shift();
      if (head === undefined) return;
      yield await head;
    }
  } finally {
    await Promise.allSettled(inFlight);
    if (!exhausted) await it.return?.();
  }
}

/** What {@link forEachOrdered} does with each item. */
export interface OrderedSteps<T, R> {
  /** Whether `item` may be done on this thread (when no other kind of item is in flight: results stay in order). */
  small(item: T): boolean;
  /** Do `item` at once, without a promise, handing its result to `use`; false (nothing done) when it cannot. */
  now(item: T): boolean;
  /** Do `item` in the background (on a pool thread). */
  work(item: T): Promise<R>;
  /** Take the result of `item` done by `work`, in input order. */
  use(item: T, result: R): void;
}

/**
 * {@link ordered} for a walk of many small items: those `steps.small` picks are done on this thread without a
 * promise, the others at most `window` in flight; every result is used in input order. A small item behind a
 * large one in flight waits in line (so that a mix keeps the pool busy); once no large one is, the line is
 * emptied and small items are done at once again. A zstd image of 524,288 one-page records went through an
 * async generator and promises per record (185 MiB of garbage per GiB of memory restored), and V8 grew its
 * young generation with them.
 *
 * @param items The inputs.
 * @param steps How each item is done and used.
 * @param window How many items may be in flight (default {@link defaultWindow}).
 */
export async function forEachOrdered<T, R>(
  items: Iterable<T>,
  steps: OrderedSteps<T, R>,
  window: number = defaultWindow(),
): Promise<void> {
  const queued: T[] = [], inFlight: Promise<R>[] = [], large: boolean[] = [];
  let largeInFlight = 0;
  const useFirst = async () => {
    const item = queued.shift()!, result = await inFlight.shift()!;
    if (large.shift()) largeInFlight--;
    steps.use(item, result);
  };
  try {
    for (const item of items) {
      const small = steps.small(item);
      if (small && largeInFlight === 0) {
        while (inFlight.length) await useFirst(); // small ones, settled already
        if (steps.now(item)) continue;
      }
      const p = steps.work(item);
      p.catch(() => {}); // observed below, in order; never an unhandled rejection
      queued.push(item);
      inFlight.push(p);
      const isLarge = !small || largeInFlight === 0; // a small one here could not be done now
      large.push(isLarge);
      if (isLarge) largeInFlight++;
      if (inFlight.length >= window) await useFirst();
    }
    while (inFlight.length) await useFirst();
  } finally {
    await Promise.allSettled(inFlight);
  }
}

/** One chunk after encoding: `encoded` is null when the chunk is stored raw. */
export interface EncodedChunk<T> {
  /** The item the chunk came from. */
  item: T;
  /** The chunk's bytes, as given. */
  raw: Uint8Array;
  /** The encoded bytes, or null when the encoding was not smaller. */
  encoded: Uint8Array | null;
}

/**
 * Encode chunks with `codec` on all cores, yielding them in input order.
 *
 * @param codec The codec.
 * @param items The inputs; `bytes(item)` gives each one's chunk.
 * @param bytes The chunk of one item; it must not change until that item is yielded.
 * @param window How many chunks may be in flight (default {@link defaultWindow}).
 * @returns The encoded chunks, in the order of `items`.
 */
export function encodeOrdered<T>(
  codec: Codec,
  items: Iterable<T> | AsyncIterable<T>,
  bytes: (item: T) => Uint8Array,
  window?: number,
): AsyncGenerator<EncodedChunk<T>> {
  return ordered(items, async (item) => {
    const raw = bytes(item);
    return { item, raw, encoded: await codec.encode(raw) };
  }, window);
}
