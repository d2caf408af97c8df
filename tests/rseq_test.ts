import { assert, assertEquals } from "./_assert.ts";
import { addrOf, libc, processVmRead } from "../ffi/libc.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { readSelfRseq, rseqAreaOfThisThread } from "../lib/kernel/rseq.ts";
import { register } from "../lib/kernel/threads.ts";
import { Target } from "./_target.ts";

const RSEQ_SIG = 0x53053053;

Deno.test("readSelfRseq() reads the rseq configuration of every thread of this process", () => {
  const tasks = () => new Set(Deno.readDirSync("/proc/self/task").map((e) => Number(e.name)));
  const listed = [...tasks()];
  const read = readSelfRseq();
  // Other tests running in this process start and end native threads meanwhile: every thread alive before and
  // after the read was read.
  const after = tasks();
  const got = new Set(read.map((r) => r.tid));
  const missed = listed.filter((t) => after.has(t) && !got.has(t));
  assertEquals(missed, [], `${read.length} of ${listed.length} threads read`);
  assert(read.length >= 2);
  for (const { tid, rseq } of read) {
    if (rseq.abiPointer === 0n) continue; // a thread caught at its birth, before glibc registered it
    assertEquals(rseq.signature, RSEQ_SIG, `tid ${tid}`);
    assertEquals(rseq.abiSize, 32, `tid ${tid}`);
    assert(rseq.abiPointer > 0x10000n, `tid ${tid}`);
  }
  // Every thread has its own area; ours is where glibc says it registered it.
  assertEquals(new Set(read.map((r) => r.rseq.abiPointer)).size, read.length);
  const mine = read.find((r) => r.tid === libc.gettid());
  assertEquals(mine?.rseq.abiPointer, rseqAreaOfThisThread());
  // The threads were released: none is left traced.
  for (const tid of listed) {
    try {
      const status = Deno.readTextFileSync(`/proc/self/task/${tid}/status`);
      assertEquals(status.match(/^TracerPid:\s*(\d+)/m)![1], "0", `tid ${tid}`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
});

Deno.test("readSelfRseq() leaves out a thread that does not exist", () => {
  const read = readSelfRseq([libc.gettid(), 0x3ffffff0]);
  assertEquals(read.map((r) => r.tid), [libc.gettid()]);
});

Deno.test("freeze() reads the rseq configuration of every thread of a child", async () => {
  await using target = Target.start();
  await target.cmd("threads 3");
  // A thread registers rseq as it starts: wait until all three run (their counters move).
  const counters = BigInt(await target.cmd("counteraddr"));
  const words = new BigUint64Array(3 * 8);
  for (let i = 0; i < 5000 && !(words[0] && words[8] && words[16]); i++) {
    processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(words)), counters, BigInt(words.byteLength));
    await new Promise((r) => setTimeout(r, 1));
  }
  using frozen = freeze(target.pid);
  assertEquals(frozen.threads.length, 4);
  for (const t of frozen.threads) {
    assertEquals(t.rseq?.signature, RSEQ_SIG, `tid ${t.tid}`);
    assertEquals(t.rseq?.abiSize, 32, `tid ${t.tid}`);
  }
  assertEquals(new Set(frozen.threads.map((t) => t.rseq?.abiPointer)).size, 4);
  // glibc puts each thread's area at the same offset from its thread pointer (fs_base).
  assertEquals(new Set(frozen.threads.map((t) => t.rseq!.abiPointer - register(t, "fs_base"))).size, 1);
});
