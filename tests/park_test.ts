import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { unwrap } from "../ffi/libc.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { selfTarget } from "../lib/image/targets.ts";
import { readRegions } from "../lib/kernel/maps.ts";
import { SafepointTimeoutError } from "../lib/errors.ts";
import { releasableStack, Safepoint, type SafepointHandle } from "../lib/kernel/park.ts";
import { testThread } from "./_test_thread.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const workerUrl = new URL("./fixtures/park_worker.ts", import.meta.url);

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Workers moving amounts between 64 shared cells; `sum(cells) === 0` whenever nobody is mid-move. */
class Crew implements AsyncDisposable {
  readonly cells = new Int32Array(new SharedArrayBuffer(64 * 4));
  readonly progress = new Int32Array(new SharedArrayBuffer(4 * 17));
  readonly workers: Worker[] = [];
  readonly handles: SafepointHandle[] = [];

  async start(safepoint: Safepoint, polls: boolean[], names: string[]): Promise<void> {
    for (const [i, poll] of polls.entries()) {
      const w = new Worker(workerUrl, { type: "module" });
      const started = new Promise((r) => w.onmessage = r);
      const handle = safepoint.register(names[i]);
      this.handles.push(handle);
      w.postMessage({
        handle,
        cells: this.cells.buffer,
        progress: this.progress.buffer,
        index: i,
        poll,
      });
      this.workers.push(w);
      await started;
    }
  }

  moves(): number[] {
    return this.workers.map((_, i) => Atomics.load(this.progress, 1 + i));
  }

  sum(): number {
    return this.cells.slice().reduce((a, b) => a + b, 0);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    Atomics.store(this.progress, 0, 1);
    for (const w of this.workers) w.terminate();
    await sleep(0);
  }
}

Deno.test("Safepoint.park() parks 4 Workers at a consistent point; after unpark() they continue", async () => {
  using safepoint = new Safepoint();
  await using crew = new Crew();
  await crew.start(safepoint, [true, true, true, true], ["w0", "w1", "w2", "w3"]);
  await until("every worker to move", () => crew.moves().every((m) => m > 10));
  // Unparked, a snapshot usually catches a move half done: the invariant is worth checking.
  let broken = 0;
  for (let i = 0; i < 200; i++) broken += crew.sum() === 0 ? 0 : 1;
  assert(broken > 0, "an unparked snapshot never caught a move in flight");

  for (let round = 0; round < 3; round++) {
    {
      using parked = await safepoint.park({ timeoutMs: 5000 });
      assertEquals([...parked.workers].sort(), ["w0", "w1", "w2", "w3"]);
      assert(safepoint.parked);
      const snapshot = crew.cells.slice();
      const moves = crew.moves();
      assertEquals(snapshot.reduce((a, b) => a + b, 0), 0);
      await sleep(50);
      assertEquals(crew.cells.slice(), snapshot);
      assertEquals(crew.moves(), moves);
    }
    assert(!safepoint.parked);
    const after = crew.moves();
    await until("workers to continue", () => crew.moves().every((m, i) => m > after[i]));
  }
});

Deno.test("Safepoint.park() times out naming a Worker that never polls and leaves nobody parked", async () => {
  using safepoint = new Safepoint();
  await using crew = new Crew();
  await crew.start(safepoint, [true, false, true], ["polite", "deaf", "polite too"]);
  await until("every worker to move", () => crew.moves().every((m) => m > 10));
  const started = performance.now();
  const e = await assertRejects(() => safepoint.park({ timeoutMs: 200 }), SafepointTimeoutError);
  const took = performance.now() - started;
  assert(took >= 190 && took < 2000, `timed out after ${took} ms`);
  assertEquals(e.missing, ["deaf"]);
  assertEquals(e.message, `Cannot park: 1 of 3 thread(s) did not reach the safepoint within 200 ms: deaf`);
  assert(!safepoint.parked);
  const after = crew.moves();
  await until("the polite workers to continue", () => crew.moves().every((m, i) => m > after[i]));
});

Deno.test("Safepoint.park() twice nests, unpark() twice is harmless, and a Worker ending while parked is safe", async () => {
  using safepoint = new Safepoint();
  await using crew = new Crew();
  await crew.start(safepoint, [true, true], ["a", "b"]);
  await until("every worker to move", () => crew.moves().every((m) => m > 10));
  const outer = await safepoint.park();
  const inner = await safepoint.park();
  assertEquals([...inner.workers].sort(), ["a", "b"]);
  inner.unpark();
  inner.unpark();
  const held = crew.moves();
  await sleep(30);
  assertEquals(crew.moves(), held, "the outer park still holds them");
  // Worker "b" is told to end while parked (it leaves the safepoint as it goes).
  Atomics.store(crew.progress, 0, 2 + 1);
  outer.unpark();
  outer.unpark();
  const after = crew.moves();
  await until("worker a to continue", () => crew.moves()[0] > after[0] + 10);
  const bEnded = crew.moves()[1];
  assert(bEnded <= after[1] + 1, "worker b went on after it was told to end");
  // Parking again waits only for "a".
  {
    using parked = await safepoint.park({ timeoutMs: 5000 });
    assertEquals(parked.workers, ["a"]);
  }
  assertEquals(crew.moves()[1], bEnded);
});

/** The fold the test thread computes: per frame, 256 mixed words folded into h, deepest frame first. */
function expectedFold(depth: number, seed: number): number {
  const mix = (level: number, j: number) => {
    let x = (seed ^ Math.imul(level, 0x9e3779b9) ^ Math.imul(j, 0x85ebca6b)) >>> 0;
    x ^= x >>> 16;
    x = Math.imul(x, 0x7feb352d) >>> 0;
    x ^= x >>> 15;
    x = Math.imul(x, 0x846ca68b) >>> 0;
    x ^= x >>> 16;
    return x >>> 0;
  };
  let h = 0;
  for (let level = depth - 1; level >= 0; level--) {
    for (let j = 0; j < 256; j++) h = (Math.imul(h, 31) + mix(level, j)) >>> 0;
  }
  return h;
}

/** The resident bytes of the mapping that starts at `start`, from /proc/self/smaps (not disturbed by other
 * threads' allocations, unlike the process total). */
function vmaRss(start: bigint): number {
  const text = Deno.readTextFileSync("/proc/self/smaps");
  const at = text.search(new RegExp(`^${start.toString(16)}-`, "m"));
  assert(at >= 0, `no mapping at 0x${start.toString(16)}`);
  return Number(text.slice(at).match(/^Rss:\s+(\d+) kB/m)![1]) * 1024;
}

function view(r: { start: bigint; end: bigint }): Uint8Array {
  return new Uint8Array(
    Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.start)!, Number(r.end - r.start)),
  );
}

Deno.test("Safepoint.park() parks a native thread deep in a recursion; its stack is persisted, released and loaded back", async () => {
  using safepoint = new Safepoint();
  const depth = 3000, seed = 0x5eed;
  const h = testThread();
  const thread = h.cryo_test_thread_start(safepoint.native, depth, seed);
  assert(thread !== null, "the test thread did not start");
  let joined = false;
  const dir = await Deno.makeTempDir();
  try {
    assertEquals(safepoint.nativeThreads().map((t) => t.name), ["cryo-test-thread"]);
    const parked = await safepoint.park({ timeoutMs: 10_000 });
    let safetyNet: { range: { start: bigint; end: bigint }; bytes: Uint8Array }[] = [];
    let loadedBack = false;
    let dropped = 0;
    try {
      assertEquals(parked.threads.length, 1);
      const t = parked.threads[0];
      assert(t.stackLow < t.sp && t.sp < t.stackHigh, "SP outside the stack bounds");
      // ~3 MiB of live frames above SP.
      assert(t.stackHigh - t.sp > BigInt(depth * 1024), `only ${t.stackHigh - t.sp} bytes above SP`);
      // Parked, it runs no signal handler on its stack: every signal is blocked but SIGKILL,
      // SIGSTOP (which cannot be) and glibc's SIGCANCEL/SIGSETXID.
      const status = Deno.readTextFileSync(`/proc/self/task/${t.tid}/status`);
      assertEquals(status.match(/^SigBlk:\s*(\S+)/m)?.[1], "fffffffe7ffbfeff");
      const ranges = releasableStack(t, parked.pageSize);
      const page = BigInt(parked.pageSize);
      const spPage = t.sp & ~(page - 1n);
      for (const r of ranges) {
        assert(r.end <= spPage - page || r.start >= spPage + page, "a kept page is released");
      }
      const stack = readRegions("self").find((r) => r.start <= t.sp && t.sp < r.end)!;
      const path = `${dir}/stack.img`;
      const persister = await MemoryPersister.create(path, { regions: [stack] });
      for (const r of ranges) await persister.store(r.start, r.end - r.start);
      const summary = await persister.finalize();
      assert(summary.dataBytes >= depth * 1024, `persisted ${summary.dataBytes} bytes`);

      // A safety net, so that a failing assertion below cannot let the thread run on a released stack.
      safetyNet = ranges.map((r) => ({ range: r, bytes: view(r).slice() }));

      const before = vmaRss(stack.start);
      for (const r of ranges) releaseMemory(r.start, r.end - r.start);
      dropped = before - vmaRss(stack.start);

      using img = await MemoryLoader.open(path);
      const loaded = await img.load(selfTarget());
      loadedBack = true;
      assertEquals(loaded.copiedBytes, summary.dataBytes);
      assert(vmaRss(stack.start) - (before - dropped) >= depth * 1024, "the stack is not resident again");
    } finally {
      if (!loadedBack) { for (const { range, bytes } of safetyNet) view(range).set(bytes); }
      parked.unpark();
    }
    assert(dropped >= depth * 1024, `RSS of the stack dropped by ${dropped} bytes only`);
    const result = await h.cryo_test_thread_join(thread, 10_000_000_000n);
    joined = true;
    assertEquals(Number(unwrap(result, "cryo_test_thread_join")), expectedFold(depth, seed));
  } finally {
    if (!joined) {
      safepoint.close();
      await h.cryo_test_thread_join(thread, 10_000_000_000n);
    }
    await Deno.remove(dir, { recursive: true });
  }
});
