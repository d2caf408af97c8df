import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { Mapping, PAGE_SIZE, regionAt, tempDir } from "./_image.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { pidSource, selfSource } from "../lib/image/sources.ts";
import { pidTarget, selfTarget } from "../lib/image/targets.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import { madvise } from "../ffi/libc.ts";
import { verifyStream } from "../lib/image/stream.ts";
import { Pagemap } from "../lib/kernel/pagemap.ts";

const MiB = 1 << 20;
const P = BigInt(PAGE_SIZE);

/** A fixed address both children can map (far from where the kernel puts libraries and the heap). */
function fixedAddress(): bigint {
  return 0x5d0000000000n + (BigInt(Deno.pid % 4096) << 24n);
}

function presentBytes(pid: number | "self", start: bigint, end: bigint): number {
  using pm = Pagemap.open(pid);
  const runs = pm.runs(start, end);
  let n = 0;
  for (let i = 0; i < runs.length; i += 2) n += Number(runs[i + 1] - runs[i]);
  return n;
}

Deno.test("`storeRuns()` stores a child's sparse region byte-exact, gaps and zero pages as holes, at ≤ 1.02 × its data on disk", async () => {
  const len = 64 * MiB;
  const addr = fixedAddress();
  await using a = Target.start();
  await using b = Target.start();
  await using dir = await tempDir();
  await a.cmd(`mapat 0x${addr.toString(16)} ${len}`);
  await b.cmd(`mapat 0x${addr.toString(16)} ${len}`);
  await a.fill(addr, len, "stride:4", 7); // 4096 single-page runs of 16 MiB data
  await a.fill(addr + BigInt(MiB) + P, PAGE_SIZE, "zero"); // present but all zero: a hole
  await b.fill(addr, len, "byte:85");
  using pm = Pagemap.open(a.pid);
  const runs = pm.runs(addr, addr + BigInt(len));
  const path = `${dir.path}/s.cryo`;
  const p = await MemoryPersister.create(path, {
    source: pidSource(a.pid),
    regions: [regionAt(addr, len)],
    fsync: false,
  });
  await p.storeRuns(runs, { start: addr, end: addr + BigInt(len) });
  const s = await p.finalize();
  assertEquals([s.dataRecords, s.dataBytes, s.holeRecords], [4096, 16 * MiB, 4096]);
  const allocated = (Deno.statSync(path).blocks ?? 0) * 512;
  assert(allocated <= 1.02 * s.dataBytes, `${allocated} bytes allocated for ${s.dataBytes} of data`);
  using img = await MemoryLoader.open(path);
  assertEquals(img.records.length, s.records);
  assert(img.frames.length <= 6, `${img.frames.length} frames for 4096 records`); // 4 full, 2 at batch ends
  await img.load(pidTarget(b.pid));
  assertEquals(await b.sum(addr, len), await a.sum(addr, len));
  const streamed = await verifyStream(await (await Deno.open(path)).readable);
  assertEquals([streamed.chunks, streamed.holeBytes], [4096, len - 16 * MiB]);
  // 64 batches of 256 KiB through the minimum of three buffers: each is reused only after its write.
  const small = await MemoryPersister.create(`${dir.path}/small.cryo`, {
    source: pidSource(a.pid, { bufferSize: 256 << 10 }),
    regions: [regionAt(addr, len)],
    writeBehind: 0,
    fsync: false,
  });
  await small.storeRuns(runs, { start: addr, end: addr + BigInt(len) });
  await small.finalize();
  using again = await MemoryLoader.open(`${dir.path}/small.cryo`);
  await again.verify();
  const view = (img: MemoryLoader) => img.records.map((r) => [r.address, r.length, r.kind, r.checksum]);
  assertEquals(view(again), view(img));
  assert(again.frames.length >= 64, `${again.frames.length} frames`);
});

Deno.test("`storeRuns()` of this process writes the same records and frames as `store()` and `storeGap()` per run", async () => {
  await using dir = await tempDir();
  using m = new Mapping(4 * MiB);
  const bytes = m.bytes();
  for (let page = 0; page < 1024; page++) {
    if ((page * 7919) % 5 < 2) bytes.fill((page % 251) + 1, page * PAGE_SIZE, page * PAGE_SIZE + 100);
  }
  bytes.fill(0, 9 * PAGE_SIZE, 10 * PAGE_SIZE); // touched, all zero
  using pm = Pagemap.open("self");
  const runs = pm.scan(m.addr, m.addr + BigInt(m.len));
  assert(runs.length > 100, `${runs.length} runs`);
  const write = async (name: string, store: (p: MemoryPersister) => Promise<void>) => {
    const p = await MemoryPersister.create(`${dir.path}/${name}`, {
      source: selfSource(),
      regions: [m.region],
      fsync: false,
    });
    await store(p);
    await p.finalize();
    return await MemoryLoader.open(`${dir.path}/${name}`);
  };
  using vectored = await write(
    "v.cryo",
    (p) => p.storeRuns(runs, { start: m.addr, end: m.addr + BigInt(m.len) }),
  );
  using single = await write("s.cryo", async (p) => {
    let at = m.addr;
    for (const r of runs) {
      if (r.start > at) await p.storeGap(at, r.start - at);
      await p.store(r.start, r.end - r.start);
      at = r.end;
    }
    if (at < m.addr + BigInt(m.len)) await p.storeGap(at, m.addr + BigInt(m.len) - at);
  });
  const view = (img: MemoryLoader) => img.records.map((r) => [r.address, r.length, r.kind, r.checksum]);
  assertEquals(view(vectored), view(single));
  assertEquals(vectored.frames.length, single.frames.length, "store() calls batch into frames too");
  await vectored.verify();
  await single.verify();
  const before = m.sum();
  m.bytes().fill(0x5a);
  await vectored.load(selfTarget());
  assertEquals(m.sum(), before);
});

Deno.test("`storeRuns()` refuses runs out of order, overlapping, empty or outside the range", async () => {
  await using dir = await tempDir();
  using m = new Mapping(1 * MiB);
  const p = await MemoryPersister.create(`${dir.path}/r.cryo`, { regions: [m.region], fsync: false });
  try {
    const at = (page: number) => m.addr + BigInt(page) * P;
    const bad: [bigint, bigint][][] = [
      [[at(4), at(5)], [at(2), at(3)]],
      [[at(2), at(5)], [at(4), at(6)]],
      [[at(3), at(3)]],
    ];
    for (const runs of bad) {
      await assertRejects(
        () => p.storeRuns(runs.map(([start, end]) => ({ start, end }))),
        RangeError,
        "Cannot store runs",
      );
    }
    await assertRejects(() => p.storeRuns([{ start: at(2), end: at(3) }], { start: at(3) }), RangeError);
    await assertRejects(() => p.storeRuns([{ start: at(2), end: at(3) }], { end: at(2) }), RangeError);
  } finally {
    await p.abort();
  }
});

Deno.test("`MemoryLoader.load()` lazily loads an image of 32,768 single-page runs (copied, not one mapping each)", async () => {
  await using dir = await tempDir();
  const pages = 65536;
  using m = new Mapping(pages * PAGE_SIZE);
  madvise(m.addr, BigInt(m.len), 15 /* MADV_NOHUGEPAGE: every other page present, not every 2 MiB */);
  const words = new BigUint64Array(m.bytes().buffer, m.bytes().byteOffset, m.len / 8);
  for (let page = 0; page < pages; page += 2) words[(page * PAGE_SIZE) / 8] = BigInt(page) * 2654435761n + 1n;
  using pm = Pagemap.open("self");
  const runs = pm.runs(m.addr, m.addr + BigInt(m.len));
  assertEquals(runs.length / 2, pages / 2);
  const want = m.sum(); // (reading maps the zero page over the untouched pages: after the scan)
  const path = `${dir.path}/l.cryo`;
  const p = await MemoryPersister.create(path, { regions: [m.region], fsync: false });
  await p.storeRuns(runs, { start: m.addr, end: m.addr + BigInt(m.len) });
  await p.finalize();
  releaseMemory(m.addr, m.len);
  assertEquals(presentBytes("self", m.addr, m.addr + BigInt(m.len)), 0);
  using img = await MemoryLoader.open(path);
  const maps = Deno.readTextFileSync("/proc/self/maps").split("\n").length;
  const s = await img.load(selfTarget({ lazy: true }));
  assertEquals([s.mappedBytes, s.copiedBytes], [0, (pages / 2) * PAGE_SIZE]);
  assert(Deno.readTextFileSync("/proc/self/maps").split("\n").length < maps + 1000, "no mapping per run");
  assertEquals(m.sum(), want);
});

Deno.test("`pidTarget()` zeroes a hole's touched pages and leaves its never-populated pages unpopulated", async () => {
  const len = 64 * MiB;
  const addr = fixedAddress() + (1n << 32n);
  await using t = Target.start();
  await using dir = await tempDir();
  await t.cmd(`mapat 0x${addr.toString(16)} ${len}`);
  await t.fill(addr, PAGE_SIZE, "random", 3);
  const first = await t.sum(addr, PAGE_SIZE);
  const path = `${dir.path}/h.cryo`;
  const p = await MemoryPersister.create(path, {
    source: pidSource(t.pid),
    regions: [regionAt(addr, len)],
    fsync: false,
  });
  using pm = Pagemap.open(t.pid);
  await p.storeRuns(pm.runs(addr, addr + BigInt(len)), { start: addr, end: addr + BigInt(len) });
  await p.finalize();
  const touched = [100, 101, 102, 103, 9000];
  for (const page of touched) await t.fill(addr + BigInt(page) * P, PAGE_SIZE, "random", page);
  using img = await MemoryLoader.open(path);
  const s = await img.load(pidTarget(t.pid));
  assertEquals(s.holeBytes, len - PAGE_SIZE);
  // Before anything reads the hole: only the touched pages (or, with transparent huge pages, their 2 MiB
  // blocks) are present; reading every byte of the hole would have mapped the zero page over all of it.
  const present = presentBytes(t.pid, addr + P, addr + BigInt(len));
  assert(present <= touched.length * 2 * MiB, `${present} bytes of the hole are present`);
  assertEquals(await t.sum(addr, PAGE_SIZE), first);
  const zeros = await t.map(len - PAGE_SIZE);
  assertEquals(await t.sum(addr + P, len - PAGE_SIZE), await t.sum(zeros, len - PAGE_SIZE));
});

Deno.test("`storeRuns({ within })` of an incremental image records holes only inside the ranges, and is refused for a full one", async () => {
  await using a = Target.start();
  await using dir = await tempDir();
  const len = 4 * MiB;
  const addr = await a.map(len);
  await a.fill(addr, len, "random", 3);
  await a.fill(addr + P, PAGE_SIZE, "zero"); // a zero page inside the first range: a hole
  // Two changed ranges of 4 pages; the runs inside them leave a page out of each.
  const within = BigUint64Array.of(addr, addr + 4n * P, addr + 100n * P, addr + 104n * P);
  const runs = BigUint64Array.of(addr, addr + 3n * P, addr + 101n * P, addr + 104n * P);
  const opts = { source: pidSource(a.pid), regions: [regionAt(addr, len)], fsync: false };
  const full = await MemoryPersister.create(`${dir.path}/full.cryo`, opts);
  await assertRejects(() => full.storeRuns(runs, { start: addr, end: addr + 104n * P, within }), TypeError);
  await full.abort();
  const p = await MemoryPersister.create(`${dir.path}/inc.cryo`, { ...opts, incremental: true });
  await p.storeRuns(runs, { start: addr, end: addr + 104n * P, within });
  await p.finalize();
  using l = await MemoryLoader.open(`${dir.path}/inc.cryo`);
  const seen = l.records.map((r) =>
    `${(r.address - addr) / P}+${r.length / PAGE_SIZE} ${r.kind ? "hole" : "data"}`
  );
  // Page 1 (zero) and page 3 (not a run) are holes, page 100 too; pages 4-99 are the parent's: no record.
  assertEquals(seen, ["0+1 data", "1+1 hole", "2+1 data", "3+1 hole", "100+1 hole", "101+3 data"]);
});
