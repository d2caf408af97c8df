import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { helper } from "../ffi/helper.ts";
import { addrOf, libc, processVmRead } from "../ffi/libc.ts";
import { SystemError, TracedError } from "../lib/errors.ts";
import { freeze, thawAll } from "../lib/kernel/freeze.ts";
import { readThreadState, register, setRegister } from "../lib/kernel/threads.ts";
import { Target } from "./_target.ts";

const RSEQ_SIG = 0x53053053;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Read `n` 64-bit words `stride` words apart from the child's memory, without asking the child. */
function readWords(pid: number, addr: bigint, n: number, stride = 1): bigint[] {
  const buf = new BigUint64Array(n * stride);
  processVmRead(pid, addrOf(Deno.UnsafePointer.of(buf)), addr, BigInt(buf.byteLength));
  return Array.from({ length: n }, (_, i) => buf[i * stride]);
}

function tasks(pid: number): number[] {
  return Deno.readDirSync(`/proc/${pid}/task`).map((e) => Number(e.name)).toArray().sort((a, b) => a - b);
}

function taskStatus(pid: number, tid: number): { state: string; tracer: number } {
  const text = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`);
  return {
    state: text.match(/^State:\s*(\S)/m)![1],
    tracer: Number(text.match(/^TracerPid:\s*(\d+)/m)![1]),
  };
}

/** A thread's scheduling policy (0: SCHED_OTHER, 1: SCHED_FIFO) and nice value, by sched_getattr. */
function schedOf(tid: number): { policy: number; nice: number } {
  const attr = new Uint8Array(56);
  const r = helper().cryo_syscall6(
    315n, // sched_getattr
    BigInt(tid),
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(attr))),
    56n,
    0n,
    0n,
    0n,
  );
  assertEquals(r, 0n, `sched_getattr of tid ${tid}`);
  const v = new DataView(attr.buffer);
  return { policy: v.getUint32(4, true), nice: v.getInt32(16, true) };
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

Deno.test("freeze() stops all 8 counting threads for 200 ms, records their registers, and thaw() lets them run", async () => {
  await using target = Target.start();
  await target.cmd("threads 8");
  const counters = BigInt(await target.cmd("counteraddr"));
  await until("counters to move", () => readWords(target.pid, counters, 8, 8).every((c) => c > 0n));
  const all = tasks(target.pid);
  assertEquals(all.length, 9);

  const frozen = freeze(target.pid);
  try {
    assertEquals([...frozen.tids].sort((a, b) => a - b), all);
    assertEquals(frozen.tids[0], target.pid);
    for (const tid of all) assertEquals(taskStatus(target.pid, tid), { state: "t", tracer: libc.gettid() });
    // Threads boosted to reach their stop have their scheduling given back while stopped; ours too.
    for (const tid of all) assertEquals(schedOf(tid), { policy: 0, nice: 0 }, `tid ${tid}`);
    assertEquals(schedOf(libc.gettid()).policy, 0);
    const before = readWords(target.pid, counters, 8, 8);
    await sleep(200);
    assertEquals(readWords(target.pid, counters, 8, 8), before);

    assertEquals(frozen.threads.map((t) => t.tid), frozen.tids);
    for (const t of frozen.threads) {
      assertEquals(t.general.byteLength, 216);
      assert(t.vector.byteLength >= 512, `tid ${t.tid}: ${t.vector.byteLength} bytes of vector state`);
      assert(register(t, "rip") > 0x1000n && register(t, "rsp") > 0x1000n, `tid ${t.tid}: rip/rsp unset`);
      assertEquals(register(t, "fs_base") === 0n, false);
      assertEquals(t.rseq?.signature, RSEQ_SIG);
      assertEquals(t.rseq?.abiSize, 32);
    }
    // Each thread has its own stack and its own TLS.
    assertEquals(new Set(frozen.threads.map((t) => register(t, "fs_base"))).size, 9);

    const moving = readWords(target.pid, counters, 8, 8);
    assertEquals(frozen.thaw(), 9);
    assertEquals(frozen.thaw(), 0);
    assert(frozen.thawed);
    await until("counters to move after thaw", () => {
      const now = readWords(target.pid, counters, 8, 8);
      return now.every((c, i) => c > moving[i]);
    });
    for (const tid of all) {
      const s = taskStatus(target.pid, tid);
      assert(s.state === "S" || s.state === "R", `tid ${tid} is ${s.state}`);
      assertEquals(s.tracer, 0);
    }
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    frozen.thaw();
  }
});

Deno.test("freeze() catches every thread of a child that spawns threads in a tight loop", async () => {
  await using target = Target.start();
  const stats = BigInt(await target.cmd("spawnloop"));
  await until("threads to be born", () => readWords(target.pid, stats, 1)[0] > 200n);
  for (let round = 0; round < 3; round++) {
    const frozen = freeze(target.pid, { registers: round === 0 });
    try {
      const listed = tasks(target.pid);
      const caught = new Set(frozen.tids);
      for (const tid of listed) {
        assert(caught.has(tid), `round ${round}: tid ${tid} runs but was not frozen`);
        assertEquals(taskStatus(target.pid, tid).state, "t");
      }
      const [born, ticks] = readWords(target.pid, stats, 2);
      await sleep(100);
      assertEquals(
        readWords(target.pid, stats, 2),
        [born, ticks],
        `round ${round}: something ran while frozen`,
      );
      assertEquals(tasks(target.pid), listed);
    } finally {
      frozen.thaw();
    }
    const born = readWords(target.pid, stats, 1)[0];
    await until("threads to be born after thaw", () => readWords(target.pid, stats, 1)[0] > born + 50n);
  }
});

Deno.test("freeze() of a child killed during the freeze fails with a clear error and leaves nothing attached", async () => {
  // A Worker kills the child the moment the main thread starts freezing it.
  const sab = new SharedArrayBuffer(8);
  const flag = new Int32Array(sab);
  const src = `self.onmessage = (e) => { const f = new Int32Array(e.data); postMessage("ready");
    for (;;) { Atomics.wait(f, 0, 0); const pid = Atomics.load(f, 1); if (pid < 0) break;
      try { Deno.kill(pid, "SIGKILL"); } catch { /* reaped already */ } Atomics.store(f, 0, 0); } };`;
  const worker = new Worker(`data:application/javascript,${encodeURIComponent(src)}`, { type: "module" });
  try {
    const ready = new Promise((r) => worker.onmessage = r);
    worker.postMessage(sab);
    await ready;
    let failures = 0;
    for (let attempt = 0; attempt < 10 && failures < 2; attempt++) {
      const target = Target.start();
      try {
        await target.cmd("threads 64");
        Atomics.store(flag, 1, target.pid);
        Atomics.store(flag, 0, 1);
        Atomics.notify(flag, 0);
        const started = performance.now();
        try {
          // Without the boost, 65 spinning threads take a while to stop: the kill lands meanwhile.
          freeze(target.pid, { boost: false }).thaw(); // the kill came too late: try again
        } catch (e) {
          failures++;
          assert(e instanceof SystemError, `${e}`);
          assertEquals(e.code, "ESRCH");
          assertMatch(
            e.message,
            new RegExp(`^Cannot freeze pid ${target.pid}: the process (exited during the freeze|has exited)`),
          );
          assert(performance.now() - started < 1500, "freeze took too long to notice");
        }
        // Nothing left attached: the child can be reaped (a traced zombie thread would block it).
        const reaped = await Promise.race([target.close().then(() => true), sleep(5000).then(() => false)]);
        assert(reaped, `pid ${target.pid} could not be reaped: something is still attached`);
        assertThrows(() => Deno.statSync(`/proc/${target.pid}/task`), Deno.errors.NotFound);
      } finally {
        await target.close();
      }
    }
    assert(failures >= 1, "the kill never landed during a freeze");
  } finally {
    Atomics.store(flag, 1, -1);
    Atomics.store(flag, 0, 1);
    Atomics.notify(flag, 0);
    worker.terminate();
  }
});

Deno.test("freeze() of a pid that does not exist throws ESRCH naming the pid", () => {
  const e = assertThrows(() => freeze(0x3ffffff0), SystemError);
  assertEquals(e.code, "ESRCH");
  assertEquals(e.message, `Cannot freeze pid ${0x3ffffff0}: ESRCH (No such process)`);
  assertThrows(() => freeze(Deno.pid), RangeError, "it is this process");
  assertThrows(() => freeze(-1), RangeError);
});

Deno.test("freeze() of a process traced by someone else says EPERM and names the tracer pid and command line", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  using first = freeze(target.pid);
  const e = assertThrows(() => freeze(target.pid), TracedError);
  assert(e instanceof SystemError);
  assertEquals(e.code, "EPERM");
  assertEquals(e.tracerPid, Deno.pid);
  const cmdline = Deno.readTextFileSync("/proc/self/cmdline").split("\0").slice(0, -1);
  assertEquals(e.tracerCommand, cmdline);
  assertEquals(
    e.message.slice(0, e.message.indexOf(": ", e.message.indexOf("already traced"))),
    `Cannot freeze pid ${target.pid} (already traced by pid ${Deno.pid}${
      libc.gettid() === Deno.pid ? "" : ` (thread ${libc.gettid()})`
    }`,
  );
  assertMatch(e.message, /\): EPERM \(Operation not permitted\)$/);
  assert(e.message.includes(cmdline[0]), e.message);
  // The failed attempt left the first freeze intact.
  assertEquals(taskStatus(target.pid, target.pid).state, "t");
  assertEquals(first.thaw(), 3);
});

Deno.test("Frozen.setRegisters() writes registers that a fresh read returns", async () => {
  await using target = Target.start();
  await target.cmd("threads 1");
  using frozen = freeze(target.pid);
  const t = frozen.threads.find((x) => x.tid !== target.pid)!;
  const changed = { ...t, general: t.general.slice(), vector: t.vector.slice() };
  setRegister(changed, "r12", 0x1234_5678_9abc_def0n);
  changed.vector[160] ^= 0xff; // a byte of xmm0 (FXSAVE layout: XMM registers start at 160)
  frozen.setRegisters(t.tid, changed);
  const reread = readThreadState(t.tid);
  assertEquals(register(reread, "r12"), 0x1234_5678_9abc_def0n);
  assertEquals(reread.vector[160], changed.vector[160]);
  frozen.setRegisters(t.tid, t);
  assertEquals(readThreadState(t.tid).general, t.general);
  assertThrows(() => frozen.setRegisters(1, t), RangeError, "not frozen here");
});

Deno.test("thawAll() called from a signal listener thaws every frozen process", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  const counters = BigInt(await target.cmd("counteraddr"));
  const frozen = freeze(target.pid, { registers: false });
  let thawed = -1;
  const listener = () => thawed = thawAll();
  Deno.addSignalListener("SIGUSR2", listener);
  try {
    Deno.kill(Deno.pid, "SIGUSR2");
    await until("the listener to run", () => thawed >= 0);
    assertEquals(thawed, 1);
    assert(frozen.thawed);
    const at = readWords(target.pid, counters, 2, 8);
    await until("counters to move", () => readWords(target.pid, counters, 2, 8).every((c, i) => c > at[i]));
    assertEquals(taskStatus(target.pid, target.pid).tracer, 0);
  } finally {
    Deno.removeSignalListener("SIGUSR2", listener);
    frozen.thaw();
  }
});

Deno.test("Frozen.thaw() of a child killed while frozen reaps its threads and leaves nothing attached", async () => {
  const target = Target.start();
  try {
    await target.cmd("threads 4");
    const frozen = freeze(target.pid);
    Deno.kill(target.pid, "SIGKILL");
    const started = performance.now();
    assertEquals(frozen.thaw(), 0);
    assert(performance.now() - started < 1500, "thaw took too long");
    const reaped = await Promise.race([target.close().then(() => true), sleep(5000).then(() => false)]);
    assert(reaped, `pid ${target.pid} could not be reaped: something is still attached`);
  } finally {
    await target.close();
  }
});
