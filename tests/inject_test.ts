import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { addrOf, processVmRead } from "../ffi/libc.ts";
import { MADV, MAP, PROT } from "../ffi/constants.ts";
import { CryoError, SystemError } from "../lib/errors.ts";
import { freeze, type Frozen, thawAll } from "../lib/kernel/freeze.ts";
import { inject, SYS } from "../lib/kernel/inject.ts";
import { readThreadState, register, type ThreadState } from "../lib/kernel/threads.ts";
import { Target } from "./_target.ts";

const MiB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function statusField(pid: number, field: string): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).match(new RegExp(`^${field}:\\s*(.*)$`, "m"))![1];
}

function rssKiB(pid: number): number {
  return Number(statusField(pid, "VmRSS").split(/\s+/)[0]);
}

function maps(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/maps`);
}

function mapsLine(pid: number, addr: bigint): string | undefined {
  return maps(pid).split("\n").find((l) => BigInt(`0x${l.split("-")[0] || "0"}`) === addr);
}

/** Every register of every frozen thread, read afresh, equals what the freeze recorded. */
function assertRegistersUnchanged(frozen: Frozen): void {
  for (const before of frozen.threads) {
    const now: ThreadState = readThreadState(before.tid);
    assertEquals(now.general, before.general, `general registers of tid ${before.tid}`);
    assertEquals(now.vector, before.vector, `vector registers of tid ${before.tid}`);
  }
}

/** Wait (bounded) until the child's main thread sits in a blocking call. */
async function untilSleeping(pid: number): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (statusField(pid, "State").startsWith("S")) return;
    await sleep(5);
  }
  throw new Error(`pid ${pid} did not block`);
}

Deno.test("Injector.madvise(DONTNEED) releases 256 MiB of a child: RSS drops, pages read zero, the rest is unchanged", async () => {
  await using target = Target.start();
  const big = await target.map(256 * MiB);
  await target.fill(big, 256 * MiB, "random", 7);
  const other = await target.map(8 * MiB);
  await target.fill(other, 8 * MiB, "text", 3);
  const exclude = `0x${big.toString(16)} ${256 * MiB}`;
  const sumBefore = await target.cmd(`sumall ${exclude}`);
  assertEquals(await target.cmd(`sumall ${exclude}`), sumBefore, "sumall is stable");
  const rssBefore = rssKiB(target.pid);
  assert(rssBefore > 256 * 1024, `RSS ${rssBefore} KiB`);
  await untilSleeping(target.pid);
  {
    using frozen = freeze(target.pid);
    const mapsBefore = maps(target.pid);
    {
      using inj = inject(frozen);
      inj.madvise(big, BigInt(256 * MiB), MADV.DONTNEED);
      assert(inj.scratchRange === undefined);
      inj.write(new TextEncoder().encode("scratch in use")); // maps the scratch area, which close() removes
      assert(inj.scratchRange !== undefined);
    }
    assertEquals(maps(target.pid), mapsBefore, "no scratch mapping left behind");
    assertRegistersUnchanged(frozen);
  }
  const rssAfter = rssKiB(target.pid);
  assert(rssBefore - rssAfter > 250 * 1024, `RSS ${rssBefore} KiB -> ${rssAfter} KiB`);
  const words = new BigUint64Array(256 * MiB / 8);
  processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(words)), big, BigInt(256 * MiB));
  assert(words.every((w) => w === 0n), "released pages read back as zero");
  assertEquals(await target.cmd(`peek 0x${(big + 4096n * 1000n).toString(16)}`), "0");
  assertEquals(await target.cmd(`sumall ${exclude}`), sumBefore, "the child's sum of everything else");
  // It keeps running correctly: it can write and read the released range again.
  await target.fill(big, MiB, "byte:9");
  assertEquals(await target.cmd(`peek 0x${big.toString(16)}`), "909090909090909");
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("Injector.mmap() maps an unmapped region again at the same address and protection; mapFile() a file", async () => {
  await using target = Target.start();
  const anon = await target.map(64 * 4096);
  await target.cmd(`protect 0x${anon.toString(16)} ${64 * 4096} r`);
  const perms = mapsLine(target.pid, anon)!.split(/\s+/)[1];
  assertEquals(perms, "r--p");
  const path = await Deno.makeTempFile({ prefix: "cryo-inject-" });
  try {
    const content = new Uint8Array(16 * 4096).map((_, i) => (i * 31 + 7) & 0xff);
    await Deno.writeFile(path, content);
    const file = BigInt(await target.cmd(`mapfile ${path} ${content.length}`));
    const fileSum = await target.sum(file, content.length);
    await target.cmd(`poke 0x${file.toString(16)} 12345`); // a private copy-on-write change, lost on remap
    await target.cmd(`unmap 0x${anon.toString(16)} ${64 * 4096}`);
    await target.cmd(`unmap 0x${file.toString(16)} ${content.length}`);
    assertEquals(mapsLine(target.pid, anon), undefined);
    await untilSleeping(target.pid);
    {
      using frozen = freeze(target.pid);
      using inj = inject(frozen);
      const flags = MAP.PRIVATE | MAP.FIXED_NOREPLACE;
      assertEquals(inj.mmap(anon, BigInt(64 * 4096), PROT.READ, flags | MAP.ANONYMOUS), anon);
      const at = inj.mapFile(path, file, BigInt(content.length), PROT.READ | PROT.WRITE, flags);
      assertEquals(at, file);
      const e = assertThrows(() => inj.mmap(anon, 4096n, PROT.READ, flags | MAP.ANONYMOUS), SystemError);
      assertEquals(e.code, "EEXIST");
      inj.close();
      assertRegistersUnchanged(frozen);
    }
    assertEquals(mapsLine(target.pid, anon)!.split(/\s+/)[1], "r--p");
    const fileLine = mapsLine(target.pid, file)!;
    assertMatch(fileLine, /rw-p 00000000 /);
    assert(fileLine.endsWith(path), fileLine);
    assertEquals(await target.cmd(`peek 0x${anon.toString(16)}`), "0");
    assertEquals(await target.sum(file, content.length), fileSum);
    // The target holds no descriptor of the file: mapFile() closed it.
    for (const fd of Deno.readDirSync(`/proc/${target.pid}/fd`)) {
      assert(Deno.readLinkSync(`/proc/${target.pid}/fd/${fd.name}`) !== path, `fd ${fd.name} is open`);
    }
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("a child stopped inside read() on its stdin pipe resumes the read as if nothing had been injected", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  await untilSleeping(target.pid);
  {
    using frozen = freeze(target.pid);
    const t = frozen.threads[0];
    assertEquals(register(t, "orig_rax"), 0n, "stopped in read()");
    assertEquals(BigInt.asIntN(64, register(t, "rax")), -512n, "-ERESTARTSYS");
    using inj = inject(frozen);
    for (let i = 0; i < 50; i++) assertEquals(inj.syscall(SYS.getpid), BigInt(target.pid));
    const page = inj.mmap(0n, 4096n, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
    inj.munmap(page, 4096n);
    assertEquals(inj.brk(0n), inj.brk(0n));
    assertEquals(inj.prctl(16, /* PR_GET_NAME */ inj.scratch()), 0n);
    inj.close();
    assertRegistersUnchanged(frozen);
  }
  // The data written afterwards is what the restarted read returns.
  assertEquals(Number(await target.cmd("pid")), target.pid);
  await target.cmd("threads 2");
  assertEquals((await target.cmd("counters")).split(" ").length, 2);
});

Deno.test("a child stopped inside nanosleep() sleeps its full time after injected calls", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  const answer = target.cmd("sleep 1500", 20_000);
  await sleep(300);
  await untilSleeping(target.pid);
  {
    using frozen = freeze(target.pid);
    const t = frozen.threads[0];
    assert([35n, 230n].includes(register(t, "orig_rax")), `orig_rax ${register(t, "orig_rax")}`);
    const rax = BigInt.asIntN(64, register(t, "rax"));
    assert([-512n, -513n, -514n, -516n].includes(rax), `rax ${rax}`);
    using inj = inject(frozen);
    for (let i = 0; i < 20; i++) inj.syscall(SYS.getpid);
    inj.write(new Uint8Array(64));
    inj.close();
    assertRegistersUnchanged(frozen);
  }
  const [ret, err, ns] = (await answer).split(" ").map(Number);
  assertEquals([ret, err], [0, 0], "nanosleep was not interrupted");
  assert(ns >= 1500e6 && ns < 1500e6 + 5000e6, `slept ${ns / 1e6} ms`);
});

Deno.test("failed injected calls (bad address, bad path, busy range) leave registers and mappings as they were", async () => {
  await using target = Target.start();
  const region = await target.map(16 * 4096);
  await untilSleeping(target.pid);
  {
    using frozen = freeze(target.pid);
    const mapsBefore = maps(target.pid);
    {
      using inj = inject(frozen);
      assertEquals(assertThrows(() => inj.munmap(1n, 4096n), SystemError).code, "EINVAL");
      assertEquals(inj.raw(SYS.openat, -100, 8n, 0, 0), -14n, "EFAULT for a bad pointer");
      const e = assertThrows(() => inj.openat("/nonexistent/cryo", 0), SystemError);
      assertEquals(e.code, "ENOENT");
      assertMatch(e.message, new RegExp(`^Cannot openat in pid ${target.pid} `));
      const busy = MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE;
      assertEquals(assertThrows(() => inj.mmap(region, 4096n, PROT.READ, busy), SystemError).code, "EEXIST");
      assertEquals(assertThrows(() => inj.madvise(8192n, 4096n, MADV.DONTNEED), SystemError).code, "ENOMEM");
      assertThrows(() => inj.raw(SYS.getpid, 1, 2, 3, 4, 5, 6, 7), RangeError);
      assertRegistersUnchanged(frozen);
    }
    assertEquals(maps(target.pid), mapsBefore);
    // A second tracer cannot get in while we hold it, and its attempt changes nothing.
    assertEquals(assertThrows(() => freeze(target.pid), SystemError).code, "EPERM");
    using again = inject(frozen);
    assertEquals(again.syscall(SYS.getpid), BigInt(target.pid));
  }
  assertEquals(statusField(target.pid, "TracerPid"), "0");
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("an injected call that blocks is interrupted at the timeout, abandoned, and the child's read resumes", async () => {
  await using target = Target.start();
  await untilSleeping(target.pid);
  {
    using frozen = freeze(target.pid);
    using inj = inject(frozen, { timeoutMs: 200 });
    const buf = inj.scratch();
    const e = assertThrows(() => inj.raw(SYS.read, 0, buf, 16), SystemError);
    assertEquals(e.code, "ETIMEDOUT");
    inj.close();
    assertRegistersUnchanged(frozen);
  }
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("injecting into a child that exits (exit_group, or SIGKILL) throws ESRCH and leaves nothing attached", async () => {
  for (const how of ["exit_group", "SIGKILL"] as const) {
    const target = Target.start();
    try {
      await target.cmd("pid");
      await untilSleeping(target.pid);
      const frozen = freeze(target.pid);
      const inj = inject(frozen);
      inj.scratch();
      if (how === "SIGKILL") Deno.kill(target.pid, "SIGKILL");
      const e = assertThrows(() => inj.syscall(how === "SIGKILL" ? SYS.getpid : 231, 0), SystemError);
      assertEquals(e.code, "ESRCH");
      inj.close(); // the scratch area went with the process; close() does not throw
      assertThrows(() => inj.syscall(SYS.getpid), CryoError, "closed");
      frozen.thaw();
      assertEquals(frozen.thawed, true);
    } finally {
      await target.close();
    }
  }
});

Deno.test("inject() refuses a thawed process and a tid that is not frozen", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  const frozen = freeze(target.pid);
  assertThrows(() => inject(frozen, { tid: 1 }), RangeError);
  const inj = inject(frozen);
  frozen.thaw();
  assertThrows(() => inj.syscall(SYS.getpid), CryoError, "thawed");
  assertThrows(() => inject(frozen), CryoError, "thawed");
  inj.close();
});

Deno.test("a signal that arrives while a call is injected is held and queued again for after the thaw", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  await untilSleeping(target.pid);
  const pending = () =>
    BigInt(
      `0x${
        Deno.readTextFileSync(`/proc/${target.pid}/task/${target.pid}/status`).match(/^SigPnd:\s*(\S+)/m)![1]
      }`,
    );
  {
    using frozen = freeze(target.pid);
    using inj = inject(frozen);
    Deno.kill(target.pid, "SIGCHLD"); // ignored by default, but a tracee still reports it
    assertEquals(inj.syscall(SYS.getpid), BigInt(target.pid));
    assertEquals(inj.signalsRequeued, 1);
    assertEquals(pending() & (1n << 16n), 1n << 16n, "SIGCHLD is pending for the thread again");
    assertEquals(inj.syscall(SYS.gettid), BigInt(target.pid), "a later call works too");
    inj.close();
    assertRegistersUnchanged(frozen);
  }
  assertEquals(Number(await target.cmd("pid")), target.pid);
});

Deno.test("inject({ tid }) runs calls in a spinning non-leader thread, which spins on afterwards", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  const counters = BigInt(await target.cmd("counteraddr"));
  const read = () => {
    const w = new BigUint64Array(9);
    processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(w)), counters, 72n);
    return [w[0], w[8]];
  };
  {
    using frozen = freeze(target.pid);
    const tid = frozen.tids.find((t) => t !== target.pid)!;
    using inj = inject(frozen, { tid });
    assertEquals(inj.syscall(SYS.gettid), BigInt(tid));
    const page = inj.mmap(0n, 4096n, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
    inj.munmap(page, 4096n);
    inj.close();
    assertRegistersUnchanged(frozen);
  }
  const before = read();
  for (let i = 0; i < 400; i++) {
    const now = read();
    if (now[0] > before[0] && now[1] > before[1]) return;
    await sleep(5);
  }
  throw new Error("the threads did not spin on");
});

Deno.test("thaw() (and thawAll()) of a process with an injector left open unmaps its scratch area first", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  await untilSleeping(target.pid);
  for (const how of ["thaw", "thawAll"] as const) {
    const frozen = freeze(target.pid);
    const mapsBefore = maps(target.pid);
    const inj = inject(frozen);
    const at = inj.write(new TextEncoder().encode("left behind?"));
    assert(maps(target.pid).includes(at.toString(16)), "the scratch area is mapped");
    if (how === "thaw") frozen.thaw();
    else assert(thawAll() >= 1);
    assertEquals(maps(target.pid), mapsBefore, `${how} removed the scratch area`);
    assertThrows(() => inj.syscall(SYS.getpid), CryoError);
    assertEquals(Number(await target.cmd("pid")), target.pid);
  }
});
