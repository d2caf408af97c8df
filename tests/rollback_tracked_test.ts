import { assert, assertEquals } from "./_assert.ts";
import { PAGE_SIZE } from "../ffi/libc.ts";
import { snapshot } from "../lib/ops/snapshot.ts";
import { restore } from "../lib/ops/restore.ts";
import { Target } from "./_target.ts";

const P = BigInt(PAGE_SIZE);
const MiB = 1n << 20n;

/** Resident bytes of a process (VmRSS). */
function rss(pid: number): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+) kB/);
  return Number(m![1]) * 1024;
}

/** A child with a 32 MiB region of random data and a 32 MiB region of which only the first half is populated. */
async function workload(t: Target) {
  const data = await t.map(32n * MiB);
  await t.fill(data, 32n * MiB, "random", 1);
  const sparse = await t.map(32n * MiB);
  await t.fill(sparse, 16n * MiB, "random", 2);
  const doomed = await t.map(4n * MiB); // unmapped after the snapshot
  await t.fill(doomed, 4n * MiB, "random", 3);
  const moving = await t.map(2n * MiB); // moved after the snapshot
  await t.fill(moving, 2n * MiB, "random", 4);
  return { data, sparse, doomed, moving };
}

/** The workload's populated bytes, summed by the child (reading only populated pages: RSS is not touched). */
async function fingerprint(t: Target, w: Awaited<ReturnType<typeof workload>>): Promise<string[]> {
  return [
    await t.sum(w.data, 32n * MiB),
    await t.sum(w.sparse, 16n * MiB),
    await t.sum(w.doomed, 4n * MiB),
    await t.sum(w.moving, 2n * MiB),
  ];
}

/** Writes of every kind the tracking must see (and a layout the rollback must put back). */
async function scribble(t: Target, w: Awaited<ReturnType<typeof workload>>, seed: number) {
  const hex = (a: bigint) => `0x${a.toString(16)}`;
  await t.cmd(`writepages ${hex(w.data)} ${32n * MiB} 50 ${seed}`);
  await t.fill(w.data + BigInt(seed % 7) * MiB, MiB, "random", seed); // a run
  await t.cmd(`twritepages ${hex(w.data)} ${32n * MiB} 300 ${seed + 1} 4`); // four threads
  await t.fill(w.sparse + 16n * MiB, 12n * MiB, "random", seed); // first populated since: must be released
  await t.cmd(`release ${hex(w.data + 20n * MiB)} ${2n * MiB}`); // data dropped: no written bit left
  await t.cmd(`unmap ${hex(w.doomed)} ${4n * MiB}`);
  await t.cmd(`mremap ${hex(w.moving)} ${2n * MiB} ${8n * MiB}`);
  const fresh = await t.map(8n * MiB); // mapped since: unmapped by the rollback
  await t.fill(fresh, 8n * MiB, "random", seed);
}

Deno.test("snapshot().rollback() with tracking writes back only what was written, releases what was populated since, and keeps every byte", async () => {
  await using t = Target.start();
  const w = await workload(t);
  const before = await fingerprint(t, w);
  const rssBefore = rss(t.pid);
  await using snap = await snapshot(t.pid, { settleMs: 50 });
  const all = await t.cmd("sumall"); // reads every page (the sparse half too): from here on RSS counts them
  assert(snap.tracked, "tracking is armed on this kernel");
  for (let round = 1; round <= 3; round++) {
    await scribble(t, w, round * 10);
    assert(
      rss(t.pid) > rssBefore + 8 * 1024 * 1024,
      `round ${round}: the scribbling populated memory: ${rssBefore} -> ${rss(t.pid)}`,
    );
    const r = await snap.rollback();
    assertEquals(r.tracking?.used, true, `round ${round}: ${r.tracking?.reason}`);
    assert((r.tracking?.releasedBytes ?? 0) >= 12 * 1024 * 1024, `released ${r.tracking?.releasedBytes}`);
    assert(r.dataBytes > 0 && r.journalBytes < 64 * 1024 * 1024, `journal ${r.journalBytes}`);
    const grown = rss(t.pid) - rssBefore;
    assert(grown < 2 * 1024 * 1024, `round ${round}: RSS back (grew ${grown} bytes)`);
    assertEquals(await fingerprint(t, w), before, `round ${round}: every byte back`);
  }
  // The hash, not the region count: regions mapped back may merge differently with their neighbours.
  assertEquals(
    (await t.cmd("sumall")).split(" ")[0],
    all.split(" ")[0],
    "every region; released pages read as zero",
  );
});

Deno.test("a tracked rollback and a full rollback leave the same bytes; snapshot({ track: false }) says why it took the full path", async () => {
  await using t = Target.start();
  const w = await workload(t);
  const before = await t.cmd("sumall");
  await using snap = await snapshot(t.pid, { settleMs: 50, track: false });
  await scribble(t, w, 5);
  const r = await snap.rollback();
  assertEquals(r.tracking?.used, false);
  assert(r.tracking?.reason?.includes("track: false"), r.tracking?.reason);
  assertEquals(await t.cmd("sumall"), before);
  // The image says nothing of tracking: restore() alone takes the full path without a word.
  await scribble(t, w, 6);
  const plain = await restore(t.pid, snap.path);
  assertEquals(plain.tracking, undefined);
  assertEquals(await t.cmd("sumall"), before);
});

Deno.test("a tracked rollback puts registers back and ends threads born since", async () => {
  await using t = Target.start();
  const w = await workload(t);
  await using snap = await snapshot(t.pid, { settleMs: 50 });
  const before = await t.sum(w.data, 32n * MiB);
  await t.cmd("threads 2"); // born since: ended by the rollback
  await t.fill(w.data, P, "random", 77);
  const r = await snap.rollback();
  assertEquals(r.tracking?.used, true);
  assertEquals(r.threadsEnded.length, 2);
  assert(r.threadsRestored >= 1);
  assertEquals(
    await t.sum(w.data, 32n * MiB),
    before,
    "the stacks of the ended threads stay mapped: not sumall",
  );
  assertEquals((await t.cmd("pid")).trim(), String(t.pid), "it runs on after the rollback");
});

Deno.test("a tracked rollback puts the heap back with brk, though brk made the growth a region of its own", async () => {
  await using t = Target.start();
  await t.cmd(`grow ${64 * 1024}`);
  const heap = () =>
    Deno.readTextFileSync(`/proc/${t.pid}/maps`).split("\n").filter((l) => l.endsWith("[heap]"));
  await using snap = await snapshot(t.pid, { settleMs: 50 });
  const before = heap();
  for (let round = 0; round < 2; round++) {
    await t.cmd(`grow ${1 << 20}`);
    assertEquals(
      heap().length,
      before.length + 1,
      "the growth is a region of its own (tracking registered the heap)",
    );
    const r = await snap.rollback();
    assertEquals(r.tracking?.used, true);
    assert(r.layoutChanges.some((c) => c.startsWith("brk ")), r.layoutChanges.join("; "));
    assertEquals(heap(), before);
  }
});
