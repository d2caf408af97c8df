/**
 * Parking Workers to snapshot a SharedArrayBuffer consistently. Four Workers move value between pairs of
 * counters (every pair always sums to 1000, but not in the middle of a move). Parked at a safepoint, they stand
 * still between moves: the snapshot persisted while they are parked satisfies the invariant; then they go on.
 *
 * Run: `deno run -A examples/park_workers.ts`
 *
 * @module
 */

import { MemoryLoader, MemoryPersister, segmentSource, segmentTarget } from "../image.ts";
import { Safepoint } from "../process.ts";

const PAIRS = 4096;
const shared = new Int32Array(new SharedArrayBuffer(PAIRS * 2 * 4));
for (let i = 0; i < PAIRS; i++) shared[2 * i] = 1000;

const parkUrl = new URL("../lib/kernel/park.ts", import.meta.url).href;
const workerSource = `
import { safepointPoll } from ${JSON.stringify(parkUrl)};
self.onmessage = (e) => {
  const { handle, buffer, seed } = e.data;
  const a = new Int32Array(buffer);
  let x = seed, moves = 0;
  self.postMessage("started");
  for (;;) {
    if (Atomics.load(a, 0) === -1) break;
    x = (x * 1103515245 + 12345) >>> 0;
    const p = 1 + (x % (a.length / 2 - 1));
    const amount = (x >>> 16) % 7;
    Atomics.sub(a, 2 * p, amount);      // the pair is out of balance here...
    Atomics.add(a, 2 * p + 1, amount);  // ...and back in balance here
    if (++moves % 64 === 0) safepointPoll(handle); // a point where no move is half-done
  }
};`;
const url = URL.createObjectURL(new Blob([workerSource], { type: "text/javascript" }));

const dir = await Deno.makeTempDir({ prefix: "cryo-park-" });
using safepoint = new Safepoint();
const workers = [1, 2, 3, 4].map((seed) => {
  const w = new Worker(url, { type: "module" });
  const started = new Promise((resolve) => (w.onmessage = resolve));
  w.postMessage({ handle: safepoint.register(`worker ${seed}`), buffer: shared.buffer, seed });
  return { w, started };
});
try {
  await Promise.all(workers.map((x) => x.started));
  await new Promise((r) => setTimeout(r, 50));

  let parkedMs: number;
  {
    const t0 = performance.now();
    using _parked = await safepoint.park({ timeoutMs: 2000 });
    // Everyone is parked: persist the buffer as a relocatable named segment.
    const seg = segmentSource("counters", shared);
    await using persister = await MemoryPersister.create(`${dir}/shared.cryo`, { segments: [seg] });
    await persister.store(0n, shared.byteLength, seg);
    await persister.finalize();
    parkedMs = performance.now() - t0;
  } // unparked here

  // Load the snapshot into a fresh buffer and check the invariant on every pair.
  const copy = new Int32Array(shared.length);
  using loader = await MemoryLoader.open(`${dir}/shared.cryo`);
  await loader.load(segmentTarget({ counters: copy }));
  let broken = 0;
  for (let i = 1; i < PAIRS; i++) if (copy[2 * i] + copy[2 * i + 1] !== 1000) broken++;
  const moved = copy.some((v, i) => i > 1 && (i % 2 === 1 ? v !== 0 : v !== 1000));
  console.log(`parked 4 Workers and persisted ${shared.byteLength >> 10} KiB in ${parkedMs.toFixed(1)} ms`);
  console.log(
    `snapshot: ${PAIRS - 1 - broken} of ${PAIRS - 1} pairs sum to 1000; workers had moved value: ${moved}`,
  );
  if (broken || !moved) Deno.exit(1);
} finally {
  Atomics.store(shared, 0, -1);
  for (const { w } of workers) w.terminate();
  await Deno.remove(dir, { recursive: true });
}
