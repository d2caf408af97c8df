/**
 * A safepoint for this process's own threads: `park()` stops every registered Deno Worker and native thread at
 * a point where it holds nothing, and `unpark()` lets them go.
 *
 * Workers cooperate: each gets a {@link SafepointHandle} (a `SharedArrayBuffer` flag and a slot) and calls
 * {@link safepointPoll} now and then; when a park is requested it announces itself and waits with
 * `Atomics.wait`. Native threads (created by FFI code) register with the helper's own safepoint
 * (`cryo_safepoint_register(sp, name)`, `cryo_safepoint_poll(sp, slot)` in C, the pointer is
 * {@link Safepoint.native}) and wait on a futex word the helper owns, in its own mapping. `Atomics.wait` and a
 * raw futex do not wake each other (V8 waits on its own condition variable), so each kind is woken its own way.
 *
 * Parked native threads report their stack pointer and stack bounds: {@link releasableStack} gives the ranges
 * that may be persisted and released while they are parked, which never include the page holding SP nor the
 * one below it (the 128-byte red zone, and where a signal frame would go).
 *
 * This module loads no native code at import time, so a Worker can import it for `safepointPoll` alone.
 *
 * @module
 */

import { CryoError, SafepointTimeoutError } from "../errors.ts";
import { helper } from "../../ffi/helper.ts";

// Control words (Int32Array over the SharedArrayBuffer).
const STATE = 0; // 1 while a park is requested
const GENERATION = 1; // bumped by every request
const ARRIVALS = 2; // bumped (and notified) by every Worker arrival
const SLOTS = 8; // then per Worker slot: [registered, arrived generation]
const MAX_WORKERS = 256;

// The helper's native safepoint (see ffi/helper/safepoint.c): a 64-byte header, then 128-byte slots.
const NATIVE_HEADER = 64;
const NATIVE_SLOT = 128;

/** What a Worker needs to take part in a safepoint; post it to the Worker (it is structured-cloneable). */
export interface SafepointHandle {
  /** The shared control words. */
  readonly control: SharedArrayBuffer;
  /** This Worker's slot. */
  readonly slot: number;
  /** The name used in errors, e.g. `"worker 3"`. */
  readonly name: string;
}

/**
 * Poll the safepoint from a Worker: if a park is requested, announce arrival and wait (`Atomics.wait`) until
 * unparked. Call it where the Worker holds no half-done update to shared state.
 *
 * @param handle The handle the Worker received from {@link Safepoint.register}.
 * @returns `true` when the Worker was parked (and is now released), `false` when no park was requested.
 */
export function safepointPoll(handle: SafepointHandle): boolean {
  const c = new Int32Array(handle.control);
  if (Atomics.load(c, STATE) === 0) return false;
  const gen = Atomics.load(c, GENERATION);
  const arrived = SLOTS + 2 * handle.slot + 1;
  Atomics.store(c, arrived, gen);
  Atomics.add(c, ARRIVALS, 1);
  Atomics.notify(c, ARRIVALS);
  while (Atomics.load(c, STATE) === 1 && Atomics.load(c, GENERATION) === gen) Atomics.wait(c, STATE, 1);
  Atomics.store(c, arrived, 0);
  return true;
}

/**
 * Leave the safepoint for good, from the Worker (before it ends): later parks no longer wait for it.
 *
 * @param handle The Worker's handle.
 */
export function safepointLeave(handle: SafepointHandle): void {
  const c = new Int32Array(handle.control);
  Atomics.store(c, SLOTS + 2 * handle.slot + 1, 0);
  Atomics.store(c, SLOTS + 2 * handle.slot, 0);
}

/** A native thread registered with the helper's safepoint, as it reported itself. */
export interface NativeThread {
  /** Its slot in the helper's safepoint. */
  slot: number;
  /** The name it registered under. */
  name: string;
  /** Its thread id. */
  tid: number;
  /** Its stack pointer while parked (0n when not parked). */
  sp: bigint;
  /** Lowest address of its stack (above the guard page). */
  stackLow: bigint;
  /** One past the highest address considered: the page where it registered (glibc's TCB, TLS and rseq area
   * above it are never included). */
  stackHigh: bigint;
}

/** Options of {@link Safepoint.park}. */
export interface ParkOptions {
  /** How long the threads may take to arrive, in milliseconds (default 1000). */
  timeoutMs?: number;
}

/**
 * The memory ranges of a parked native thread's stack that may be persisted and released: its stack bounds
 * minus the page holding SP and the page below it. Load them back before unparking.
 *
 * @param thread A parked native thread, from {@link Parked.threads}.
 * @param pageSize The page size (default: the helper's).
 * @returns Up to two page-aligned `[start, end)` ranges, lowest first.
 * @throws {RangeError} When the thread is not parked (its SP is unknown) or SP is outside its stack.
 */
export function releasableStack(
  thread: NativeThread,
  pageSize = 4096,
): { start: bigint; end: bigint }[] {
  const page = BigInt(pageSize);
  if (thread.sp === 0n || thread.sp < thread.stackLow || thread.sp >= thread.stackHigh + page) {
    throw new RangeError(
      `Cannot release the stack of ${thread.name} (tid ${thread.tid}): SP 0x${
        thread.sp.toString(16)
      } is not in ` +
        `its stack 0x${thread.stackLow.toString(16)}-0x${thread.stackHigh.toString(16)}`,
    );
  }
  const spPage = thread.sp & ~(page - 1n);
  const keepLow = spPage - page;
  const keepHigh = spPage + page;
  const ranges: { start: bigint; end: bigint }[] = [];
  if (thread.stackLow < keepLow) ranges.push({ start: thread.stackLow, end: keepLow });
  if (keepHigh < thread.stackHigh) ranges.push({ start: keepHigh, end: thread.stackHigh });
  return ranges;
}

/** Parked threads: disposing it (or `unpark()`) lets them go. */
export class Parked implements Disposable {
  /** The names of the parked Workers. */
  readonly workers: readonly string[];
  /** The parked native threads, with their SP and stack bounds. */
  readonly threads: readonly NativeThread[];
  readonly #safepoint: Safepoint;
  #released = false;

  /** @internal Use {@link Safepoint.park}. */
  constructor(safepoint: Safepoint, workers: string[], threads: NativeThread[]) {
    this.#safepoint = safepoint;
    this.workers = workers;
    this.threads = threads;
  }

  /** Whether {@link unpark} has run. */
  get released(): boolean {
    return this.#released;
  }

  /**
   * The page size the helper reported, for {@link releasableStack}.
   *
   * @returns Bytes.
   */
  get pageSize(): number {
    return this.#safepoint.pageSize;
  }

  /** Let the threads go (once the last nested park is unparked). Idempotent. */
  unpark(): void {
    if (this.#released) return;
    this.#released = true;
    this.#safepoint.leave();
  }

  /** Same as {@link unpark}. */
  [Symbol.dispose](): void {
    this.unpark();
  }
}

/** A safepoint for this process's Workers and native threads. */
export class Safepoint implements Disposable {
  readonly #control = new SharedArrayBuffer(4 * (SLOTS + 2 * MAX_WORKERS));
  readonly #c = new Int32Array(this.#control);
  readonly #names = new Map<number, string>();
  #native: Deno.PointerValue = null;
  #depth = 0;
  #parking: Promise<unknown> | undefined;
  #closed = false;

  /**
   * Register a Worker: post the returned handle to it; it calls {@link safepointPoll} with it.
   *
   * @param name Its name in errors (default `worker N`).
   * @returns The handle.
   * @throws {RangeError} When 256 Workers are registered already.
   */
  register(name?: string): SafepointHandle {
    for (let slot = 0; slot < MAX_WORKERS; slot++) {
      if (Atomics.load(this.#c, SLOTS + 2 * slot) !== 0 || this.#names.has(slot)) continue;
      this.#names.set(slot, name ?? `worker ${slot}`);
      Atomics.store(this.#c, SLOTS + 2 * slot + 1, 0);
      Atomics.store(this.#c, SLOTS + 2 * slot, 1);
      return { control: this.#control, slot, name: name ?? `worker ${slot}` };
    }
    throw new RangeError(`Cannot register a Worker: all ${MAX_WORKERS} slots are taken`);
  }

  /**
   * Unregister a Worker (for instance after terminating it): later parks no longer wait for it.
   *
   * @param handle Its handle.
   */
  unregister(handle: SafepointHandle): void {
    safepointLeave(handle);
    this.#names.delete(handle.slot);
  }

  /**
   * The helper's safepoint for native threads, created on first use: give this pointer to native code, which
   * calls `cryo_safepoint_register(sp, name)` on each thread and `cryo_safepoint_poll(sp, slot)` in its loops.
   *
   * @returns The pointer.
   */
  get native(): Deno.PointerObject {
    if (this.#closed) throw new CryoError("Cannot use a closed safepoint");
    if (this.#native === null) {
      this.#native = helper().cryo_safepoint_new();
      if (this.#native === null) throw new CryoError("Cannot create the native safepoint: mmap failed");
    }
    return this.#native;
  }

  /**
   * The page size the helper reported.
   *
   * @returns Bytes.
   */
  get pageSize(): number {
    return new Deno.UnsafePointerView(this.native).getUint32(16);
  }

  /**
   * The native threads registered now.
   *
   * @returns Their slots, names, tids, SP (0n unless parked) and stack bounds.
   */
  nativeThreads(): NativeThread[] {
    if (this.#native === null) return [];
    const v = new Deno.UnsafePointerView(this.#native);
    const threads: NativeThread[] = [];
    for (let slot = 0; slot < v.getUint32(12); slot++) {
      const at = NATIVE_HEADER + slot * NATIVE_SLOT;
      if (v.getUint32(at) !== 1) continue;
      const nameBytes = new Uint8Array(v.getArrayBuffer(24, at + 40));
      const end = nameBytes.indexOf(0);
      threads.push({
        slot,
        name: new TextDecoder().decode(nameBytes.subarray(0, end < 0 ? 24 : end)) || `native ${slot}`,
        tid: v.getInt32(at + 8),
        sp: v.getBigUint64(at + 16),
        stackLow: v.getBigUint64(at + 24),
        stackHigh: v.getBigUint64(at + 32),
      });
    }
    return threads;
  }

  /**
   * Park every registered Worker and native thread. Resolves when all have arrived. Parking while parked
   * nests: the threads go when the last {@link Parked} is unparked.
   *
   * @param opts The timeout.
   * @returns The parked threads; dispose or `unpark()` it.
   * @throws {SafepointTimeoutError} When some did not arrive in time, naming them; nobody is left parked.
   */
  async park(opts: ParkOptions = {}): Promise<Parked> {
    const timeoutMs = opts.timeoutMs ?? 1000;
    if (!(timeoutMs > 0)) throw new RangeError(`Cannot park: timeout ${timeoutMs} ms is not positive`);
    if (this.#closed) throw new CryoError("Cannot park: the safepoint is closed");
    while (this.#parking) await this.#parking.catch(() => {});
    if (this.#depth > 0) {
      this.#depth++;
      return new Parked(this, this.#parkedWorkers(), this.nativeThreads());
    }
    const attempt = this.#arrive(timeoutMs);
    this.#parking = attempt;
    try {
      return await attempt;
    } finally {
      this.#parking = undefined;
    }
  }

  async #arrive(timeoutMs: number): Promise<Parked> {
    const c = this.#c;
    let gen = Atomics.add(c, GENERATION, 1) + 1;
    if (gen === 0) gen = Atomics.add(c, GENERATION, 1) + 1; // 0 means "not arrived"
    Atomics.store(c, STATE, 1);
    const nativeGen = this.#native === null ? 0 : helper().cryo_safepoint_request(this.#native);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const missing: string[] = [];
      let total = 0;
      for (const [slot, name] of this.#names) {
        if (Atomics.load(c, SLOTS + 2 * slot) !== 1) continue; // left
        total++;
        if (Atomics.load(c, SLOTS + 2 * slot + 1) !== gen) missing.push(name);
      }
      if (this.#native !== null) {
        const v = new Deno.UnsafePointerView(this.#native);
        for (let slot = 0; slot < v.getUint32(12); slot++) {
          const at = NATIVE_HEADER + slot * NATIVE_SLOT;
          if (v.getUint32(at) !== 1) continue;
          total++;
          if (v.getUint32(at + 4) !== nativeGen) missing.push(this.#nativeName(v, slot));
        }
      }
      if (missing.length === 0) break;
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#release();
        throw new SafepointTimeoutError(timeoutMs, total, missing);
      }
      // Workers notify ARRIVALS; native threads cannot (a futex does not wake Atomics.waitAsync): poll them.
      // A timer keeps the event loop alive (a pending waitAsync alone does not).
      const step = Math.min(left, this.#native === null ? 20 : 1);
      const wait = Atomics.waitAsync(c, ARRIVALS, Atomics.load(c, ARRIVALS), step);
      if (wait.async) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([wait.value, new Promise((r) => timer = setTimeout(r, step))]);
        clearTimeout(timer);
      }
    }
    this.#depth = 1;
    return new Parked(this, this.#parkedWorkers(), this.nativeThreads());
  }

  #nativeName(v: Deno.UnsafePointerView, slot: number): string {
    const bytes = new Uint8Array(v.getArrayBuffer(24, NATIVE_HEADER + slot * NATIVE_SLOT + 40));
    const end = bytes.indexOf(0);
    return new TextDecoder().decode(bytes.subarray(0, end < 0 ? 24 : end)) || `native ${slot}`;
  }

  #parkedWorkers(): string[] {
    const gen = Atomics.load(this.#c, GENERATION);
    return [...this.#names].filter(([slot]) => Atomics.load(this.#c, SLOTS + 2 * slot + 1) === gen)
      .map(([, name]) => name);
  }

  #release(): void {
    Atomics.store(this.#c, STATE, 0);
    Atomics.notify(this.#c, STATE);
    if (this.#native !== null) helper().cryo_safepoint_release(this.#native);
  }

  /** @internal Called by {@link Parked.unpark}. */
  leave(): void {
    if (this.#depth === 0) return;
    if (--this.#depth === 0) this.#release();
  }

  /** Whether threads are parked now. */
  get parked(): boolean {
    return this.#depth > 0;
  }

  /**
   * Release anything parked and free the native safepoint (kept if native threads are still registered,
   * since they hold its pointer). Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#depth = 0;
    this.#release();
    if (this.#native !== null && this.nativeThreads().length === 0) {
      helper().cryo_safepoint_free(this.#native);
      this.#native = null;
    }
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
