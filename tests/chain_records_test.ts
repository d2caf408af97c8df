// The chain's records walked a frame at a time from each image (lib/image/chain_records.ts) resolve every page
// as the page-by-page rule says: the newest image whose record (data or hole) covers it. The chain here makes
// each case the merge must get right: the full image's records alternate one data page and one hole over 16 MiB
// (2,048 data records: its frames end mid-run of records, and its holes touch across frame joints); the second
// image writes pages at random; the third writes pages again (some the second wrote), releases a page that was
// data (a HOLE entry over its parents' data) and writes one that was a hole.

import { assert, assertEquals } from "./_assert.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { ImageChain } from "../lib/image/chain.ts";
import { KIND } from "../lib/image/format.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { Target } from "./_target.ts";

const P = BigInt(PAGE_SIZE);
const hex = (a: bigint) => `0x${a.toString(16)}`;

Deno.test("ImageChain.records() gives, for every page of the tip's regions, the record of the newest image that covers it, across frames and holes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-chain-records-" });
  await using t = Target.start();
  try {
    const size = 16n << 20n;
    const a = await t.map(size);
    await t.cmd(`fill ${hex(a)} ${size} stride:2 1`);
    await checkpoint(t.pid, `${dir}/0.cryo`, { fsync: false, track: true });
    await t.cmd(`writepages ${hex(a)} ${size} 300 2`);
    await checkpoint(t.pid, `${dir}/1.cryo`, { fsync: false, track: true, parent: `${dir}/0.cryo` });
    await t.cmd(`writepages ${hex(a)} ${size} 300 4`);
    await t.cmd(`release ${hex(a + 10n * P)} ${P}`); // was data (stride:2 writes the even pages)
    await t.fill(a + 11n * P, P, "random", 3); // was a hole
    await checkpoint(t.pid, `${dir}/2.cryo`, { fsync: false, parent: `${dir}/1.cryo` });

    using chain = await ImageChain.open(`${dir}/2.cryo`);
    const walked = [...chain.records()];
    for (let i = 1; i < walked.length; i++) {
      const before = walked[i - 1];
      assert(
        before.address + BigInt(before.length) <= walked[i].address,
        `record ${i} overlaps the one before`,
      );
    }
    // Every page of the tip's regions, resolved one by one with a binary search of each image's frames.
    let k = 0, pages = 0;
    for (const g of chain.tip.regions.filter((r) => !r.relocatable)) {
      for (let p = g.start; p < g.end; p += P) {
        const image = chain.images.findIndex((img) => img.index.find(p) !== undefined);
        assert(image >= 0, `${hex(p)} is in no image`);
        const r = chain.images[image].index.find(p)!;
        while (k < walked.length && walked[k].address + BigInt(walked[k].length) <= p) k++;
        const w = walked[k];
        assert(w && w.address <= p, `${hex(p)}: no record walked`);
        assertEquals(
          [w.image, w.kind, w.record.address, w.record.length],
          [image, r.kind, r.address, r.length],
          `${hex(p)}`,
        );
        pages++;
      }
    }
    // The case the chain was made for happened: holes over data, data over holes, records in several frames.
    const below = (w: (typeof walked)[number], kind: number) =>
      chain.images.slice(w.image + 1).find((img) => img.index.find(w.address))?.index.find(w.address)
        ?.kind ===
        kind;
    assert(walked.some((w) => w.kind === KIND.HOLE && below(w, KIND.DATA)), "no hole over data");
    assert(walked.some((w) => w.kind === KIND.DATA && below(w, KIND.HOLE)), "no data over a hole");
    assert(walked.some((w) => w.image === 0), "no page of the tip");
    assert(
      chain.images[2].footer.frameCount > 2,
      `${chain.images[2].footer.frameCount} frames in the full image`,
    );
    assert(pages >= Number(size / P), `${pages} pages`);
  } finally {
    removeTrackingMark(t.pid);
    await t.close();
    await Deno.remove(dir, { recursive: true });
  }
});
