// What the fast paths of issue 15 skip, and the guarantees that stand: a snapshot's image is verified in full
// once and held open; changed since (one data byte flipped in place), it is verified again before the next
// rollback, which is refused with nothing written. An incremental checkpoint over a parent whose tracking it
// uses does not read the parent's data (nor verify it), but a restore of the chain verifies every image and
// refuses a corrupted parent; without that tracking the parent is verified before the target is frozen.
import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { ImageError } from "../lib/errors.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { snapshot } from "../lib/ops/snapshot.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { ENTRY_FIELD, FRAME_LENGTH, KIND } from "../lib/image/format.ts";
import { Target } from "./_target.ts";

const MiB = 1n << 20n;
const P = BigInt(PAGE_SIZE);

/** Flip the bits of `mask` in the byte at `at` of a file, in place (same file, same size). */
async function flip(path: string, at: number, mask: number): Promise<void> {
  using f = await Deno.open(path, { read: true, write: true });
  const b = new Uint8Array(1);
  await f.seek(at, Deno.SeekMode.Start);
  await f.read(b);
  b[0] ^= mask;
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(b);
}

/** Flip one byte in the middle of the image's largest data record, in place (same file, same size). */
async function corrupt(path: string): Promise<void> {
  let at: number;
  {
    using l = await MemoryLoader.open(path);
    const r =
      l.records.filter((r) => r.kind === KIND.DATA).sort((a, b) => b.storedLength - a.storedLength)[0];
    at = r.fileOffset + Math.floor(r.storedLength / 2);
  }
  await flip(path, at, 0xff);
}

Deno.test("a snapshot's image changed after it was verified is verified again: the rollback is refused, nothing written", async () => {
  await using t = Target.start();
  const a = await t.map(8n * MiB);
  await t.fill(a, 8n * MiB, "random", 1);
  const at = await t.sum(a, 8n * MiB);
  await using snap = await snapshot(t.pid, { settleMs: 50 });
  await t.cmd(`writepages 0x${a.toString(16)} ${8n * MiB} 40 2`);
  assertEquals((await snap.rollback()).tracking?.used, true);
  assertEquals(await t.sum(a, 8n * MiB), at);
  // Held open and unchanged: the next rollbacks use it as verified.
  await t.cmd(`writepages 0x${a.toString(16)} ${8n * MiB} 40 3`);
  await snap.rollback();
  assertEquals(await t.sum(a, 8n * MiB), at);
  await corrupt(snap.path);
  await t.cmd(`writepages 0x${a.toString(16)} ${8n * MiB} 40 4`);
  const scribbled = await t.sum(a, 8n * MiB);
  const e = await assertRejects(() => snap.rollback(), ImageError);
  assert(e.message.includes("checksum"), e.message);
  assertEquals(await t.sum(a, 8n * MiB), scribbled, "nothing was written");
});

Deno.test("an incremental checkpoint over a tracked parent does not read its data; the chain's restore refuses a corrupted parent", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-verified-" });
  await using t = Target.start();
  try {
    const a = await t.map(8n * MiB);
    await t.fill(a, 8n * MiB, "random", 1);
    await checkpoint(t.pid, `${dir}/base.cryo`, { fsync: false, track: true });
    await corrupt(`${dir}/base.cryo`);
    await t.fill(a, P, "random", 2);
    const tip = await checkpoint(t.pid, `${dir}/tip.cryo`, { fsync: false, parent: `${dir}/base.cryo` });
    assertEquals(tip.incremental?.tracked, true, tip.incremental?.reason);
    await t.fill(a + P, P, "random", 3);
    const sum = await t.sum(a, 8n * MiB);
    const e = await assertRejects(() => restore(t.pid, `${dir}/tip.cryo`), ImageError);
    assert(e.message.includes("base.cryo") && e.message.includes("checksum"), e.message);
    assertEquals(await t.sum(a, 8n * MiB), sum, "nothing was written");
    // Without the tracking armed at the parent, its data is compared: it is verified first, and refused.
    removeTrackingMark(t.pid);
    const untracked = await assertRejects(
      () => checkpoint(t.pid, `${dir}/tip2.cryo`, { fsync: false, parent: `${dir}/base.cryo` }),
      ImageError,
    );
    assert(untracked.message.includes("checksum"), untracked.message);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an image opened before and changed in place since is read and checked again when opened: its index and structure are not reused", async () => {
  await using t = Target.start();
  const dir = await Deno.makeTempDir();
  try {
    const a = await t.map(Number(4n * MiB));
    await t.fill(a, Number(4n * MiB), "random", 3);
    const path = `${dir}/once.cryo`;
    await checkpoint(t.pid, path, { fsync: false });
    let entryAt: number;
    {
      using l = await MemoryLoader.open(path); // read, checked and kept for the next open of the same file
      const f = l.frames[0];
      entryAt = f.offset + FRAME_LENGTH + ENTRY_FIELD.LENGTH; // the frame's first table entry: its length
      using again = await MemoryLoader.open(path); // unchanged: the kept index
      assertEquals(again.records.length, l.records.length);
    }
    await flip(path, entryAt, 0x01);
    await assertRejects(() => MemoryLoader.open(path), ImageError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
