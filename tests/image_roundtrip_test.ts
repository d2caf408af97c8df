import { assert, assertEquals } from "./_assert.ts";
import { fillRandom, Mapping, PAGE_SIZE, rssAnon, rssOf, tempDir } from "./_image.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { selfTarget } from "../lib/image/targets.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import { KIND } from "../lib/image/format.ts";
import { munmap } from "../ffi/libc.ts";
import { parseCodec } from "../lib/codecs/select.ts";

const MiB = 1 << 20;

Deno.test("MemoryPersister.store() round-trips 256 MiB of data, zero and unpopulated pages byte-exact", async () => {
  await using dir = await tempDir();
  using m = new Mapping(256 * MiB);
  // 48 MiB of data in 3 runs, 8 MiB of pages written with zeros, the rest never touched.
  fillRandom(m.bytes(0, 16 * MiB), 1);
  fillRandom(m.bytes(40 * MiB, 16 * MiB), 2);
  m.bytes(80 * MiB, 8 * MiB).fill(0);
  fillRandom(m.bytes(100 * MiB, 16 * MiB), 3);
  m.bytes(200 * MiB + 5, 1)[0] = 7; // one lonely page
  const before = m.sum();
  const path = `${dir.path}/a.img`;
  const p = await MemoryPersister.create(path, { regions: [m.region] });
  await p.store(m.addr, m.len);
  const summary = await p.finalize();
  assertEquals(summary.dataBytes, 48 * MiB + PAGE_SIZE);
  assertEquals(summary.dataRecords, 4);
  assertEquals(summary.holeBytes, 256 * MiB - summary.dataBytes);
  assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);

  m.bytes(0, 256 * MiB).fill(0xaa, 0, 1024);
  releaseMemory(m.addr, m.len);
  using img = await MemoryLoader.open(path);
  const result = await img.load(selfTarget());
  assertEquals(result.copiedBytes, summary.dataBytes);
  assertEquals(m.sum(), before);
  assert(img.records.some((r) => r.kind === KIND.HOLE));
});

Deno.test("MemoryLoader.load() maps a free region at its original address and restores it", async () => {
  await using dir = await tempDir();
  const m = new Mapping(8 * MiB);
  fillRandom(m.bytes(MiB, 2 * MiB), 9);
  const before = m.sum();
  const path = `${dir.path}/b.img`;
  const p = await MemoryPersister.create(path, { regions: [m.region] });
  await p.store(m.addr, m.len);
  await p.finalize();
  // Opened before the unmap: an await between the unmap and the load lets this process's own allocations
  // (V8's heap, a file's buffers) take the freed range, which the kernel hands out first.
  using img = await MemoryLoader.open(path);
  m.unmap();
  const r = await img.load(selfTarget());
  assertEquals(r.mappedRegions, 1);
  try {
    assertEquals(m.sum(), before);
  } finally {
    munmap(m.addr, BigInt(m.len));
  }
});

Deno.test("releaseMemory() after a persist drops RSS and load() brings the bytes back", async () => {
  await using dir = await tempDir();
  using m = new Mapping(64 * MiB);
  fillRandom(m.bytes(), 5);
  const before = m.sum();
  const path = `${dir.path}/c.img`;
  await using p = await MemoryPersister.create(path, { regions: [m.region] });
  await p.store(m.addr, m.len);
  await p.finalize();
  const rss0 = rssOf(m.addr, m.len);
  const total0 = rssAnon();
  releaseMemory(m.addr, m.len);
  const rss1 = rssOf(m.addr, m.len);
  assertEquals([rss0, rss1], [64 * MiB, 0], "the mapping's resident bytes before and after the release");
  // The process's own total (smaps_rollup) drops too, give or take what other tests in this process allocate.
  assert(total0 - rssAnon() >= 32 * MiB, `process RSS dropped by ${total0 - rssAnon()} bytes only`);
  using img = await MemoryLoader.open(path);
  await img.load(selfTarget());
  assertEquals(rssOf(m.addr, m.len), 64 * MiB);
  assertEquals(m.sum(), before);
});

Deno.test("MemoryPersister with a zstd codec stores compressible chunks encoded and loads them back byte-exact", async () => {
  await using dir = await tempDir();
  using m = new Mapping(8 * MiB);
  const text = new TextEncoder().encode("the memory of a process is persisted page by page; ");
  const b = m.bytes(0, 4 * MiB);
  for (let i = 0; i < b.length; i++) b[i] = text[i % text.length];
  fillRandom(m.bytes(4 * MiB, MiB), 8); // incompressible: stays raw
  const before = m.sum();
  const path = `${dir.path}/z.img`;
  const codec = parseCodec("zstd:3");
  const p = await MemoryPersister.create(path, { regions: [m.region], codec, chunkSize: MiB });
  await p.store(m.addr, m.len);
  const s = await p.finalize();
  assert(s.storedBytes < 2 * MiB, `${s.storedBytes} bytes stored`);
  m.bytes().fill(0x33);
  using img = await MemoryLoader.open(path);
  assertEquals(img.records.filter((r) => r.codec === 1).length, 4);
  assertEquals(img.records.filter((r) => r.kind === KIND.DATA && r.codec === 0).length, 1);
  await img.load(selfTarget());
  assertEquals(m.sum(), before);
});
