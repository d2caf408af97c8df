import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { regionAt, rewriteFrame } from "./_image.ts";
import { ImageError, KeyError, LayoutMismatchError } from "../lib/errors.ts";
import { MemoryPersister, type PersisterOptions } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { pidSource } from "../lib/image/sources.ts";
import { RemoteWriter } from "../lib/image/remote.ts";
import { pidTarget } from "../lib/image/targets.ts";
import { loadStream, loadVerified, verifyStream } from "../lib/image/stream.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { Lz4Codec } from "../lib/codecs/lz4.ts";
import { NONCE_SIZE, Sealer } from "../lib/codecs/seal.ts";
import { keyFromEnv, SealKey } from "../lib/codecs/keys.ts";
import { type ImageRecord, KIND } from "../lib/image/format.ts";

const MiB = 1 << 20;
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** A fixed address both children can map (far from where the kernel puts libraries and the heap). */
function fixedAddress(): bigint {
  return 0x5e0000000000n + (BigInt(Deno.pid % 4096) << 24n);
}

/** Two children with the same region at the same address; `a` filled with text, a zero MiB and random. */
async function pair(
  len: number,
): Promise<{ a: Target; b: Target; addr: bigint; close: () => Promise<void> }> {
  const a = Target.start(), b = Target.start();
  const addr = fixedAddress();
  await a.cmd(`mapat 0x${addr.toString(16)} ${len}`);
  await b.cmd(`mapat 0x${addr.toString(16)} ${len}`);
  await a.fill(addr, len, "text", 3);
  await a.fill(addr + BigInt(MiB), MiB, "zero");
  await a.fill(addr + BigInt(len - MiB), MiB, "random", 4);
  await b.fill(addr, len, "byte:85");
  return { a, b, addr, close: async () => void await Promise.all([a.close(), b.close()]) };
}

async function checkpointTo(path: string, pid: number, addr: bigint, len: number, opts: PersisterOptions) {
  const p = await MemoryPersister.create(path, {
    source: pidSource(pid, { bufferSize: 4 * MiB }),
    regions: [regionAt(addr, len)],
    fsync: false,
    ...opts,
  });
  await p.store(addr, len);
  return await p.finalize();
}

async function fileStream(path: string): Promise<ReadableStream<Uint8Array>> {
  return (await Deno.open(path)).readable;
}

function bytesStream(b: Uint8Array, piece = 70_000): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= b.length) return c.close();
      c.enqueue(b.slice(at, at + piece));
      at += piece;
    },
  });
}

async function newKey(): Promise<SealKey> {
  return await SealKey.fromBytes(crypto.getRandomValues(new Uint8Array(32)));
}

Deno.test("`loadStream()` round-trips zstd, lz4, encrypted and encrypted zstd images of a child byte-exact", async () => {
  const len = 6 * MiB;
  const { a, b, addr, close } = await pair(len);
  const dir = await Deno.makeTempDir();
  try {
    const want = await a.sum(addr, len);
    const key = await newKey();
    const configs: [string, () => Promise<PersisterOptions>][] = [
      ["zstd", () => Promise.resolve({ codec: new ZstdCodec(3) })],
      ["lz4", () => Promise.resolve({ codec: new Lz4Codec() })],
      ["encrypted", async () => ({ sealer: await Sealer.create(key) })],
      ["encrypted zstd", async () => ({ codec: new ZstdCodec(1), sealer: await Sealer.create(key) })],
    ];
    for (const [name, opts] of configs) {
      const path = `${dir}/${name.replace(" ", "-")}.cryo`;
      const s = await checkpointTo(path, a.pid, addr, len, await opts());
      assert(s.holeRecords >= 1, `${name}: the zero MiB is a hole`);
      if (name !== "encrypted") assert(s.storedBytes < s.dataBytes * 0.7, `${name}: ${s.storedBytes} stored`);
      await b.fill(addr, len, "byte:85");
      const sealed = name.startsWith("encrypted"); // a key is given only for a sealed image: else it is refused
      const r = await loadStream(await fileStream(path), pidTarget(b.pid), {
        key: sealed ? key : undefined,
        path,
      });
      assertEquals(await b.sum(addr, len), want, name);
      assertEquals([r.encrypted, r.bytesRead], [name.startsWith("encrypted"), s.fileSize]);
      if (!r.encrypted) {
        await b.fill(addr, len, "byte:85");
        using img = await MemoryLoader.open(path, { codecs: [new ZstdCodec(), new Lz4Codec()] });
        await img.load(pidTarget(b.pid));
        assertEquals(await b.sum(addr, len), want, `${name} through MemoryLoader`);
      } else {
        await b.fill(addr, len, "byte:85");
        await loadVerified(path, pidTarget(b.pid), { key });
        assertEquals(await b.sum(addr, len), want, `${name} through loadVerified`);
      }
    }
  } finally {
    await close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`loadStream()` restores a checkpoint streamed through a pipe from another process", async () => {
  const len = 4 * MiB;
  const { a, b, addr, close } = await pair(len);
  const keyBytes = crypto.getRandomValues(new Uint8Array(32));
  const name = `CRYO_STREAM_TEST_KEY_${Deno.pid}`;
  const script = `
    import { MemoryPersister } from ${
    JSON.stringify(new URL("../lib/image/persister.ts", import.meta.url).href)
  };
    import { pidSource } from ${JSON.stringify(new URL("../lib/image/sources.ts", import.meta.url).href)};
    import { ZstdCodec } from ${JSON.stringify(new URL("../lib/codecs/zstd.ts", import.meta.url).href)};
    import { Sealer } from ${JSON.stringify(new URL("../lib/codecs/seal.ts", import.meta.url).href)};
    import { keyFromEnv } from ${JSON.stringify(new URL("../lib/codecs/keys.ts", import.meta.url).href)};
    import { regionAt } from ${JSON.stringify(new URL("./_image.ts", import.meta.url).href)};
    const [pid, addr, len, keyEnv] = Deno.args;
    const sealer = await Sealer.create(await keyFromEnv(keyEnv));
    const p = await MemoryPersister.create("-", {
      source: pidSource(Number(pid)), regions: [regionAt(BigInt(addr), Number(len))], codec: new ZstdCodec(1), sealer,
    });
    await p.store(BigInt(addr), Number(len));
    await p.finalize();`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script, String(a.pid), String(addr), String(len), name],
    env: { [name]: hex(keyBytes) },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    Deno.env.set(name, hex(keyBytes));
    const key = await keyFromEnv(name);
    const r = await loadStream(child.stdout, pidTarget(b.pid), { key });
    assert((await child.status).success);
    assert(
      r.encrypted && r.chunks >= 3 && r.holeBytes >= MiB,
      `${r.chunks} chunks, ${r.holeBytes} hole bytes`,
    );
    assertEquals(await b.sum(addr, len), await a.sum(addr, len));
  } finally {
    Deno.env.delete(name);
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await close();
  }
});

Deno.test("`loadStream()` refuses a truncated stream and writes nothing after the last verified chunk", async () => {
  const len = 6 * MiB;
  const { a, b, addr, close } = await pair(len);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/t.cryo`;
    await checkpointTo(path, a.pid, addr, len, { codec: new ZstdCodec(1) });
    const image = await Deno.readFile(path);
    using img = await MemoryLoader.open(path);
    const data = img.records.filter((r) => r.kind === KIND.DATA);
    const sums = async (t: Target) => {
      const out: string[] = [];
      for (let i = 0; i < len / MiB; i++) out.push(await t.sum(addr + BigInt(i * MiB), MiB));
      return out;
    };
    const wantA = await sums(a);
    const untouched = await sums(b);
    for (const k of [0, 2, data.length - 1]) {
      const r = data[k];
      const cut = r.fileOffset + (r.storedLength >> 1); // in the middle of chunk k
      await b.fill(addr, len, "byte:85");
      const e = await assertRejects(
        () => loadStream(bytesStream(image.subarray(0, cut)), pidTarget(b.pid)),
        ImageError,
        "stream ended in the chunk data",
      );
      assertEquals(e.offset, cut);
      const got = await sums(b);
      for (let i = 0; i < len / MiB; i++) {
        const mib = addr + BigInt(i * MiB);
        const written = data.some((d, j) => j < k && d.address <= mib && mib < d.address + BigInt(d.length));
        assertEquals(got[i], written ? wantA[i] : untouched[i], `cut in chunk ${k}: MiB ${i}`);
      }
    }
    // cut in the tail: every chunk was verified and written, but the holes (known from the index) were not
    await b.fill(addr, len, "byte:85");
    await assertRejects(
      () => loadStream(bytesStream(image.subarray(0, image.length - 10)), pidTarget(b.pid)),
      ImageError,
    );
    const got = await sums(b);
    assertEquals(got[1], untouched[1]);
    assertEquals(got[0], wantA[0]);
    // whole: everything, holes included
    await loadStream(bytesStream(image), pidTarget(b.pid));
    assertEquals(await sums(b), wantA);
  } finally {
    await close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`loadStream()` checks the target's layout from the header before the first chunk", async () => {
  const len = 3 * MiB;
  const { a, b, addr, close } = await pair(len);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/l.cryo`;
    await checkpointTo(path, a.pid, addr, len, { codec: new Lz4Codec() });
    await b.cmd(`protect 0x${addr.toString(16)} ${MiB} r`);
    const before = await b.sum(addr, len);
    let chunks = 0;
    const e = await assertRejects(
      async () => loadStream(await fileStream(path), pidTarget(b.pid), { onChunk: () => chunks++ }),
      LayoutMismatchError,
    );
    assert(e.differences.some((d) => d.includes("r--p")), e.message);
    assertEquals(chunks, 0);
    assertEquals(await b.sum(addr, len), before);
  } finally {
    await close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A small encrypted zstd image of a child: 3 data chunks (text, text, random), a hole, a section. */
async function smallSealed(key: SealKey): Promise<{ image: Uint8Array; close: () => Promise<void> }> {
  const t = Target.start();
  const len = 5 * 4096;
  const addr = fixedAddress();
  try {
    await t.cmd(`mapat 0x${addr.toString(16)} ${len}`);
    await t.fill(addr, 2 * 4096, "text", 1);
    await t.fill(addr + 3n * 4096n, 4096, "random", 2);
    await t.fill(addr + 4n * 4096n, 4096, "byte:1");
    const dir = await Deno.makeTempDir();
    const path = `${dir}/s.cryo`;
    const p = await MemoryPersister.create(path, {
      source: pidSource(t.pid),
      regions: [regionAt(addr, len)],
      codec: new ZstdCodec(1),
      chunkSize: 4096,
      sealer: await Sealer.create(key),
      fsync: false,
    });
    p.addSection("threads", new TextEncoder().encode("registers would be here"));
    await p.store(addr, len);
    await p.finalize();
    const image = await Deno.readFile(path);
    await Deno.remove(dir, { recursive: true });
    return { image, close: () => t.close() };
  } catch (e) {
    await t.close();
    throw e;
  }
}

Deno.test("`verifyStream()` refuses a flipped bit anywhere in a small encrypted image", async () => {
  const key = await newKey();
  const { image, close } = await smallSealed(key);
  await close();
  const data: ImageRecord[] = [];
  const ok = await verifyStream(bytesStream(image), { key, onChunk: (r) => data.push(r) });
  assert(ok.encrypted && ok.chunks === 4 && ok.holeBytes === 4096, JSON.stringify(ok.chunks));
  // every byte of the header block and the tail, of each chunk's frame header and table, every 7th byte of its
  // data (every byte with CRYO_SWEEP=full), and every 61st byte of the padding
  const step = Deno.env.get("CRYO_SWEEP") === "full" ? 1 : 7;
  const parts: [number, number][] = [[0, ok.header.headerLength]];
  const sampled: [number, number][] = [];
  for (const r of data) {
    parts.push([r.fileOffset - 64, 64]);
    sampled.push([r.fileOffset, r.storedLength]);
  }
  parts.push([data.reduce((m, r) => Math.max(m, r.fileOffset + r.storedLength), 0), image.length]);
  const offsets = new Set<number>();
  for (const [at, n] of parts) for (let i = at; i < at + n && i < image.length; i++) offsets.add(i);
  for (const [at, n] of sampled) for (let i = at; i < at + n && i < image.length; i += step) offsets.add(i);
  for (let i = 0; i < image.length; i += 61) offsets.add(i);
  assert(offsets.size > 500, `${offsets.size} offsets`);
  let refused = 0;
  for (const i of offsets) {
    const bad = image.slice();
    bad[i] ^= 1 << (i % 8);
    try {
      await verifyStream(bytesStream(bad, 1 << 20), { key });
    } catch (e) {
      if (e instanceof ImageError || e instanceof KeyError) {
        refused++;
        continue;
      }
      throw e;
    }
    throw new Error(`a flip at offset ${i} was not refused`);
  }
  assertEquals(refused, offsets.size);
});

Deno.test("`loadStream()` of an encrypted image refuses a wrong or missing key and reordered chunks", async () => {
  const key = await newKey();
  const { image, close } = await smallSealed(key);
  try {
    const other = await newKey();
    const e = await assertRejects(() => verifyStream(bytesStream(image), { key: other }), KeyError);
    assert(e.message.includes("is not the one it was sealed with"), e.message);
    await assertRejects(() => verifyStream(bytesStream(image)), KeyError, "it is encrypted");
    // swap the two text chunks' stored bytes and checksums (valid ciphertexts, good checksums, wrong place)
    const swapped = image.slice();
    rewriteFrame(swapped, 0, (r, d) => {
      [d[0], d[1]] = [d[1], d[0]];
      [r[0].storedLength, r[1].storedLength] = [r[1].storedLength, r[0].storedLength];
      [r[0].checksum, r[1].checksum] = [r[1].checksum, r[0].checksum];
    });
    await assertRejects(
      () => verifyStream(bytesStream(swapped), { key }),
      ImageError,
      "chunk authentication failed",
    );
  } finally {
    await close();
  }
});

Deno.test("two encrypted checkpoints of the same memory share no nonce", async () => {
  const key = await newKey();
  const nonces = new Set<string>();
  let count = 0;
  for (let run = 0; run < 2; run++) {
    const { image, close } = await smallSealed(key);
    await close();
    const data: ImageRecord[] = [];
    await verifyStream(bytesStream(image), { key, onChunk: (r) => data.push(r) });
    for (const r of data) {
      nonces.add(hex(image.subarray(r.fileOffset, r.fileOffset + NONCE_SIZE)));
      count++;
    }
  }
  assertEquals(count, 8);
  assertEquals(nonces.size, 8);
});

Deno.test("`restoreStream()` rolls a child back from a checkpoint streamed through stdout and stdin", async () => {
  await using t = Target.start();
  const len = 3 * MiB;
  const addr = await t.map(len);
  await t.fill(addr, len, "text", 8);
  const want = await t.sum(addr, len);
  const url = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
  const run = (script: string, stdin: "piped" | "null") =>
    new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script, String(t.pid)],
      stdin,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  const writer = run(
    `import { checkpoint } from ${url("../lib/ops/checkpoint.ts")};
     import { ZstdCodec } from ${url("../lib/codecs/zstd.ts")};
     await checkpoint(Number(Deno.args[0]), "-", { codec: new ZstdCodec(1) });`,
    "null",
  );
  const out = await writer.output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const image = out.stdout;
  await t.fill(addr, len, "random", 9);
  assert(await t.sum(addr, len) !== want);
  const reader = run(
    `import { restoreStream } from ${url("../lib/ops/restore_stream.ts")};
     const r = await restoreStream(Number(Deno.args[0]), "-");
     console.log(JSON.stringify({ data: r.dataBytes, threads: r.threadsRestored }));`,
    "piped",
  );
  try {
    const w = reader.stdin.getWriter();
    await w.write(image);
    await w.close();
    const res = await reader.output();
    assert(res.success, new TextDecoder().decode(res.stderr));
    const r = JSON.parse(new TextDecoder().decode(res.stdout));
    assert(r.data >= len && r.threads === 1, JSON.stringify(r));
    assertEquals(await t.sum(addr, len), want);
  } finally {
    try {
      reader.kill("SIGKILL");
    } catch { /* exited */ }
  }
});

Deno.test("`MemoryLoader` opens and checks an encrypted image without the key but refuses its contents", async () => {
  const key = await newKey();
  const { image, close } = await smallSealed(key);
  await close();
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/e.cryo`;
    await Deno.writeFile(path, image);
    using img = await MemoryLoader.open(path);
    await img.verify(); // structure and checksums of the stored bytes
    assertEquals([img.records.length, img.sections.map((s) => s.name)], [5, ["threads", "seal"]]);
    const data = img.records.find((r) => r.kind === KIND.DATA)!;
    await assertRejects(() => img.readRecord(data), KeyError, "encrypted");
    await assertRejects(() => img.load(pidTarget(Deno.pid)), Error);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a streamed and a file load make zero again each page a child populated in a hole since, across the hole zeroer's 64 MiB windows", async () => {
  await using t = Target.start();
  const len = 200 * MiB;
  const addr = await t.map(len);
  await t.fill(addr, MiB, "random", 11);
  await t.fill(addr + BigInt(len - MiB), MiB, "random", 12);
  const want = await t.sum(addr, len);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/holes.cryo`;
    const taken = await checkpointTo(path, t.pid, addr, len, {});
    assert(taken.holeBytes >= len - 2 * MiB, `${taken.holeBytes} bytes of holes`);
    // Pages populated in the hole since: scattered, and on both sides of each 64 MiB step from its start (the
    // zeroer reads the pages the process has a window at a time from the first hole on).
    const populate = async () => {
      await t.fill(addr + BigInt(MiB), len - 2 * MiB, "stride:509", 13);
      for (let k = 1; k <= 3; k++) {
        await t.fill(addr + BigInt(MiB + k * 64 * MiB - 4096), 8192, "random", 13 + k);
      }
      assert(await t.sum(addr, len) !== want, "the hole holds data now");
    };
    await populate();
    const streamed = await loadStream(await fileStream(path), pidTarget(t.pid));
    assertEquals(streamed.holeBytes, taken.holeBytes);
    assertEquals(await t.sum(addr, len), want, "after the streamed load");
    await populate();
    using img = await MemoryLoader.open(path);
    await img.load(pidTarget(t.pid));
    assertEquals(await t.sum(addr, len), want, "after the file load");
    // Two zeroers of one writer share its pagemap's buffer: one's scan in between must not stand for the
    // other's window (zeroer A's second hole lies in the window it read first, after B read another).
    await populate();
    using w = new RemoteWriter(t.pid);
    const regions = [regionAt(addr, len)];
    const zeroA = w.holeZeroerAt(regions), zeroB = w.holeZeroerAt(regions);
    const at = Number(addr);
    zeroA(at + MiB, 10 * MiB);
    zeroB(at + 100 * MiB, 10 * MiB);
    zeroA(at + 11 * MiB, 50 * MiB);
    const zeros = await t.map(60 * MiB); // never touched: reads as zero
    assertEquals(await t.sum(addr + BigInt(MiB), 60 * MiB), await t.sum(zeros, 60 * MiB), "zeroer A's holes");
    assertEquals(
      await t.sum(addr + BigInt(100 * MiB), 10 * MiB),
      await t.sum(zeros, 10 * MiB),
      "zeroer B's hole",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
