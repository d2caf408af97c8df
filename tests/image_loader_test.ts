import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { fillRandom, Mapping, PAGE_SIZE, regionAt, tempDir } from "./_image.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { selfTarget } from "../lib/image/targets.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import { KIND } from "../lib/image/format.ts";
import { ImageError, LayoutMismatchError } from "../lib/errors.ts";
import { mprotect } from "../ffi/libc.ts";
import { PROT } from "../ffi/constants.ts";

const MiB = 1 << 20;

async function persist(path: string, m: Mapping, regions = [m.region]): Promise<void> {
  const p = await MemoryPersister.create(path, { regions });
  await p.store(m.addr, m.len);
  await p.finalize();
}

Deno.test("MemoryLoader.load() into a mismatched destination lists the differences and writes nothing", async () => {
  await using dir = await tempDir();
  using m = new Mapping(8 * MiB);
  fillRandom(m.bytes(), 1);
  const path = `${dir.path}/m.img`;
  // The image also needs a region that is not mapped in this process (far below where mmap places things).
  const missing = regionAt(0x5a5a00000000n, MiB);
  const p = await MemoryPersister.create(path, { regions: [m.region, missing] });
  await p.store(m.addr, m.len);
  await p.finalize();
  fillRandom(m.bytes(), 2);
  const before = m.sum();
  mprotect(m.addr + BigInt(4 * MiB), BigInt(MiB), PROT.READ);
  try {
    using img = await MemoryLoader.open(path);
    const e = await assertRejects(() => img.load(selfTarget({ map: false })), LayoutMismatchError);
    assertEquals(e.differences.length, 2, e.message);
    assert(e.differences.some((d) => d.includes("r--p")), e.message);
    assert(e.differences.some((d) => d.includes("missing in target")), e.message);
  } finally {
    mprotect(m.addr + BigInt(4 * MiB), BigInt(MiB), PROT.READ | PROT.WRITE);
  }
  assertEquals(m.sum(), before);
});

Deno.test("MemoryLoader.load() with a lazy target maps raw runs straight from the image", async () => {
  await using dir = await tempDir();
  using m = new Mapping(16 * MiB);
  fillRandom(m.bytes(0, 6 * MiB), 3);
  fillRandom(m.bytes(10 * MiB, MiB), 4);
  const before = m.sum();
  const path = `${dir.path}/lazy.img`;
  await persist(path, m);
  releaseMemory(m.addr, m.len);
  using img = await MemoryLoader.open(path);
  await img.verify();
  const r = await img.load(selfTarget({ lazy: true }));
  assertEquals(r.mappedBytes, 7 * MiB);
  assertEquals(r.copiedBytes, 0);
  const maps = await Deno.readTextFile("/proc/self/maps");
  const start = m.addr.toString(16);
  assert(
    maps.split("\n").some((l) => l.startsWith(start) && l.endsWith("lazy.img")),
    "not mapped from the image",
  );
  assertEquals(m.sum(), before);
  // Copy-on-write: writing the memory does not change the image.
  m.bytes(0, 16).fill(1);
  using again = await MemoryLoader.open(path);
  await again.verify();
});

Deno.test("MemoryPersister.store() keeps a mostly empty mapping sparse on disk", async () => {
  await using dir = await tempDir();
  using m = new Mapping(256 * MiB);
  const runs = 10;
  for (let i = 0; i < runs; i++) fillRandom(m.bytes(i * 25 * MiB, 64 * 1024), i + 1);
  const path = `${dir.path}/sparse.img`;
  const p = await MemoryPersister.create(path, { regions: [m.region] });
  await p.store(m.addr, m.len);
  const s = await p.finalize();
  assertEquals(s.dataBytes, runs * 64 * 1024);
  const st = await Deno.stat(path);
  const allocated = st.blocks! * 512;
  using img = await MemoryLoader.open(path);
  const index = img.footer.indexLength + img.footer.sectionsLength + 128;
  // data + one page per run (its frame header; the first shares the header page) + the index (with its END frame)
  const bound = s.dataBytes + runs * PAGE_SIZE + PAGE_SIZE + Math.ceil(index / PAGE_SIZE) * PAGE_SIZE;
  assert(allocated <= bound, `${allocated} bytes allocated, bound ${bound}`);
  assertEquals(img.records.filter((r) => r.kind === KIND.HOLE).length, runs);
});

Deno.test("MemoryLoader exposes header, source, records, sections and a record's decoded bytes", async () => {
  await using dir = await tempDir();
  using m = new Mapping(4 * PAGE_SIZE);
  fillRandom(m.bytes(PAGE_SIZE, PAGE_SIZE), 7);
  const path = `${dir.path}/x.img`;
  const p = await MemoryPersister.create(path, { regions: [m.region] });
  await p.store(m.addr, m.len);
  p.addSection("threads", new Uint8Array([1, 2, 3]));
  await p.finalize();
  using img = await MemoryLoader.open(path);
  assertEquals(img.header.pageSize, PAGE_SIZE);
  assertEquals(img.source.pid, Deno.pid);
  assert(img.source.bootId.length > 0 && img.source.kernelRelease.length > 0);
  assertEquals(img.records.map((r) => r.kind), [KIND.HOLE, KIND.DATA, KIND.HOLE]);
  const r = img.findRecord(m.addr + BigInt(PAGE_SIZE + 5))!;
  assertEquals(await img.readRecord(r), m.bytes(PAGE_SIZE, PAGE_SIZE));
  assertEquals(img.section("threads"), new Uint8Array([1, 2, 3]));
  assertEquals(img.section("nope"), undefined);
});

Deno.test("MemoryPersister.store() refuses out-of-order, overlapping and out-of-region runs; abort() leaves no file", async () => {
  await using dir = await tempDir();
  using m = new Mapping(4 * PAGE_SIZE);
  const path = `${dir.path}/o.img`;
  await using p = await MemoryPersister.create(path, { regions: [m.region], fsync: false });
  await p.store(m.addr + BigInt(2 * PAGE_SIZE), PAGE_SIZE);
  await assertRejects(() => p.store(m.addr, PAGE_SIZE), RangeError, "out of order");
  await assertRejects(() => p.storeGap(m.addr + BigInt(2 * PAGE_SIZE), PAGE_SIZE), RangeError, "overlapping");
  await assertRejects(() => p.store(m.addr + BigInt(3 * PAGE_SIZE), 2 * PAGE_SIZE), RangeError, "regions");
  assertThrows(() => p.addSection("", new Uint8Array()), RangeError);
  assertEquals([...Deno.readDirSync(dir.path)].length, 0, "an unnamed file while writing");
  await p.abort();
  assertEquals([...Deno.readDirSync(dir.path)].length, 0);
});

Deno.test("MemoryPersister killed mid-write (SIGKILL on a child) leaves no file, final or temporary", async () => {
  await using dir = await tempDir();
  const script = `${dir.path}/writer.ts`;
  const mod = (f: string) => JSON.stringify(new URL(`../lib/image/${f}`, import.meta.url).href);
  await Deno.writeTextFile(
    script,
    `import { MemoryPersister } from ${mod("persister.ts")};
     import { segmentSource } from ${mod("sources.ts")};
     const buf = new Uint8Array(64 << 20).fill(1);
     const seg = segmentSource("big", buf);
     const p = await MemoryPersister.create(Deno.args[0], { segments: [seg] });
     for (let off = 0; ; off = (off + (1 << 20)) % buf.length) {
       await p.store(BigInt(off), 1 << 20, seg).catch(() => {});
       if (off === 8 << 20) console.log("writing");
       await new Promise((r) => setTimeout(r, 1));
     }`,
  );
  const final = `${dir.path}/killed.img`;
  const child = new Deno.Command(Deno.execPath(), { args: ["run", "-A", script, final], stdout: "piped" })
    .spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const deadline = setTimeout(() => child.kill("SIGKILL"), 30_000);
    const first = await reader.read();
    clearTimeout(deadline);
    assertEquals(first.value?.trim(), "writing");
    child.kill("SIGKILL");
    await reader.cancel();
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* already dead */ }
    await child.status;
  }
  // The image was written into an unnamed file (O_TMPFILE): nothing at all is left, not even a temporary name.
  const names = [...Deno.readDirSync(dir.path)].map((e) => e.name);
  assertEquals(names, ["writer.ts"]);
});

Deno.test("MemoryLoader.open() reuses an unchanged file's index, and reads it again once the file changed in place", async () => {
  await using dir = await tempDir();
  using m = new Mapping(2 * MiB);
  fillRandom(m.bytes(), 3);
  const path = `${dir.path}/i.img`;
  await persist(path, m);
  let records: readonly unknown[], frames: readonly unknown[];
  {
    using a = await MemoryLoader.open(path);
    using b = await MemoryLoader.open(path);
    assert(a.frames === b.frames, "the second open reuses the index read by the first");
    records = a.records;
    frames = a.frames;
  }
  // One byte of the header block flipped in place (same inode, same size): the index is read again, and refused.
  using f = await Deno.open(path, { read: true, write: true });
  const at = 100, byte = new Uint8Array(1);
  await f.seek(at, Deno.SeekMode.Start);
  await f.read(byte);
  byte[0] ^= 0xff;
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(byte);
  const e = await assertRejects(() => MemoryLoader.open(path), ImageError);
  assert(e.message.includes(path), e.message);
  byte[0] ^= 0xff; // put back: read again, a new index equal to the first
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(byte);
  using c = await MemoryLoader.open(path);
  assert(c.frames !== frames);
  assertEquals(c.records, records);
});
