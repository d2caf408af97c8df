import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { LineChild } from "../lib/kernel/child.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { decodeThreads } from "../lib/kernel/threads.ts";
import { recreatable } from "../lib/kernel/threads_fix.ts";

const workload = new URL("../examples/workload.ts", import.meta.url).pathname;
const tids = (pid: number) => [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name));

Deno.test("restore() creates again the idle pool threads a Deno program ended, and it answers after", async () => {
  const dir = await Deno.makeTempDir();
  await using app = LineChild.spawn(Deno.execPath(), ["run", "-A", workload]);
  try {
    const first = await app.request("state", 30_000);
    await checkpoint(app.pid, `${dir}/a.cryo`, { fsync: false });
    const then = tids(app.pid);
    await app.request("work 2");
    // Deno's blocking pool ends a thread idle for ~10 s.
    const deadline = Date.now() + 30_000;
    while (then.every((t) => tids(app.pid).includes(t))) {
      assert(Date.now() < deadline, "no pool thread ended within 30 s");
      await new Promise((r) => setTimeout(r, 250));
    }
    const r = await restore(app.pid, `${dir}/a.cryo`, { endBornThreads: true }); // it may have started new ones
    assert(r.threadsRecreated.length > 0, JSON.stringify(r));
    assertEquals(r.threadsRecreated, r.threadsGone);
    assertEquals(await app.request("state", 10_000), first);
    await app.request("work 1", 10_000);
    assert(/ledger=2 /.test(await app.request("state", 10_000)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("recreatable() accepts a thread blocked in a timed wait and refuses one caught running", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    await target.cmd("threads 1"); // one thread spinning on its counter
    const sleeping = target.cmd("sleep 3000"); // the leader sleeps in nanosleep
    await new Promise((r) => setTimeout(r, 500));
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await sleeping;
    using loader = await MemoryLoader.open(`${dir}/a.cryo`);
    const threads = decodeThreads(loader.section("threads")!, "a.cryo");
    assertEquals(recreatable(threads[0]), true, "the leader waits in nanosleep");
    assertEquals(recreatable(threads[1]), false, "the spinning thread runs user code");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() with endBornThreads ends the threads started since, and the target runs on", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(1 << 20);
    await target.fill(a, 1 << 20, "random", 1);
    const want = await target.sum(a, 1 << 20);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const then = tids(target.pid).sort();
    await target.cmd("threads 2"); // born since the checkpoint, spinning
    await target.fill(a, 1 << 20, "random", 2);
    const r = await restore(target.pid, `${dir}/a.cryo`, { endBornThreads: true });
    assertEquals(r.threadsEnded.length, 2);
    assertEquals(tids(target.pid).sort(), then);
    assertEquals(await target.sum(a, 1 << 20), want);
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
