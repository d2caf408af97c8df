import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { Target } from "./_target.ts";
import { addrOf, mmap, munmap } from "../ffi/libc.ts";
import { MAP, PROT } from "../ffi/constants.ts";
import { CryoError } from "../lib/errors.ts";
import { type Codec, INLINE_BYTES, raw } from "../lib/codecs/codec.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { Lz4Codec } from "../lib/codecs/lz4.ts";
import { encodeOrdered, forEachOrdered, ordered } from "../lib/codecs/pool.ts";
import { codecForId, parseCodec } from "../lib/codecs/select.ts";
import { processVmRead } from "../ffi/libc.ts";

const MiB = 1 << 20;

/** Memory of a child: `kinds` filled one MiB each, read back with process_vm_readv. */
async function childMemory(kinds: string[]): Promise<Uint8Array> {
  await using target = Target.start();
  const len = kinds.length * MiB;
  const addr = await target.map(len);
  for (let i = 0; i < kinds.length; i++) await target.fill(addr + BigInt(i * MiB), MiB, kinds[i], i + 1);
  const local = new Uint8Array(len);
  processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(local)), addr, BigInt(len));
  return local;
}

function chunks(mem: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < mem.length; off += size) {
    out.push(mem.subarray(off, Math.min(off + size, mem.length)));
  }
  return out;
}

async function roundTrip(codec: Codec, mem: Uint8Array, chunkSize: number): Promise<number> {
  let stored = 0;
  const out = new Uint8Array(mem.length);
  let off = 0;
  for await (const c of encodeOrdered(codec, chunks(mem, chunkSize), (b) => b)) {
    const dst = out.subarray(off, off + c.raw.length);
    if (c.encoded === null) {
      dst.set(c.raw);
      stored += c.raw.length;
    } else {
      assert(c.encoded.length < c.raw.length);
      await codec.decode(c.encoded, dst);
      stored += c.encoded.length;
    }
    off += c.raw.length;
  }
  assertEquals(off, mem.length);
  assert(out.every((b, i) => b === mem[i]), "round trip differs");
  return mem.length / stored;
}

Deno.test("`ZstdCodec.encode()` round-trips a child's text memory byte-exact at levels 1, 3 and 19", async () => {
  const mem = await childMemory(["text", "text", "text", "text"]);
  for (const level of [1, 3, 19]) {
    using codec = new ZstdCodec(level);
    // Level 19 is slow by design: one MiB of the four says as much about it.
    const ratio = await roundTrip(codec, level === 19 ? mem.subarray(0, MiB) : mem, MiB);
    assert(ratio > 3, `zstd:${level} ratio ${ratio} on text`);
  }
});

Deno.test("`Lz4Codec.encode()` round-trips a child's text memory byte-exact at levels 1, -8 and 9", async () => {
  const mem = await childMemory(["text", "text", "text"]);
  for (const level of [1, -8, 9]) {
    const ratio = await roundTrip(new Lz4Codec(level), mem, 256 * 1024);
    assert(ratio > 1.5, `lz4:${level} ratio ${ratio} on text`);
  }
});

Deno.test("`encode()` decides per chunk: random chunks are stored raw, the others compressed, in order", async () => {
  const kinds = ["text", "random", "byte:7", "random", "stride:3", "text"];
  const mem = await childMemory(kinds);
  for (const codec of [new ZstdCodec(1), new Lz4Codec()]) {
    const got: (string | null)[] = [];
    let i = 0;
    for await (const c of encodeOrdered(codec, chunks(mem, MiB), (b) => b, 3)) {
      assertEquals(c.raw, mem.subarray(i * MiB, (i + 1) * MiB));
      got.push(c.encoded === null ? "raw" : null);
      i++;
    }
    assertEquals(got, [null, "raw", null, "raw", null, null], codec.name);
    assertEquals(await roundTrip(codec, mem, MiB) > 1, true);
  }
});

Deno.test("`decode()` writes straight into mapped memory", async () => {
  const mem = await childMemory(["text", "text"]);
  const len = 2 * MiB;
  const addr = mmap(0n, BigInt(len), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const dst = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(addr)!, len));
    for (const codec of [new ZstdCodec(3), new Lz4Codec()]) {
      dst.fill(0xaa);
      const enc = await codec.encode(mem);
      assert(enc !== null);
      await codec.decode(enc, dst);
      assert(dst.every((b, i) => b === mem[i]), `${codec.name} decode into mapped memory differs`);
    }
  } finally {
    munmap(addr, BigInt(len));
  }
});

Deno.test("`decode()` refuses a corrupt chunk or one of another size with CryoError", async () => {
  const mem = await childMemory(["text"]);
  for (const codec of [new ZstdCodec(1), new Lz4Codec()]) {
    const enc = (await codec.encode(mem))!;
    await assertRejects(
      () => Promise.resolve(codec.decode(enc, new Uint8Array(MiB - 1))),
      CryoError,
      "Cannot decode",
    );
    await assertRejects(
      () => Promise.resolve(codec.decode(enc, new Uint8Array(MiB + 1))),
      CryoError,
      "Cannot decode",
    );
    const bad = enc.slice(0, enc.length >> 1);
    await assertRejects(
      () => Promise.resolve(codec.decode(bad, new Uint8Array(MiB))),
      CryoError,
      "Cannot decode",
    );
  }
  assertThrows(() => raw.decode(new Uint8Array(3), new Uint8Array(4)), RangeError);
});

Deno.test("`decodeNow()` decodes a chunk under 64 KiB on the calling thread and declines a larger one", async () => {
  const mem = await childMemory(["text"]);
  for (const codec of [new ZstdCodec(1), new Lz4Codec()]) {
    const small = mem.subarray(0, INLINE_BYTES - 1);
    const enc = (await codec.encode(small))!;
    const dst = new Uint8Array(small.length);
    assert(codec.decodeNow(enc, dst), `${codec.name} declined a small chunk`);
    assert(dst.every((b, i) => b === small[i]), `${codec.name} decodeNow differs`);
    assertThrows(() => codec.decodeNow(enc, new Uint8Array(small.length - 1)), CryoError, "Cannot decode");
    const big = (await codec.encode(mem))!;
    const out = new Uint8Array(MiB);
    assertEquals(codec.decodeNow(big, out), false);
    assert(out.every((b) => b === 0), "nothing written when declined");
  }
});

Deno.test("`forEachOrdered()` does small items at once when no large one is in flight and uses every result in input order", async () => {
  let inFlight = 0, most = 0, now = 0;
  const used: number[] = [];
  await forEachOrdered(Array.from({ length: 60 }, (_, i) => i), {
    small: (n) => n % 10 !== 0, // every tenth is large
    now: (n) => {
      if (n === 4) return false; // a small one the worker must do after all
      now++;
      used.push(n);
      return true;
    },
    work: async (n) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, (n * 7) % 5));
      inFlight--;
      return n;
    },
    use: (n, result) => {
      assertEquals(result, n);
      used.push(n);
    },
  }, 4);
  assertEquals(used, Array.from({ length: 60 }, (_, i) => i));
  assert(now > 0 && now < 53, `${now} done at once`); // some small ones waited in line behind large ones
  assert(most <= 4, `${most} in flight`);
});

Deno.test("`ordered()` yields results in input order with at most `window` in flight", async () => {
  let inFlight = 0, most = 0;
  const work = async (n: number) => {
    inFlight++;
    most = Math.max(most, inFlight);
    await new Promise((r) => setTimeout(r, (n * 7) % 5));
    inFlight--;
    return n * n;
  };
  const out: number[] = [];
  for await (const v of ordered(Array.from({ length: 40 }, (_, i) => i), work, 4)) out.push(v);
  assertEquals(out, Array.from({ length: 40 }, (_, i) => i * i));
  assertEquals(most, 4);
  await assertRejects(() => ordered([1], work, 0).next(), RangeError);
});

Deno.test("`ordered()` rethrows a failure in order and only after all work in flight has settled", async () => {
  let settled = 0, started = 0;
  const work = async (n: number) => {
    started++;
    await new Promise((r) => setTimeout(r, n === 2 ? 0 : 20));
    settled++;
    if (n === 2) throw new Error("boom");
    return n;
  };
  const out: number[] = [];
  const e = await assertRejects(async () => {
    for await (const v of ordered([0, 1, 2, 3, 4, 5], work, 4)) out.push(v);
  }, Error);
  assertEquals(e.message, "boom");
  assertEquals(out, [0, 1]);
  assertEquals(started, 6); // 0..1 consumed, then 2..5 in flight
  assertEquals(settled, started); // nothing abandoned
});

Deno.test("`parseCodec()` reads --compress values and `codecForId()` maps image ids", () => {
  const z = parseCodec("zstd:7") as ZstdCodec;
  assertEquals([z.id, z.name, z.level, z.spec], [1, "zstd", 7, "zstd:7"]);
  assertEquals((parseCodec("zstd") as ZstdCodec).level, 3);
  assertEquals((parseCodec("lz4") as Lz4Codec).spec, "lz4");
  assertEquals(parseCodec("lz4:9").id, 2);
  assertEquals(parseCodec("raw"), raw);
  assertThrows(() => parseCodec("gzip"), TypeError);
  assertThrows(() => parseCodec("zstd:x"), TypeError);
  assertThrows(() => parseCodec("zstd:99"), RangeError);
  assertThrows(() => parseCodec("lz4:13"), RangeError);
  assertEquals([codecForId(0)?.name, codecForId(1)?.name, codecForId(2)?.name, codecForId(3)], [
    "raw",
    "zstd",
    "lz4",
    undefined,
  ]);
});

Deno.test("`ZstdCodec.close()` is idempotent and refuses later work", async () => {
  const codec = new ZstdCodec(1);
  const mem = await childMemory(["text"]);
  const enc = (await codec.encode(mem))!;
  codec.close();
  codec.close();
  await assertRejects(() => codec.encode(mem), CryoError, "closed");
  await assertRejects(() => codec.decode(enc, new Uint8Array(MiB)), CryoError, "closed");
});

Deno.test("a compressed checkpoint of memory that does not compress keeps its raw image; one that does is transcoded", async () => {
  const { checkpoint, restore } = await import("../mod.ts");
  const { MemoryLoader } = await import("../lib/image/loader.ts");
  const { REQUIRED } = await import("../lib/image/format.ts");
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const MiB = 1 << 20;
    const a = await target.map(16 * MiB);
    for (const [kind, compressed] of [["random", false], ["text", true]] as const) {
      await target.fill(a, 16 * MiB, kind, 1);
      const want = await target.sum(a, 16 * MiB);
      const codec = parseCodec("zstd:1");
      await checkpoint(target.pid, `${dir}/raw.cryo`, { fsync: false });
      const r = await checkpoint(target.pid, `${dir}/z.cryo`, { codec });
      assertEquals(
        r.storedRaw ?? false,
        !compressed,
        `${kind}: the result says whether the raw image was kept`,
      );
      {
        using l = await MemoryLoader.open(`${dir}/z.cryo`, { codecs: [codec] });
        await l.verify();
        assertEquals((l.header.requiredFeatures & REQUIRED.CODEC) !== 0n, compressed, kind);
        const rawSize = (await Deno.stat(`${dir}/raw.cryo`)).size;
        if (compressed) assert(l.fileSize < rawSize / 2, `${kind}: ${l.fileSize} of ${rawSize} bytes`);
        else assertEquals(l.fileSize, r.imageBytes, kind);
      }
      await target.fill(a, 16 * MiB, "random", 9);
      await restore(target.pid, `${dir}/z.cryo`, { codecs: [codec] });
      assertEquals(await target.sum(a, 16 * MiB), want, kind);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
