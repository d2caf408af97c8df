import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { decodeThreads, encodeThreads, register } from "../lib/kernel/threads.ts";
import { rawSyscall } from "../lib/kernel/syscall.ts";

const tids = (pid: number) => [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name));
const status = (pid: number, tid: number, field: string) =>
  new RegExp(`^${field}:\\s+([0-9a-f]+)`, "m").exec(
    Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`),
  )![1];
const sigBlk = (pid: number, tid: number) => status(pid, tid, "SigBlk");
const SIGUSR1_BIT = 1n << 9n;

Deno.test("restore() sets the recorded signal mask, pending signals, sigaltstack and robust list on a thread it creates again", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const tid = Number(await target.cmd("idler"));
    const before = await target.cmd("idlerreport");
    const [sp, size, flags, head, length, mask] = before.split(" ");
    assertEquals([size, flags, length], ["65536", "0", "24"], before);
    assert(BigInt(`0x${mask}`) & (1n << 9n), `SIGUSR1 blocked: ${before}`);
    const blocked = sigBlk(target.pid, tid);
    assertEquals(rawSyscall(234, /* tgkill */ BigInt(target.pid), BigInt(tid), 10n), 0n); // SIGUSR1, blocked
    assert(BigInt(`0x${status(target.pid, tid, "SigPnd")}`) & SIGUSR1_BIT, "pending on the idler");
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false, altStacks: true });
    {
      using loader = await MemoryLoader.open(`${dir}/a.cryo`);
      const t = decodeThreads(loader.section("threads")!, "a.cryo").find((t) => t.tid === tid)!;
      assertEquals(t.kernel?.sigmask, BigInt(`0x${blocked}`));
      assertEquals(t.kernel?.altstack, { sp: BigInt(sp), size: 65536n, flags: 0 });
      assertEquals([t.kernel?.robustHead, t.kernel?.robustLength], [BigInt(head), 24n]);
      assertEquals(t.kernel?.pending, SIGUSR1_BIT);
    }
    await target.cmd("idlerexit");
    assert(!tids(target.pid).includes(tid), "the idler ended");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.threadsRecreated, [tid]);
    assertEquals(sigBlk(target.pid, tid), blocked, "SigBlk of the recreated thread");
    assertEquals(
      BigInt(`0x${status(target.pid, tid, "SigPnd")}`),
      SIGUSR1_BIT,
      "its pending signal is pending again",
    );
    assertEquals(await target.cmd("idlerreport"), before, "the recreated thread reports its own state");
    await target.cmd("idlerexit"); // it ends, and is joined, as it did the first time
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeThreads() reads a version 1 section (no per-thread kernel state) and round-trips version 2", () => {
  const general = new Uint8Array(216), vector = new Uint8Array(512);
  const kernel = {
    sigmask: 0x1234n,
    pending: 0n,
    altstack: { sp: 0x7000n, size: 8192n, flags: 0 },
    robustHead: 0x9000n,
    robustLength: 24n,
  };
  const v2 = encodeThreads([{ tid: 7, general, vector, vectorKind: "fpregs", rseq: null, kernel }]);
  assertEquals(decodeThreads(v2)[0].kernel, kernel);
  const v1 = encodeThreads([{ tid: 7, general, vector, vectorKind: "fpregs", rseq: null }]);
  new DataView(v1.buffer).setUint32(8, 1, true);
  assertEquals(decodeThreads(v1)[0].kernel, undefined);
  assertEquals(decodeThreads(v1)[0].tid, 7);
});

Deno.test("restore() ends a thread born since without clearing the tid word of the thread whose descriptor it reuses", async () => {
  // glibc gives a new thread the descriptor and stack of a thread joined before. Rolled back, that memory is the
  // old thread's again (created again by the restore, running), while the new thread still has the kernel clear
  // that descriptor's tid word when it exits: ending it that way told the program its old thread had ended
  // (a Rust JoinHandle then found no result: "threads should not terminate unexpectedly").
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const idler = Number(await target.cmd("idler"));
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.cmd("idlerexit");
    assertEquals(await target.cmd("reuser"), "same", "glibc reused the joined idler's descriptor");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.threadsRecreated, [idler]);
    assertEquals(r.threadsEnded.length, 1);
    assert(tids(target.pid).includes(idler), "the idler runs again");
    assertEquals(await target.cmd("idlertryjoin"), "busy", "the idler's descriptor says it runs");
    await target.cmd("idlerexit"); // it returns, and is joined
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() does not resume a thread's later timed wait in place of the checkpoint's (the kernel's restart record is not rolled back)", async () => {
  // A thread interrupted in a wait with a timeout resumes through restart_syscall, which the kernel runs from the
  // thread's restart record: the one of the wait it is in now, not the one the image's registers describe. Put
  // back as it was, the hopper waited on its second word while the program woke it on its first, and hung.
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const tid = Number(await target.cmd("hopper"));
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    {
      using loader = await MemoryLoader.open(`${dir}/a.cryo`);
      const t = decodeThreads(loader.section("threads")!, "a.cryo").find((t) => t.tid === tid)!;
      assertEquals(
        BigInt.asIntN(64, register(t, "rax")),
        -516n,
        "the hopper was caught in its timed wait (-ERESTART_RESTARTBLOCK)",
      );
    }
    assertEquals(await target.cmd("hopwake"), "2", "it moved on to its second word");
    await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(await target.cmd("hopwake"), "2", "rolled back, woken on its first word, it moves on again");
    assertEquals(await target.cmd("hopwake"), "3");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
