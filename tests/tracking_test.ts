import { assert, assertEquals } from "./_assert.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { adoptTracking, trackProcess } from "../lib/kernel/tracking.ts";
import { intersectRuns, runBytes, runsOf, subtractRuns, unionRuns } from "../lib/kernel/run_sets.ts";
import { isUserfaultfd, KEPT_FD_FROM } from "../lib/kernel/uffd.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { Target } from "./_target.ts";
import { readRegions } from "../lib/kernel/maps.ts";

const P = BigInt(PAGE_SIZE);
const MiB = 1n << 20n;

/** Page indices (relative to `base`) of the runs inside `[base, base + bytes)`. */
function pagesIn(runs: BigUint64Array, base: bigint, bytes: bigint): number[] {
  const out: number[] = [];
  const inside = intersectRuns(runs, BigUint64Array.of(base, base + bytes));
  for (let i = 0; i < inside.length; i += 2) {
    for (let a = inside[i]; a < inside[i + 1]; a += P) out.push(Number((a - base) / P));
  }
  return out;
}

const indices = (answer: string) => answer.trim() === "" ? [] : answer.trim().split(" ").map(Number);

Deno.test("unionRuns(), intersectRuns() and subtractRuns() agree with a page-by-page model", () => {
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let round = 0; round < 200; round++) {
    const sets = [0, 1].map(() => {
      const pages = new Set<number>();
      for (let k = 0; k < 20; k++) if (rnd() < 0.5) pages.add(Math.floor(rnd() * 64));
      return pages;
    });
    const runs = sets.map((s) =>
      runsOf([...s].map((p) => ({ start: BigInt(p) * P, end: BigInt(p + 1) * P })))
    );
    const model = (f: (x: boolean, y: boolean) => boolean) =>
      Array.from({ length: 64 }, (_, p) => p).filter((p) => f(sets[0].has(p), sets[1].has(p)));
    assertEquals(pagesIn(unionRuns(runs[0], runs[1]), 0n, 64n * P), model((x, y) => x || y));
    assertEquals(pagesIn(intersectRuns(runs[0], runs[1]), 0n, 64n * P), model((x, y) => x && y));
    assertEquals(pagesIn(subtractRuns(runs[0], runs[1]), 0n, 64n * P), model((x, y) => x && !y));
    assertEquals(runBytes(runs[0]), sets[0].size * PAGE_SIZE);
  }
});

Deno.test("trackProcess() reports exactly the pages a child wrote: single pages, runs, several threads; mapped and moved regions whole", async () => {
  await using t = Target.start();
  const size = 16n * MiB;
  const a = await t.map(size);
  await t.fill(a, size, "random", 1);
  const moved = await t.map(MiB);
  await t.fill(moved, MiB, "random", 2);
  using tracking = trackProcess(t.pid);
  assertEquals(pagesIn(tracking.written({ rearm: false }).runs, a, size), [], "nothing written since arming");

  const single = indices(await t.cmd(`writepages 0x${a.toString(16)} ${size} 37 3`));
  await t.fill(a + 100n * P, 9n * P, "random", 4); // a run of 9 pages
  const threaded = indices(await t.cmd(`twritepages 0x${a.toString(16)} ${size} 200 5 4`));
  const fresh = await t.map(2n * MiB); // mapped since arming
  const movedTo = BigInt(await t.cmd(`mremap 0x${moved.toString(16)} ${MiB} ${4n * MiB}`));

  const w = tracking.written({ rearm: false });
  const expect = [...new Set([...single, ...threaded, ...Array.from({ length: 9 }, (_, k) => 100 + k)])].sort(
    (x, y) => x - y,
  );
  assertEquals(pagesIn(w.runs, a, size), expect);
  const untracked = w.untracked.map((r) => `${r.start}-${r.end}`);
  assert(
    untracked.includes(`${fresh}-${fresh + 2n * MiB}`),
    `the new mapping is reported whole: ${untracked}`,
  );
  assert(w.untracked.some((r) => r.start <= movedTo && r.end >= movedTo + 4n * MiB), "the moved mapping too");
  assertEquals(pagesIn(w.all, fresh, 2n * MiB).length, 512, "all = runs and untracked regions");

  // Looking did not re-arm; re-arming now forgets them and registers the new regions.
  assertEquals(pagesIn(tracking.written().runs, a, size), expect);
  const after = tracking.written({ rearm: false });
  assertEquals(pagesIn(after.runs, a, size), []);
  assertEquals(after.untracked.filter((r) => r.start === fresh).length, 0, "registered by the re-arm");
  await t.fill(fresh + 3n * P, P, "random", 9);
  await t.fill(movedTo + 1000n * P, P, "random", 9);
  const late = tracking.written();
  assertEquals(pagesIn(late.runs, fresh, 2n * MiB), [3]);
  assertEquals(pagesIn(late.runs, movedTo, 4n * MiB), [1000]);
});

Deno.test("trackProcess({ keepInTarget }) outlives this handle: adoptTracking() reads the same written bits; a forked child is unharmed", async () => {
  await using t = Target.start();
  const a = await t.map(4n * MiB);
  await t.fill(a, 4n * MiB, "random", 1);
  const first = trackProcess(t.pid, { keepInTarget: true });
  const fd = first.targetFd;
  first.close();
  assert(fd >= 0 && isUserfaultfd(t.pid, fd), "the target keeps the userfaultfd");
  assert(fd >= KEPT_FD_FROM, `at a high number, out of the program's way: ${fd}`);
  for (const e of Deno.readDirSync(`/proc/${t.pid}/fd`)) {
    const link = Deno.readLinkSync(`/proc/${t.pid}/fd/${e.name}`);
    assert(Number(e.name) === fd || link !== "anon_inode:[userfaultfd]", `a second userfaultfd at ${e.name}`);
  }
  const written = indices(await t.cmd(`writepages 0x${a.toString(16)} ${4n * MiB} 12 8`));
  const zombie = Number(await t.cmd("zombie")); // a fork: the child exits at once, its parent runs on
  assert(zombie > 0);
  using again = adoptTracking(t.pid, fd);
  assertEquals(pagesIn(again.written().runs, a, 4n * MiB), written);
  assertEquals(await t.sum(a, 4n), await t.sum(a, 4n), "still running");
  using frozen = freeze(t.pid);
  again.release(frozen);
  assert(!isUserfaultfd(t.pid, fd), "release() closed the target's copy");
});

Deno.test("trackProcess('self') tracks this process's own regions", () => {
  const buf = new Uint8Array(64 * PAGE_SIZE);
  buf.fill(1);
  const at = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  const start = at - at % P + P, end = start + 32n * P;
  using tracking = trackProcess("self", { filter: (r) => r.start <= start && r.end >= end });
  const off = Number(start - at);
  buf[off + 5 * PAGE_SIZE] = 9;
  buf[off + 6 * PAGE_SIZE + 100] = 9;
  assertEquals(pagesIn(tracking.written().runs, start, end - start), [5, 6]);
  assertEquals(pagesIn(tracking.written().runs, start, end - start), []);
});

Deno.test("trackProcess() reports single pages written inside transparent huge pages", async (t) => {
  await using child = Target.start();
  const h = BigInt(await child.cmd(`hugemap ${8n * MiB}`));
  await child.fill(h, 8n * MiB, "random", 1);
  const huge = readRegions(child.pid, { smaps: true }).find((g) => g.start <= h && g.end > h)!.anonHugePages;
  if (huge === 0) {
    await t.step({ name: "no transparent huge pages here", ignore: true, fn: () => {} });
    return;
  }
  using tracking = trackProcess(child.pid);
  const wrote = indices(await child.cmd(`writepages 0x${h.toString(16)} ${8n * MiB} 5 7`));
  assertEquals(pagesIn(tracking.written().runs, h, 8n * MiB), wrote);
});
