import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { ImageError } from "../lib/errors.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { inspect } from "../lib/ops/inspect.ts";
import { flattenChain, ImageChain } from "../lib/image/chain.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { KIND } from "../lib/image/format.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { decodeThreads } from "../lib/kernel/threads.ts";
import { loadStream, verifyStream } from "../lib/image/stream.ts";
import { openInput } from "../lib/image/stream_input.ts";
import { pidTarget } from "../lib/image/targets.ts";
import { parseCodec } from "../lib/codecs/select.ts";
import { Target } from "./_target.ts";

const MiB = 1n << 20n;
const P = BigInt(PAGE_SIZE);
const hex = (a: bigint) => `0x${a.toString(16)}`;

/** The hash part of the child's `sumall` (every private anonymous region's bytes). */
const fingerprint = async (t: Target) => (await t.cmd("sumall")).split(" ")[0];

/**
 * Page contents of an image (chain-resolved) as a hash per absolute region: holes read as zero. The threads'
 * rseq areas are left out: the kernel writes their cpu fields as a thread migrates, between any two moments.
 */
async function contents(path: string): Promise<Map<string, string>> {
  using chain = await ImageChain.open(path);
  const rseq = decodeThreads(chain.tip.section("threads")!, path).map((t) => t.rseq?.abiPointer ?? 0n);
  const out = new Map<string, string>();
  const recs = chain.records();
  for (const g of chain.tip.regions.filter((r) => !r.relocatable)) {
    const h = await crypto.subtle.digest(
      "SHA-256",
      await (async () => {
        const buf = new Uint8Array(Number(g.end - g.start));
        for (const c of recs) {
          if (c.kind !== KIND.DATA || c.address < g.start || c.address >= g.end) continue;
          const bytes = await chain.images[c.image].readRecord(c.record);
          const off = Number(c.address - c.record.address);
          buf.set(bytes.subarray(off, off + c.length), Number(c.address - g.start));
        }
        for (const at of rseq) {
          if (at >= g.start && at < g.end) buf.fill(0, Number(at - g.start), Number(at - g.start) + 32);
        }
        return buf;
      })(),
    );
    out.set(`${hex(g.start)}-${hex(g.end)}`, [...new Uint8Array(h)].map((b) => b.toString(16)).join(""));
  }
  return out;
}

Deno.test("a chain of 10 incremental images (tracked and compared) restores byte-exact to every point; flattened, it equals a full checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-" });
  await using t = Target.start();
  try {
    const main = await t.map(16n * MiB);
    await t.fill(main, 16n * MiB, "random", 1);
    const huge = await t.cmd(`hugemap ${8n * MiB}`).then(BigInt); // transparent huge pages where allowed
    await t.fill(huge, 8n * MiB, "random", 3);
    const extras: { at: bigint; size: bigint }[] = [];
    for (let k = 0; k < 3; k++) {
      const at = await t.map(2n * MiB);
      await t.fill(at, 2n * MiB, "random", 10 + k);
      extras.push({ at, size: 2n * MiB });
    }
    const images = [`${dir}/0.cryo`];
    const base = await checkpoint(t.pid, images[0], { fsync: false, track: true });
    assert(base.incremental?.armed, "tracking armed at the base");
    const sums = [await fingerprint(t)];
    const stored: number[] = [];
    for (let round = 1; round <= 10; round++) {
      await t.cmd(`writepages ${hex(main)} ${16n * MiB} ${5 + round * 7} ${round}`); // single pages
      await t.fill(main + BigInt(round) * MiB, BigInt(round % 4 + 1) * 64n * P, "random", 100 + round); // a run
      await t.cmd(`twritepages ${hex(main)} ${16n * MiB} 40 ${round} 3`); // three threads
      await t.cmd(`release ${hex(main + BigInt(4 + round) * MiB)} ${64n * P}`); // data gone: holes now
      await t.cmd(`writepages ${hex(huge)} ${8n * MiB} ${round} ${round + 50}`); // into huge pages
      if (round % 3 === 0) { // a region mapped since
        const at = await t.map(MiB * BigInt(round % 5 + 1));
        await t.fill(at, 4n * P, "random", round);
        extras.push({ at, size: MiB * BigInt(round % 5 + 1) });
      } else if (round % 3 === 1 && extras.length > 1) { // one unmapped
        const e = extras.shift()!;
        await t.cmd(`unmap ${hex(e.at)} ${e.size}`);
      } else if (extras.length) { // one moved and grown
        const e = extras.pop()!;
        const at = BigInt(await t.cmd(`mremap ${hex(e.at)} ${e.size} ${e.size + MiB}`));
        await t.fill(at + e.size, 8n * P, "random", round);
        extras.push({ at, size: e.size + MiB });
      }
      const path = `${dir}/${round}.cryo`;
      // Every third image is taken without tracking: the next one then compares with its parent instead.
      const track = round % 3 !== 2;
      const r = await checkpoint(t.pid, path, { fsync: false, parent: images[round - 1], track });
      assertEquals(r.incremental?.parent, images[round - 1]);
      assertEquals(r.incremental?.tracked, round % 3 !== 0, `round ${round}: ${r.incremental?.reason}`);
      stored.push(r.dataBytes);
      images.push(path);
      // At the tip, a full checkpoint at the same moment (the child is idle, waiting for its next command).
      if (round === 10) await checkpoint(t.pid, `${dir}/full.cryo`, { fsync: false });
      sums.push(await fingerprint(t));
    }
    assert(stored.every((n) => n < 4 * 1024 * 1024), `incremental images hold what changed: ${stored}`);
    for (const k of [10, 3, 0, 7, 9, 1, 5, 2, 8, 4, 6, 10]) {
      await restore(t.pid, images[k]);
      assertEquals(await fingerprint(t), sums[k], `restored to image ${k}`);
    }
    // Flattened, the tip equals the full checkpoint taken at the same moment.
    const flat = await flattenChain(images[10], `${dir}/flat.cryo`, { fsync: false });
    assertEquals(flat.chain, 11);
    assertEquals(await contents(`${dir}/flat.cryo`), await contents(`${dir}/full.cryo`));
    using flatLoader = await MemoryLoader.open(`${dir}/flat.cryo`);
    await flatLoader.verify();
    // inspect shows the chain.
    const info = await inspect(images[10]);
    assertEquals(info.chain?.length, 11);
    assertEquals(info.chain?.[0].path, images[10]);
    assertEquals(info.chain?.[10].incremental, false);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an incremental image refuses a parent whose content is not the one it names, and does not load alone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-" });
  await using t = Target.start();
  try {
    const a = await t.map(4n * MiB);
    await t.fill(a, 4n * MiB, "random", 1);
    await checkpoint(t.pid, `${dir}/base.cryo`, { fsync: false });
    await t.fill(a, P, "random", 2);
    await checkpoint(t.pid, `${dir}/tip.cryo`, { fsync: false, parent: `${dir}/base.cryo` });
    await t.fill(a, P, "random", 3);
    await checkpoint(t.pid, `${dir}/other.cryo`, { fsync: false }); // a full image, not the parent
    await Deno.rename(`${dir}/other.cryo`, `${dir}/base.cryo`);
    const e = await assertRejects(() => restore(t.pid, `${dir}/tip.cryo`), ImageError);
    assert(e.message.includes("not its parent"), e.message);
    // Alone it verifies (every byte is checksummed) but does not load, from a file or a stream.
    await verifyStream(await openInput(`${dir}/tip.cryo`));
    const streamed = await assertRejects(
      async () => await loadStream(await openInput(`${dir}/tip.cryo`), pidTarget(t.pid)),
      ImageError,
    );
    assert(streamed.message.includes("incremental"), streamed.message);
    using alone = await MemoryLoader.open(`${dir}/tip.cryo`);
    await assertRejects(
      () =>
        alone.verify().then(() =>
          alone.load({ kind: "pid", pid: t.pid, map: false, lazy: false, segments: {} })
        ),
      ImageError,
    );
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a compressed incremental image over a compressed parent restores and flattens like a raw one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-" });
  await using t = Target.start();
  try {
    const a = await t.map(8n * MiB);
    await t.fill(a, 8n * MiB, "text", 1);
    const zstd = parseCodec("zstd:1");
    await checkpoint(t.pid, `${dir}/base.cryo`, { fsync: false, codec: zstd, track: true });
    const sumBase = await t.sum(a, 8n * MiB);
    await t.cmd(`writepages ${hex(a)} ${8n * MiB} 20 4`);
    const inc = await checkpoint(t.pid, `${dir}/tip.cryo`, {
      fsync: false,
      codec: zstd,
      parent: `${dir}/base.cryo`,
      track: true,
    });
    assert(inc.incremental?.tracked, inc.incremental?.reason);
    const sumTip = await t.sum(a, 8n * MiB);
    await restore(t.pid, `${dir}/base.cryo`, { tracking: false });
    assertEquals(await t.sum(a, 8n * MiB), sumBase);
    await restore(t.pid, `${dir}/tip.cryo`);
    assertEquals(await t.sum(a, 8n * MiB), sumTip);
    await flattenChain(`${dir}/tip.cryo`, `${dir}/flat.cryo`, { fsync: false });
    await restore(t.pid, `${dir}/base.cryo`, { tracking: false });
    await restore(t.pid, `${dir}/flat.cryo`);
    assertEquals(await t.sum(a, 8n * MiB), sumTip);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});
