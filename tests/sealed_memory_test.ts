// An encrypted image of many records is checkpointed, verified and restored in bounded memory (issue 19): a 2
// GiB child with every other page written makes an image of 524,288 one-page records. Each command runs as a
// fresh `deno run -A cli.ts` process under ffi/build/cryo_rusage (tests/_peak_rss.ts), which reports its
// ru_maxrss. Measured in one session (docs/BENCHMARKING.md), before -> after: `checkpoint --key-file` 817 MiB
// and 127 s -> 162 MiB and 7.5 s (a pooled 1 MiB buffer was held per one-page chunk until its frame was
// written, and every frame table kept for a one-shot metadata MAC), `verify --key-file` 181 -> 101-121 MiB,
// `restore --key-file` 185 -> 166-175 MiB from the file and 177 -> 155 MiB from stdin, then 145 and 132 MiB
// once holes were zeroed as numbers a window of page runs at a time; then (issue 19's restores of coded
// images: no `Deno.UnsafePointer.of()` of a view per record, an encrypted file read by the stream reader alone)
// `verify` 107-110 -> 85-87 MiB, `restore` 140-158 -> 92-94 MiB, `restore -` 124-130 -> 87-90 MiB; and the
// checkpoint's one-page chunks sealed on the calling thread into reused slabs, without a pointer object each:
// 162-188 -> 122-170 MiB (its peak moves by up to ~45 MiB with the moment V8's young generation fills). Every bound fails the old
// code; the goal is 96 MiB for all of them (the checkpoint is not there yet).

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { peakRss } from "./_peak_rss.ts";
import { fragmented } from "./_fragmented.ts";

const MiB = 2 ** 20;
const BYTES = 2 * 2 ** 30;
/** Bounds per command: what each measured, with room for a loaded machine (the goal is 96 MiB). */
const BOUND = {
  checkpoint: 200 * MiB,
  verify: 100 * MiB,
  restore: 106 * MiB,
  "restore -": 100 * MiB,
};

Deno.test("cryo checkpoint, verify and restore (from a file and from stdin) of an encrypted image of 524,288 records stay within their RSS bounds (checkpoint 200 MiB, verify 100 MiB, restores 106 and 100 MiB) and restore the memory", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const key = `${dir}/k.key`;
    await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const { fill, sum } = await fragmented(target, BYTES);
    const original = await sum();
    const image = `${dir}/sealed.cryo`;
    const pid = String(target.pid);
    const bounded = async (what: keyof typeof BOUND, args: string[], stdin?: string) => {
      const c = await peakRss([...args, "--key-file", key], { stdin });
      assertEquals(c.code, 0, c.stderr);
      console.log(`cryo ${what} --key-file: peak RSS ${(c.rss / MiB).toFixed(1)} MiB`);
      assert(c.rss <= BOUND[what], `cryo ${what} --key-file: peak RSS ${(c.rss / MiB).toFixed(1)} MiB`);
    };
    await bounded("checkpoint", ["checkpoint", "--pid", pid, "-o", image, "--no-fsync", "-q"]);
    await bounded("verify", ["verify", image]);
    await fill(2); // every data page changed: all written back
    await bounded("restore", ["restore", "--pid", pid, "-q", image]);
    assertEquals(await sum(), original, "the restore from the file wrote the image's pages back");
    await fill(2);
    await bounded("restore -", ["restore", "--pid", pid, "-q", "-"], image);
    assertEquals(await sum(), original, "the streamed restore wrote the image's pages back");
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true });
  }
});
