import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { Mapping, PAGE_SIZE, tempDir } from "./_image.ts";
import { claimLength, fieldsOf, fixChecksums, mapImage, setField } from "./_mutate.ts";
import { MemoryPersister, type PersisterOptions } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { segmentSource } from "../lib/image/sources.ts";
import { segmentTarget } from "../lib/image/targets.ts";
import { openInput, verifyStream } from "../lib/image/stream.ts";
import { MAX_CHUNK_LENGTH, MAX_RECORD_LENGTH } from "../lib/image/format.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { Lz4Codec } from "../lib/codecs/lz4.ts";
import { Sealer } from "../lib/codecs/seal.ts";
import { SealKey } from "../lib/codecs/keys.ts";
import { ImageError } from "../lib/errors.ts";

const KEY = await SealKey.fromBytes(new Uint8Array(32).fill(7));

/** Two absolute regions and a segment, stored with `opts`, two sections; the image's bytes. */
async function image(path: string, opts: PersisterOptions = {}): Promise<Uint8Array> {
  using a = new Mapping(4 * PAGE_SIZE);
  using b = new Mapping(2 * PAGE_SIZE);
  const text = new TextEncoder().encode("every size is checked before it is used ".repeat(300));
  a.bytes().set(text.subarray(0, a.len));
  b.bytes().set(text.subarray(0, b.len));
  const sab = new SharedArrayBuffer(2 * PAGE_SIZE);
  new Uint8Array(sab).set(text.subarray(0, sab.byteLength));
  const seg = segmentSource("heap", sab);
  const p = await MemoryPersister.create(path, {
    regions: [a.region, b.region],
    segments: [seg],
    fsync: false,
    chunkSize: PAGE_SIZE,
    ...opts,
  });
  for (const m of [a, b].sort((x, y) => (x.addr < y.addr ? -1 : 1))) await p.store(m.addr, m.len);
  await p.store(0n, sab.byteLength, seg);
  p.addSection("threads", new Uint8Array(16).fill(1));
  p.addSection("rseq-st", new Uint8Array(16).fill(2));
  await p.finalize();
  return await Deno.readFile(path);
}

/** Both readers refuse the image at `path` with an ImageError whose message matches `pattern`. */
async function bothRefuse(path: string, pattern: RegExp, key?: SealKey): Promise<void> {
  const file = await assertRejects(async () => {
    using img = await MemoryLoader.open(path);
    await img.verify();
  }, ImageError);
  assert(pattern.test(file.message), `file reader: ${file.message}`);
  const stream = await assertRejects(async () => {
    await verifyStream(await openInput(path), { path, key });
  }, ImageError);
  assert(pattern.test(stream.message), `stream reader: ${stream.message}`);
}

/** Write `good` changed by `edit`, with every checksum recomputed; its path. */
async function edited(path: string, good: Uint8Array, edit: (b: Uint8Array) => void): Promise<string> {
  const b = good.slice();
  edit(b);
  fixChecksums(b);
  await Deno.writeFile(path, b);
  return path;
}

Deno.test("`verify()` and `verifyStream()` refuse overlapping and repeated regions alike", async () => {
  await using dir = await tempDir();
  const good = await image(`${dir.path}/good.cryo`);
  const m = mapImage(good);
  const start = (r: number) => ({ at: m.regions[r], width: 8 as const, name: "" });
  const end = (r: number) => ({ at: m.regions[r] + 8, width: 8 as const, name: "" });
  const v = new DataView(good.buffer);
  const [s0, e0] = [v.getBigUint64(m.regions[0], true), v.getBigUint64(m.regions[0] + 8, true)];
  const repeat = await edited(`${dir.path}/repeat.cryo`, good, (b) => {
    setField(b, start(1), s0);
    setField(b, end(1), e0);
  });
  await bothRefuse(repeat, /region entry 1 repeats entry 0/);
  const overlap = await edited(`${dir.path}/overlap.cryo`, good, (b) => {
    setField(b, start(1), s0 + BigInt(PAGE_SIZE));
    setField(b, end(1), e0 + BigInt(PAGE_SIZE));
  });
  await bothRefuse(overlap, /region entry 1 overlaps entry 0/);
});

Deno.test("`verify()` and `verifyStream()` refuse a repeated section name, another architecture or page size", async () => {
  await using dir = await tempDir();
  const good = await image(`${dir.path}/good.cryo`);
  const m = mapImage(good);
  const twice = await edited(`${dir.path}/twice.cryo`, good, (b) => {
    b.copyWithin(m.sections[1].entry + 32, m.sections[0].entry + 32, m.sections[0].entry + 39);
  });
  await bothRefuse(twice, /section entry 1: a second section "threads"/);
  const arch = await edited(
    `${dir.path}/arch.cryo`,
    good,
    (b) => setField(b, { at: 36, width: 4, name: "" }, 183n),
  );
  await bothRefuse(arch, /architecture 183 is not x86_64/);
  const page = await edited(
    `${dir.path}/page.cryo`,
    good,
    (b) => setField(b, { at: 32, width: 4, name: "" }, 16384n),
  );
  // The file reader lays the frames out with the header's page size at open, so it may refuse the layout first.
  await bothRefuse(page, /page size 16384|disagrees with its table/);
});

Deno.test("`verify()` and `verifyStream()` refuse a plaintext record in an encrypted image, and the reverse", async () => {
  await using dir = await tempDir();
  const flags = (b: Uint8Array) => fieldsOf(mapImage(b)).find((f) => f.name === "entry.flags")!;
  const sealed = await image(`${dir.path}/sealed.cryo`, {
    codec: new ZstdCodec(1),
    sealer: await Sealer.create(KEY),
  });
  const plainIn = await edited(`${dir.path}/plain-in.cryo`, sealed, (b) => setField(b, flags(b), 0n));
  await bothRefuse(plainIn, /not encrypted in an encrypted image/, KEY);
  const plain = await image(`${dir.path}/plain.cryo`, { codec: new ZstdCodec(1) });
  const sealedIn = await edited(`${dir.path}/sealed-in.cryo`, plain, (b) => setField(b, flags(b), 1n));
  await bothRefuse(sealedIn, /encrypted, but the header lacks ENCRYPTED/);
});

Deno.test("`verify()` decodes: a record that passes its checksum but does not decode is refused before `load()` writes", async () => {
  await using dir = await tempDir();
  const sab = new SharedArrayBuffer(8 * PAGE_SIZE);
  new Uint8Array(sab).set(new TextEncoder().encode("abcdefgh".repeat(PAGE_SIZE)));
  const seg = segmentSource("heap", sab);
  for (const codec of [new ZstdCodec(1), new Lz4Codec(1)]) {
    const path = `${dir.path}/${codec.name}.cryo`;
    const p = await MemoryPersister.create(path, {
      segments: [seg],
      codec,
      chunkSize: 2 * PAGE_SIZE,
      fsync: false,
    });
    await p.store(0n, sab.byteLength, seg);
    await p.finalize();
    const bad = await edited(`${dir.path}/bad-${codec.name}.cryo`, await Deno.readFile(path), (b) => {
      const d = mapImage(b).frames[0].data[2]; // the third record: the first two are written before it
      b[d.at + (d.length >> 1)] ^= 0x5a;
    });
    using img = await MemoryLoader.open(bad); // the structure is sound
    const e = await assertRejects(() => img.verify(), ImageError);
    assert(/does not decode|do not match/.test(e.message), e.message);
    assertEquals(e.offset, mapImage(await Deno.readFile(bad)).frames[0].data[2].at);
    const dst = new SharedArrayBuffer(sab.byteLength);
    await assertRejects(() => img.load(segmentTarget({ heap: dst })), ImageError);
    assert(new Uint8Array(dst).every((x) => x === 0), "load() wrote before the image was verified");
    await assertRejects(async () => await verifyStream(await openInput(bad), { path: bad }), ImageError);
  }
});

Deno.test("Both readers refuse a record claiming more than MAX_CHUNK_LENGTH, and the writer cannot make one", async () => {
  await using dir = await tempDir();
  for (const codec of [new ZstdCodec(1), new Lz4Codec(1)]) {
    const good = await image(`${dir.path}/${codec.name}.cryo`, { codec });
    for (
      const claim of [
        BigInt(MAX_CHUNK_LENGTH) + 1n,
        BigInt(MAX_RECORD_LENGTH) + 1n,
        2n ** 31n + 1n,
        2n ** 32n - 1n,
      ]
    ) {
      // In the segment's frame (growing an absolute region would make it overlap the next one).
      const i = mapImage(good).frames.findIndex((f) =>
        new DataView(good.buffer).getUint32(f.at + 8, true) !== 0
      );
      const huge = await edited(`${dir.path}/huge.cryo`, good, (b) => claimLength(b, i, 0, claim));
      await bothRefuse(
        huge,
        new RegExp(`${claim} decoded bytes \\(a (compressed or encrypted )?record holds at most`),
      );
      await assertRejects(() => MemoryLoader.open(huge), ImageError, "at most"); // refused at open: nothing allocated
    }
  }
  await assertRejects(
    () => MemoryPersister.create(`${dir.path}/x.cryo`, { chunkSize: MAX_CHUNK_LENGTH + 1 }),
    RangeError,
    "expected 1 to",
  );
  await using p = await MemoryPersister.create(`${dir.path}/big.cryo`, { fsync: false });
  assertThrows(() => p.addSection("huge", new Uint8Array(16 << 20)), RangeError, "sections would take");
});
