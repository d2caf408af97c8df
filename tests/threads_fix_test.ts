import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { LayoutMismatchError } from "../lib/errors.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { Target } from "./_target.ts";
import { threadReport } from "../lib/kernel/thread_report.ts";
import { LineChild } from "../lib/kernel/child.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { decodeThreads } from "../lib/kernel/threads.ts";
import { endThread, recreatable } from "../lib/kernel/threads_fix.ts";

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
    let after: string;
    try {
      after = await app.request("state", 30_000);
    } catch (e) {
      throw new Error(
        `${(e as Error).message}; the recreated ${r.threadsRecreated}:\n${threadReport(app.pid)}`,
      );
    }
    assertEquals(after, first);
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

Deno.test("restore() creates again a thread that waited for a lock, and it takes the lock once it is free", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const tid = Number(await target.cmd("lockwait")); // the leader holds the mutex, the thread waits for it
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.cmd("unlock");
    for (let i = 0; tids(target.pid).includes(tid); i++) {
      assert(i < 500, "the locker did not end");
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(await target.cmd("lockgot"), "1");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.threadsRecreated, [tid]);
    assertEquals(await target.cmd("lockgot"), "0", "rolled back: it has not had the mutex yet");
    await target.cmd("unlock");
    for (let i = 0; (await target.cmd("lockgot")) !== "1" || tids(target.pid).includes(tid); i++) {
      assert(i < 500, "the recreated locker did not take the mutex and end");
      await new Promise((r) => setTimeout(r, 10));
    }
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() refuses a thread of the checkpoint caught running, naming it and why, before writing", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    await target.cmd("threads 1"); // spins in user code
    const spinner = tids(target.pid).find((t) => t !== target.pid)!;
    // Under load the new thread may not have run yet (then it is caught just after clone3, which is
    // recreatable): wait, bounded, until it has spent user time spinning.
    const utime = () =>
      Number(Deno.readTextFileSync(`/proc/${target.pid}/task/${spinner}/stat`).split(") ")[1].split(" ")[11]);
    for (let i = 0; i < 500 && utime() === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert(utime() > 0, "the spinner ran");
    const a = await target.map(1 << 20);
    await target.fill(a, 1 << 20, "random", 1);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    {
      using frozen = freeze(target.pid);
      endThread(frozen, spinner);
    }
    await target.fill(a, 1 << 20, "random", 2);
    const now = await target.sum(a, 1 << 20);
    const e = await assertRejects(() => restore(target.pid, `${dir}/a.cryo`), LayoutMismatchError);
    assertMatch(
      e.message,
      new RegExp(
        `thread ${spinner} of the checkpoint has ended and cannot be created again: it was caught running user code`,
      ),
    );
    assertEquals(await target.sum(a, 1 << 20), now, "nothing was written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() into a target whose short-lived threads contend for a mutex is whole or refused, and it lives", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const stats = BigInt(await target.cmd("lockloop"));
    const ticks = () => target.cmd(`peek 0x${(stats + 8n).toString(16)}`);
    const a = await target.map(1 << 20);
    const seen = { restored: 0, refused: 0, recreated: 0 };
    for (let round = 0; round < 10; round++) {
      await target.fill(a, 1 << 20, "random", round);
      const want = await target.sum(a, 1 << 20);
      await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
      await target.fill(a, 1 << 20, "random", 100 + round);
      const now = await target.sum(a, 1 << 20);
      try {
        const r = await restore(target.pid, `${dir}/a.cryo`);
        assertEquals(await target.sum(a, 1 << 20), want);
        seen.restored++;
        seen.recreated += r.threadsRecreated.length;
      } catch (e) {
        assert(e instanceof LayoutMismatchError, String(e));
        assertMatch(e.message, /cannot be created again: it was/);
        assertEquals(await target.sum(a, 1 << 20), now, "nothing was written");
        seen.refused++;
      }
      const before = await ticks(); // its threads still take the mutex in turn (bounded wait)
      for (let i = 0; (await ticks()) === before; i++) {
        assert(i < 300, `round ${round}: no thread got the mutex for 3 s (${JSON.stringify(seen)})`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    assertEquals(seen.restored + seen.refused, 10);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
