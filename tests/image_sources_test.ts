import fc from "fast-check";
import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { fillRandom, Mapping, PAGE_SIZE, regionAt, tempDir } from "./_image.ts";
import { Target } from "./_target.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { pidSource, segmentSource } from "../lib/image/sources.ts";
import { pidTarget, segmentTarget, selfTarget } from "../lib/image/targets.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import { KIND } from "../lib/image/format.ts";
import { O } from "../ffi/constants.ts";
import { close, open } from "../ffi/libc.ts";

const MiB = 1 << 20;

Deno.test("segmentSource() round-trips a SharedArrayBuffer into another buffer byte-exact", async () => {
  await using dir = await tempDir();
  const sab = new SharedArrayBuffer(3 * MiB + 123);
  const b = new Uint8Array(sab);
  fillRandom(b.subarray(0, MiB), 11);
  fillRandom(b.subarray(2 * MiB), 12);
  const seg = segmentSource("state", sab, { detectZeros: true });
  const path = `${dir.path}/seg.img`;
  const p = await MemoryPersister.create(path, { segments: [seg] });
  await p.store(0n, b.length, seg);
  const s = await p.finalize();
  assertEquals(s.holeBytes, MiB);
  const into = new SharedArrayBuffer(b.length);
  new Uint8Array(into).fill(0x55);
  using img = await MemoryLoader.open(path);
  assertEquals(img.regions[0].relocatable, true);
  assertEquals(img.regions[0].path, "state");
  await img.load(segmentTarget({ state: into }));
  assertEquals(new Uint8Array(into), b);
  const e = await assertRejects(() => img.load(segmentTarget({ state: new ArrayBuffer(10) })), Error);
  assert(e.message.includes("state"));
});

Deno.test("pidSource() and pidTarget() round-trip a child process's region byte-exact", async () => {
  await using dir = await tempDir();
  await using t = Target.start();
  const len = 32 * MiB;
  const addr = await t.map(len);
  await t.fill(addr, len, "stride:3", 5); // every 3rd page random, the others never touched
  await t.fill(addr + BigInt(16 * MiB), 4 * MiB, "text", 6);
  const before = await t.sum(addr, len);
  const path = `${dir.path}/child.img`;
  const p = await MemoryPersister.create(path, {
    source: pidSource(t.pid, { bufferSize: 4 * MiB }),
    regions: [regionAt(addr, len)],
  });
  await p.store(addr, len);
  const s = await p.finalize();
  assert(s.holeRecords > 100 && s.dataBytes < len, `${s.dataBytes} data bytes`);
  await t.fill(addr, len, "byte:7", 1);
  assert(await t.sum(addr, len) !== before);
  using img = await MemoryLoader.open(path);
  await img.load(pidTarget(t.pid));
  assertEquals(await t.sum(addr, len), before);
});

Deno.test("pidTarget() writes read-only pages through /proc/<pid>/mem", async () => {
  await using dir = await tempDir();
  await using t = Target.start();
  const len = 4 * PAGE_SIZE;
  const addr = await t.map(len);
  await t.fill(addr, len, "random", 8);
  const before = await t.sum(addr, len);
  await t.cmd(`protect 0x${addr.toString(16)} ${len} r`);
  const path = `${dir.path}/ro.img`;
  const p = await MemoryPersister.create(path, {
    source: pidSource(t.pid),
    regions: [regionAt(addr, len, "r--p")],
  });
  await p.store(addr, len);
  await p.finalize();
  await t.cmd(`protect 0x${addr.toString(16)} ${len} rw`);
  await t.fill(addr, len, "zero", 1);
  await t.cmd(`protect 0x${addr.toString(16)} ${len} r`);
  using img = await MemoryLoader.open(path);
  await img.load(pidTarget(t.pid));
  assertEquals(await t.sum(addr, len), before);
});

Deno.test("MemoryPersister.create() writes a verifiable image to a pipe (zero padding instead of seeks)", async () => {
  await using dir = await tempDir();
  using m = new Mapping(4 * MiB);
  fillRandom(m.bytes(0, MiB), 1);
  fillRandom(m.bytes(3 * MiB, 5000), 2);
  const fifo = `${dir.path}/fifo`;
  const out = `${dir.path}/piped.img`;
  await new Deno.Command("mkfifo", { args: [fifo] }).output();
  const cat = new Deno.Command("sh", { args: ["-c", `cat "${fifo}" > "${out}"`] }).spawn();
  try {
    const fd = open(fifo, O.WRONLY | O.CLOEXEC);
    try {
      const p = await MemoryPersister.create({ fd }, { regions: [m.region] });
      await p.store(m.addr, m.len);
      await p.finalize();
    } finally {
      close(fd);
    }
    assert((await cat.status).success);
  } finally {
    try {
      cat.kill("SIGKILL");
    } catch { /* exited */ }
  }
  const before = m.sum();
  using img = await MemoryLoader.open(out);
  await img.verify();
  releaseMemory(m.addr, m.len);
  await img.load(selfTarget());
  assertEquals(m.sum(), before);
});

Deno.test("MemoryPersister.store() round-trips random layouts of data, zero and untouched pages", async () => {
  await using dir = await tempDir();
  const pages = 48;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.constantFrom(0, 1, 2), { minLength: pages, maxLength: pages }),
      fc.boolean(),
      async (kinds, detectZeros) => {
        using m = new Mapping(pages * PAGE_SIZE);
        kinds.forEach((k, i) => {
          if (k === 1) m.bytes(i * PAGE_SIZE, PAGE_SIZE).fill(0);
          if (k === 2) fillRandom(m.bytes(i * PAGE_SIZE, PAGE_SIZE), i + 1);
        });
        const before = m.sum();
        const path = `${dir.path}/r.img`;
        const p = await MemoryPersister.create(path, { regions: [m.region], detectZeros, fsync: false });
        // Split the mapping into a few store() calls and gaps (gaps only over untouched pages).
        let i = 0;
        while (i < pages) {
          let j = i + 1;
          while (j < pages && (kinds[j] === 0) === (kinds[i] === 0)) j++;
          const a = m.addr + BigInt(i * PAGE_SIZE);
          if (kinds[i] === 0 && i % 2 === 0) await p.storeGap(a, (j - i) * PAGE_SIZE);
          else await p.store(a, (j - i) * PAGE_SIZE);
          i = j;
        }
        await p.finalize();
        m.bytes().fill(0xee);
        using img = await MemoryLoader.open(path);
        await img.load(selfTarget());
        assertEquals(m.sum(), before);
        const data = kinds.filter((k) => k === 2).length * PAGE_SIZE;
        const stored = img.records.filter((r) => r.kind === KIND.DATA).reduce((s, r) => s + r.length, 0);
        if (detectZeros) assertEquals(stored, data);
      },
    ),
    { numRuns: 25 },
  );
});
