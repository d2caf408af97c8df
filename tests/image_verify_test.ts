import fc from "fast-check";
import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { fillRandom, PAGE_SIZE, reseal, rewriteFrame, tempDir } from "./_image.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { segmentSource } from "../lib/image/sources.ts";
import { ImageError } from "../lib/errors.ts";
import { FRAME_LENGTH } from "../lib/image/format.ts";
import { tableEnd } from "../lib/image/frames.ts";

/** A small image: a segment with a data page, a zero page (hole) and an unaligned data tail, and a section. */
async function smallImage(path: string): Promise<Uint8Array> {
  const sab = new SharedArrayBuffer(2 * PAGE_SIZE + 100);
  const b = new Uint8Array(sab);
  fillRandom(b.subarray(0, PAGE_SIZE), 3);
  fillRandom(b.subarray(2 * PAGE_SIZE), 4);
  const seg = segmentSource("heap", sab, { detectZeros: true });
  const p = await MemoryPersister.create(path, { segments: [seg] });
  await p.store(0n, b.length, seg);
  p.addSection("threads", new TextEncoder().encode("rip=0x401000"));
  await p.finalize();
  return await Deno.readFile(path);
}

async function verifyFile(path: string): Promise<void> {
  using img = await MemoryLoader.open(path);
  await img.verify();
}

Deno.test("verify() detects a single-bit flip in every byte of structure and in sampled data and padding", async () => {
  await using dir = await tempDir();
  const good = await smallImage(`${dir.path}/good.img`);
  await verifyFile(`${dir.path}/good.img`);
  const path = `${dir.path}/flip.img`;
  await Deno.writeFile(path, good);
  const file = await Deno.open(path, { read: true, write: true });
  try {
    const flip = async (offset: number, bit: number) => {
      const b = new Uint8Array([good[offset] ^ (1 << bit)]);
      await file.seek(offset, Deno.SeekMode.Start);
      await file.write(b);
      const e = await assertRejects(() => verifyFile(path), ImageError);
      assert(e.offset !== undefined && e.message.includes(path));
      await file.seek(offset, Deno.SeekMode.Start);
      await file.write(good.subarray(offset, offset + 1));
    };
    // Every byte of what has structure (header block, frame headers and tables, END frame and tail) and every
    // 13th byte of the rest (data and zero padding, each checked by one rule whatever the byte), each with a
    // different bit (every byte with CRYO_SWEEP=full); then random (byte, bit) pairs.
    const full = Deno.env.get("CRYO_SWEEP") === "full";
    const structure: [number, number][] = [];
    {
      using img = await MemoryLoader.open(`${dir.path}/good.img`);
      structure.push([0, img.header.headerLength], [img.footer.indexOffset - FRAME_LENGTH, good.length]);
      for (const f of img.frames) structure.push([f.offset, tableEnd(f)]);
    }
    const flips = Array.from({ length: good.length }, (_, i) => i).filter((offset) =>
      full || offset % 13 === 0 || structure.some(([from, to]) => from <= offset && offset < to)
    );
    assert(full || flips.length < good.length / 3, `${flips.length} of ${good.length} bytes`);
    for (const offset of flips) await flip(offset, offset % 8);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 0, max: 7 }), flip),
      { numRuns: 200 },
    );
  } finally {
    file.close();
  }
  await verifyFile(path);
});

Deno.test("MemoryLoader.open() refuses an image truncated at any page boundary or byte", async () => {
  await using dir = await tempDir();
  const good = await smallImage(`${dir.path}/good.img`);
  const path = `${dir.path}/cut.img`;
  const cuts = new Set<number>();
  for (let at = 0; at < good.length; at += PAGE_SIZE) cuts.add(at);
  fc.sample(fc.integer({ min: 0, max: good.length - 1 }), 100).forEach((x) => cuts.add(x));
  for (const at of cuts) {
    await Deno.writeFile(path, good.subarray(0, at));
    await assertRejects(() => verifyFile(path), ImageError);
  }
});

Deno.test("MemoryLoader.open() refuses records out of order or overlapping, even with good checksums", async () => {
  await using dir = await tempDir();
  const good = await smallImage(`${dir.path}/good.img`);
  const v = new DataView(good.buffer);
  const f = good.length - 128;
  assertEquals(Number(v.getBigUint64(f + 96, true)), 1, "one frame");
  // Move record 1 before record 0.
  const swapped = good.slice();
  rewriteFrame(swapped, 0, (r) => void (r[1].address = 0n));
  await Deno.writeFile(`${dir.path}/swapped.img`, swapped);
  await assertRejects(() => verifyFile(`${dir.path}/swapped.img`), ImageError, "out of order");
  // Make record 1 start inside record 0.
  const overlapping = good.slice();
  rewriteFrame(overlapping, 0, (r) => void (r[1].address = 100n));
  await Deno.writeFile(`${dir.path}/overlap.img`, overlapping);
  await assertRejects(() => verifyFile(`${dir.path}/overlap.img`), ImageError, "overlapping");
  // Make record 1 end past the frame's range.
  const past = good.slice();
  rewriteFrame(past, 0, (r) => void (r[1].address = 8200n));
  await Deno.writeFile(`${dir.path}/past.img`, past);
  await assertRejects(() => verifyFile(`${dir.path}/past.img`), ImageError, "runs past the frame's range");
  // The same frame, rewritten unchanged, is still good.
  const same = good.slice();
  rewriteFrame(same, 0, () => {});
  assertEquals(same, good);
});

Deno.test("MemoryLoader.open() refuses an unknown required feature by name and ignores an unknown optional one", async () => {
  await using dir = await tempDir();
  const good = await smallImage(`${dir.path}/good.img`);
  const required = good.slice();
  new DataView(required.buffer).setBigUint64(16, 1n << 5n, true);
  reseal(required);
  await Deno.writeFile(`${dir.path}/req.img`, required);
  await assertRejects(() => verifyFile(`${dir.path}/req.img`), ImageError, "unknown required feature bit 5");
  const optional = good.slice();
  new DataView(optional.buffer).setBigUint64(24, 1n << 40n, true);
  reseal(optional);
  await Deno.writeFile(`${dir.path}/opt.img`, optional);
  await verifyFile(`${dir.path}/opt.img`);
});
