// Hibernating and waking a process whose image has very many records stays under the bench goal of 96 MiB of
// cryo's peak RSS (issue 19), eagerly and lazily, and brings its memory back exactly. The child maps 1 GiB and
// writes every other page: an image of 262,144 records (a one-page data record and a hole, over and over). Each
// command runs as a fresh `deno run -A cli.ts` process under ffi/build/cryo_rusage (bench/rusage.c), which reports
// its ru_maxrss. When the lazy wake kept a source per record and served the image from a mapping, `wake --lazy`
// of twice as many records peaked at 1,438 MiB (the image's pages counted in its RSS as they were served).

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { peakRss } from "./_peak_rss.ts";

const MiB = 2 ** 20;
const GOAL = 96 * MiB;
const BYTES = 2 ** 30;
/** Filling and summing 1 GiB in the child: seconds alone, much longer when the suite runs in parallel. */
const SUM_MS = 300_000;

Deno.test("cryo hibernate, wake --lazy and wake of a process of 262,144 records stay under 96 MiB of RSS, and its memory comes back exactly", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(BYTES);
    const range = `0x${a.toString(16)} ${BYTES}`;
    await target.cmd(`fill ${range} stride:2 1`, SUM_MS);
    const original = await target.cmd(`sum ${range}`, SUM_MS);
    const image = `${dir}/h.cryo`;
    const pid = String(target.pid);
    const cryo = async (args: string[]) => {
      const c = await peakRss(args);
      assertEquals(c.code, 0, c.stderr);
      console.log(`cryo ${args.join(" ")}: peak RSS ${(c.rss / MiB).toFixed(1)} MiB`);
      assert(c.rss <= GOAL, `cryo ${args[0]}: peak RSS ${(c.rss / MiB).toFixed(1)} MiB, above 96 MiB`);
      return c;
    };

    await cryo(["hibernate", "--pid", pid, "-o", image, "-q"]);
    // Asked while it is stopped: the child reads every page as soon as the lazy wake resumes it, while the rest
    // loads in the background, so its faults are served from the image.
    const touched = target.cmd(`sum ${range}`, SUM_MS);
    touched.catch(() => {}); // awaited below; if the wake fails first, the child is killed in `finally`
    const lazy = await cryo(["wake", "--pid", pid, "--lazy", "--json", image]);
    assertEquals(await touched, original, "every page read during the lazy wake is the image's");
    const woke = JSON.parse(lazy.stdout);
    assert(woke.lazy && woke.faults.faults > 0, `faults served: ${JSON.stringify(woke.faults)}`);
    assertEquals(woke.faults.errors, 0);
    assertEquals(await target.cmd(`sum ${range}`, SUM_MS), original, "and after it");

    await cryo(["hibernate", "--pid", pid, "-o", image, "-q"]);
    await cryo(["wake", "--pid", pid, "-q", image]);
    assertEquals(await target.cmd(`sum ${range}`, SUM_MS), original, "the eager wake wrote every page back");
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true });
  }
});
