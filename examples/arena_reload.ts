/**
 * In-process persist and fast reload of a fixed-address arena (the CRaC pattern): persist a 256 MiB arena of
 * this process into an image, release its memory (RSS drops), then map it back at the same address straight
 * from the image (lazy, copy-on-write) and check every byte.
 *
 * Run: `deno run -A examples/arena_reload.ts`
 *
 * @module
 */

import { MAP, PROT } from "../ffi/constants.ts";
import { madvise, mmap, munmap, ptrOf } from "../ffi/libc.ts";
import { MADV } from "../ffi/constants.ts";
import { MemoryLoader, MemoryPersister, selfSource, selfTarget } from "../image.ts";
import { readRegions, scanPages } from "../process.ts";

const ARENA = 256 << 20;
const AT = 0x6a0000000000n; // a fixed address, like a JVM heap's

function rssKiB(): number {
  return Number(/^Rss:\s+(\d+) kB/m.exec(Deno.readTextFileSync("/proc/self/smaps_rollup"))![1]);
}

function digest(view: Uint32Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < view.length; i += 1) h = Math.imul(h ^ view[i], 0x01000193) >>> 0;
  return h;
}

const dir = await Deno.makeTempDir({ prefix: "cryo-arena-" });
const image = `${dir}/arena.cryo`;
const addr = mmap(
  AT,
  BigInt(ARENA),
  PROT.READ | PROT.WRITE,
  MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE,
);
try {
  // Fill every other MiB of the arena (the rest stays unpopulated: holes that cost nothing).
  const view = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, ARENA));
  for (let mib = 0; mib < ARENA >> 20; mib += 2) {
    for (let i = mib << 18; i < (mib + 1) << 18; i++) view[i] = Math.imul(i, 2654435761) >>> 0;
  }
  const before = digest(view);
  const rssFull = rssKiB();

  // Persist: the region table names the arena; scanPages finds the pages that hold data.
  const region = readRegions("self").find((r) => r.start === addr)!;
  const t0 = performance.now();
  await using persister = await MemoryPersister.create(image, { source: selfSource(), regions: [region] });
  let at = region.start;
  for (const run of scanPages("self", region.start, region.end)) {
    if (run.start > at) await persister.storeGap(at, run.start - at);
    await persister.store(run.start, run.end - run.start);
    at = run.end;
  }
  if (region.end > at) await persister.storeGap(at, region.end - at);
  const summary = await persister.finalize();
  const persistMs = performance.now() - t0;

  // Release: the memory goes back to the kernel.
  madvise(addr, BigInt(ARENA), MADV.DONTNEED);
  const rssReleased = rssKiB();

  // Reload lazily: raw runs are mapped from the image at their addresses; pages load on first touch.
  const t1 = performance.now();
  using loader = await MemoryLoader.open(image);
  await loader.verify();
  const verifyMs = performance.now() - t1;
  const t2 = performance.now();
  const loaded = await loader.load(selfTarget({ lazy: true }));
  const loadMs = performance.now() - t2;
  const after = digest(view);

  console.log(
    `persisted ${summary.dataBytes >> 20} MiB of data (${summary.holeBytes >> 20} MiB holes) in ${
      persistMs.toFixed(0)
    } ms`,
  );
  console.log(`RSS ${rssFull >> 10} MiB -> ${rssReleased >> 10} MiB after release`);
  console.log(
    `verified in ${verifyMs.toFixed(0)} ms; lazy load mapped ${loaded.mappedBytes >> 20} MiB in ${
      loadMs.toFixed(1)
    } ms`,
  );
  console.log(before === after ? "arena restored: every byte matches" : "MISMATCH");
  if (before !== after || rssReleased >= rssFull - (64 << 10)) Deno.exit(1);
} finally {
  munmap(addr, BigInt(ARENA));
  await Deno.remove(dir, { recursive: true });
}
