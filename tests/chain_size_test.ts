/**
 * Incremental images as small as what was written (issue 15): in an image with the required feature PARENT the
 * bytes of a frame's range that no entry covers are the parent's, so scattered written pages share frames, and
 * a page released since the parent is an explicit HOLE entry (docs/FORMAT.md, "Incremental images").
 */

import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { ImageError } from "../lib/errors.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { diff } from "../lib/ops/diff.ts";
import { mapImage } from "../lib/ops/map.ts";
import { flattenChain } from "../lib/image/chain.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { type ImageRecord, KIND, REQUIRED, uncoveredMeaning } from "../lib/image/format.ts";
import {
  addFrameRecords,
  decodeTable,
  encodeTable,
  type FrameInfo,
  layoutFrame,
  MAX_FRAME_RECORDS,
} from "../lib/image/frames.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { verifyStream } from "../lib/image/stream.ts";
import { openInput } from "../lib/image/stream_input.ts";
import { Target } from "./_target.ts";

const MiB = 1n << 20n;
const P = BigInt(PAGE_SIZE);
const hex = (a: bigint) => `0x${a.toString(16)}`;

Deno.test("an incremental image of 1% of 128 MiB written at random single pages is at most 1.05 × the written bytes + 64 KiB, in few frames", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-size-" });
  await using t = Target.start();
  try {
    const size = 128n * MiB;
    const a = await t.map(size);
    await t.fill(a, size, "random", 1);
    await checkpoint(t.pid, `${dir}/base.cryo`, { fsync: false, track: true });
    const pages = Math.floor(Number(size / P) / 100); // 1%: 327 distinct random pages, one byte each
    await t.cmd(`writepages ${hex(a)} ${size} ${pages} 7`);
    const sum = await t.sum(a, size);
    const inc = await checkpoint(t.pid, `${dir}/tip.cryo`, {
      fsync: false,
      parent: `${dir}/base.cryo`,
      track: true,
    });
    assert(inc.incremental?.tracked, inc.incremental?.reason);
    const written = pages * PAGE_SIZE;
    // What was written since the parent, as the tracking reports it: the test's pages, and the few pages of the
    // target's own stack and data it wrote while answering (bounded here), all stored as data.
    const w = inc.dataBytes;
    assert(w >= written && w <= written + 64 * PAGE_SIZE, `${w} bytes stored for ${written} written`);
    // The formula: image ≤ 1.05 × W + F, W = the written bytes (the image's data), F = 64 KiB fixed: the header
    // block with the region table, the tail (sections, directory, footer) and one frame header page per region
    // the writes touched (frames cannot span the space between regions).
    const limit = 1.05 * w + 64 * 1024;
    assert(
      inc.imageBytes <= limit,
      `image of ${inc.imageBytes} bytes for ${w} written (at most ${limit}; ratio ${
        (inc.imageBytes / w).toFixed(3)
      })`,
    );
    // Scattered pages share frames: one per 1024 records (and per region the writes touched), not one per run.
    using tip = await MemoryLoader.open(`${dir}/tip.cryo`);
    await tip.verify();
    const dataRecords = tip.records.filter((r) => r.kind === KIND.DATA).length;
    const frames = tip.frames.filter((f) => !f.isEnd).length;
    assert(
      frames <= Math.ceil(dataRecords / MAX_FRAME_RECORDS) + 8,
      `${frames} frames for ${dataRecords} data records`,
    );
    await verifyStream(await openInput(`${dir}/tip.cryo`)); // the stream reader agrees
    // And the chain still restores byte-exact, alone and flattened.
    await t.fill(a, size, "random", 9);
    await restore(t.pid, `${dir}/tip.cryo`);
    assertEquals(await t.sum(a, size), sum);
    await flattenChain(`${dir}/tip.cryo`, `${dir}/flat.cryo`, { fsync: false });
    await t.fill(a, size, "random", 10);
    await restore(t.pid, `${dir}/flat.cryo`);
    assertEquals(await t.sum(a, size), sum);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an incremental image with a page released and one zeroed since its parent restores both as zero", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-size-" });
  await using t = Target.start();
  try {
    const size = 4n * MiB;
    const a = await t.map(size);
    await t.fill(a, size, "random", 1);
    await checkpoint(t.pid, `${dir}/base.cryo`, { fsync: false, track: true });
    const released = a + 100n * P, zeroed = a + 300n * P;
    await t.cmd(`writepages ${hex(a)} ${size} 20 3`); // data around them, so that they share a frame
    await t.cmd(`release ${hex(released)} ${P}`);
    await t.fill(zeroed, P, "zero");
    const sum = await t.sum(a, size);
    const zeroPage = await t.sum(released, P);
    const inc = await checkpoint(t.pid, `${dir}/tip.cryo`, {
      fsync: false,
      parent: `${dir}/base.cryo`,
      track: true,
    });
    assert(inc.incremental?.tracked, inc.incremental?.reason);
    // Both are HOLE entries of the tip's own, and no other byte of the region is a hole of the tip.
    using tip = await MemoryLoader.open(`${dir}/tip.cryo`);
    await tip.verify();
    const holes = tip.records.filter((r) => r.kind === KIND.HOLE && r.address >= a && r.address < a + size);
    const covers = (x: bigint) => holes.some((h) => h.address <= x && x < h.address + BigInt(h.length));
    assert(covers(released), `the released page ${hex(released)} is a hole: ${JSON.stringify(holes.length)}`);
    assert(covers(zeroed), `the zeroed page ${hex(zeroed)} is a hole`);
    assertEquals(holes.reduce((n, h) => n + h.length, 0), 2 * PAGE_SIZE);
    // Back to the parent (the pages hold data again), then to the tip: zero again.
    await restore(t.pid, `${dir}/base.cryo`, { tracking: false });
    assert((await t.sum(released, P)) !== zeroPage, "the parent's page holds data");
    await restore(t.pid, `${dir}/tip.cryo`);
    assertEquals(await t.sum(released, P), zeroPage);
    assertEquals(await t.sum(zeroed, P), zeroPage);
    assertEquals(await t.sum(a, size), sum);
    // diff and map read an incremental image through its chain: the tip equals its flattened self, and differs
    // from its parent in the written, released and zeroed pages (and the target's own few).
    await flattenChain(`${dir}/tip.cryo`, `${dir}/flat.cryo`, { fsync: false });
    assertEquals((await diff(`${dir}/tip.cryo`, `${dir}/flat.cryo`)).differentPages, 0);
    const changed = await diff(`${dir}/base.cryo`, `${dir}/tip.cryo`);
    const inRegion = changed.runs.filter((r) => r.start >= a && r.end <= a + size);
    assertEquals(inRegion.reduce((n, r) => n + Number((r.end - r.start) / P), 0), 22);
    assertEquals((await mapImage(`${dir}/tip.cryo`)).totals, (await mapImage(`${dir}/flat.cryo`)).totals);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a frame's uncovered bytes are holes in a full image and the parent's in an incremental one; HOLE entries only there", () => {
  const rec = (address: bigint, length: number, kind: number): ImageRecord => ({
    address,
    length,
    kind,
    fileOffset: 0,
    storedLength: kind === KIND.DATA ? length : 0,
    checksum: kind === KIND.DATA ? 1n : 0n,
    decodedChecksum: kind === KIND.DATA ? 1n : 0n,
    codec: 0,
    flags: 0,
    segment: 0,
  });
  const frame = (entries: ImageRecord[]): FrameInfo => {
    const f: FrameInfo = {
      offset: 4096,
      isEnd: false,
      count: entries.length,
      segment: 0,
      start: 0x10000n,
      end: 0x10000n + 10n * P,
      dataLength: 0,
      tableChecksum: 0n,
      frameChecksum: 0n,
    };
    f.dataLength = layoutFrame(f, entries, PAGE_SIZE).dataLength;
    return f;
  };
  const data = rec(0x10000n + 2n * P, PAGE_SIZE, KIND.DATA),
    hole = rec(0x10000n + 5n * P, PAGE_SIZE, KIND.HOLE);
  // A full image: the uncovered bytes are holes, and a HOLE entry is refused (kind 1 is not data there).
  const full = frame([data]);
  const fullRecords: ImageRecord[] = [];
  addFrameRecords(fullRecords, full, decodeTable("full", full, encodeTable([data]), PAGE_SIZE));
  assertEquals(fullRecords.map((r) => [r.kind, r.address - 0x10000n, r.length / PAGE_SIZE]), [
    [KIND.HOLE, 0n, 2],
    [KIND.DATA, 2n * P, 1],
    [KIND.HOLE, 3n * P, 7],
  ]);
  const both = frame([data, hole]);
  const table = encodeTable([data, hole]);
  assertThrows(() => decodeTable("full", both, table, PAGE_SIZE), ImageError, "kind 1 is not data");
  assertEquals(uncoveredMeaning(0n), "hole");
  // An incremental image: only its entries are its own; the rest of the range is the parent's.
  assertEquals(uncoveredMeaning(REQUIRED.PARENT), "parent");
  const inc: ImageRecord[] = [];
  addFrameRecords(inc, both, decodeTable("inc", both, table, PAGE_SIZE, "parent"), "parent");
  assertEquals(inc.map((r) => [r.kind, r.address - 0x10000n, r.length / PAGE_SIZE]), [
    [KIND.DATA, 2n * P, 1],
    [KIND.HOLE, 5n * P, 1],
  ]);
  // A HOLE entry holds no data.
  const bad = encodeTable([data, { ...hole, storedLength: 8 }]);
  assertThrows(() => decodeTable("inc", both, bad, PAGE_SIZE, "parent"), ImageError, "hole entry");
});
