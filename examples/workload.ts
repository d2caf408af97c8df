/**
 * The demo's workload: a Deno program whose state lives in three places cryo must capture together: an FFI
 * arena (64 MiB mmap'd outside the V8 heap), a SharedArrayBuffer written by two Workers, and an ordinary JS
 * object on the main thread's heap. It takes commands on stdin, one per line, and answers one line each:
 *
 * - `state`: `ok arena=<hash> shared=<hash> ledger=<n> arena_addr=0x…` (hashes of the arena and the shared
 *   buffer, and the number of ledger entries in the JS heap)
 * - `work N`: the Workers rewrite the shared buffer and the arena N times; the ledger grows by N
 * - `churn MB`: allocate about MB MiB of JS objects and drop them, and map MB MiB more outside the V8 heap
 *   that stays mapped (the layout changes; the fingerprint, `state`, does not)
 * - `exit`
 *
 * Run: `deno run -A examples/workload.ts`
 *
 * @module
 */

import { MAP, PROT } from "../ffi/constants.ts";
import { mmap, ptrOf } from "../ffi/libc.ts";

const ARENA_BYTES = 64 << 20;
const SHARED_BYTES = 4 << 20;

const arenaAddr = mmap(0n, BigInt(ARENA_BYTES), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
const arena = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(arenaAddr)!, ARENA_BYTES));
const shared = new Int32Array(new SharedArrayBuffer(SHARED_BYTES));
const ledger: { round: number; note: string }[] = [];
const kept: bigint[] = []; // mappings made by `churn`

function churn(mb: number): void {
  let junk: { i: number; s: string }[] | undefined = Array.from(
    { length: mb * 4096 },
    (_, i) => ({ i, s: `${i}`.repeat(32) }),
  );
  const addr = mmap(0n, BigInt(mb << 20), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, mb << 20)).fill(junk.length & 0xff);
  kept.push(addr);
  junk = undefined;
}

const workerSource = `
self.onmessage = (e) => {
  const { shared, half, rounds, seed } = e.data;
  const view = new Int32Array(shared);
  const n = view.length / 2;
  let x = seed >>> 0;
  for (let r = 0; r < rounds; r++) {
    for (let i = half * n; i < (half + 1) * n; i += 97) {
      x = (x * 1664525 + 1013904223) >>> 0;
      view[i] = x;
    }
  }
  self.postMessage(x);
};`;
const workerUrl = URL.createObjectURL(new Blob([workerSource], { type: "text/javascript" }));
const workers = [0, 1].map(() => new Worker(workerUrl, { type: "module" }));

function fnv(words: Uint32Array | Int32Array): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < words.length; i += 1) h = Math.imul(h ^ words[i], 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

// Initial state: a patterned arena (every 4th page written; the rest stay unpopulated holes).
for (let page = 0; page < ARENA_BYTES / 4096; page += 4) arena[page * 1024] = page ^ 0x5a5a5a5a;

async function work(rounds: number, seed: number): Promise<void> {
  await Promise.all(workers.map((w, half) =>
    new Promise<void>((resolve) => {
      w.onmessage = () => resolve();
      w.postMessage({ shared: shared.buffer, half, rounds, seed: seed + half });
    })
  ));
  for (let r = 0; r < rounds; r++) {
    for (let i = (seed + r) % 1024; i < arena.length; i += 4099) arena[i] = (arena[i] + seed + r) >>> 0;
    ledger.push({ round: ledger.length, note: `work seed ${seed}` });
  }
}

const state = () =>
  `ok arena=${fnv(arena)} shared=${fnv(shared)} ledger=${ledger.length} arena_addr=0x${
    arenaAddr.toString(16)
  }`;

await work(1, 7);
const encoder = new TextEncoder();
let pending = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  pending += chunk;
  let nl: number;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const [cmd, arg] = pending.slice(0, nl).trim().split(/\s+/);
    pending = pending.slice(nl + 1);
    let answer: string;
    if (cmd === "state") answer = state();
    else if (cmd === "work") {
      await work(Number(arg ?? 1), ledger.length * 31 + 11);
      answer = "ok";
    } else if (cmd === "churn") {
      churn(Number(arg ?? 16));
      answer = "ok";
    } else if (cmd === "exit") Deno.exit(0);
    else answer = `err unknown command ${cmd}`;
    await Deno.stdout.write(encoder.encode(answer + "\n"));
  }
}
