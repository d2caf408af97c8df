// A compressed checkpoint of an image of many records stays within its RSS bound (issue 19): a 2 GiB child with
// every other page written makes 524,288 one-page records, checkpointed raw while stopped and then transcoded
// (lib/ops/transcode.ts). Each command runs as a fresh `deno run -A cli.ts` process under ffi/build/cryo_rusage
// (tests/_peak_rss.ts). Measured in one session (docs/BENCHMARKING.md), old code and new alternated: `--compress
// zstd:1` 238-288 MiB -> 131-173 MiB and `--compress lz4` 239-267 -> 141-160 MiB, once the sample of the raw
// image no longer made an array of every record (130 MiB of V8's heap) and a one-page chunk was encoded on the
// calling thread without a promise chain (880 -> 315 MiB allocated per GiB transcoded); then 115 MiB (zstd:1)
// once no pointer object was made per chunk. The goal is 96 MiB; what is left is mostly V8's young generation,
// grown over half a million records.

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { peakRss } from "./_peak_rss.ts";
import { fragmented } from "./_fragmented.ts";

const MiB = 2 ** 20;
const BYTES = 2 * 2 ** 30;
/**
 * The bound until the goal of 96 MiB is met: 113-118 MiB measured on a quiet machine, 164 MiB once under the
 * whole suite and two busy loops (the young generation fills at another moment); the old code took 235 or more.
 */
const BOUND = 200 * MiB;

Deno.test("cryo checkpoint --compress zstd:1 and lz4 of 524,288 records stay under 200 MiB of RSS, and the zstd image restores the memory", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const { fill, sum } = await fragmented(target, BYTES);
    const original = await sum();
    const pid = String(target.pid);
    for (const codec of ["lz4", "zstd:1"]) {
      const image = `${dir}/${codec.replace(":", "")}.cryo`;
      const c = await peakRss([
        "checkpoint",
        "--pid",
        pid,
        "-o",
        image,
        "--compress",
        codec,
        "--no-fsync",
        "-q",
      ]);
      assertEquals(c.code, 0, c.stderr);
      console.log(`cryo checkpoint --compress ${codec}: peak RSS ${(c.rss / MiB).toFixed(1)} MiB`);
      assert(c.rss <= BOUND, `cryo checkpoint --compress ${codec}: peak RSS ${(c.rss / MiB).toFixed(1)} MiB`);
    }
    await fill(2); // every data page changed
    const r = await peakRss(["restore", "--pid", pid, "-q", `${dir}/zstd1.cryo`]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(await sum(), original, "the restore of the zstd image wrote the image's pages back");
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true });
  }
});
