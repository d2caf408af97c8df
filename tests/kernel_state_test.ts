import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { Target } from "./_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { inspect } from "../lib/ops/inspect.ts";
import { decodeKernelState, encodeKernelState, readKernelState } from "../lib/kernel/kernel_state.ts";
import { ImageError } from "../lib/errors.ts";

Deno.test("checkpoint() records what a rollback leaves alone, and inspect() shows it", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const zombie = Number(await target.cmd("zombie")); // a child process
    const live = readKernelState(target.pid);
    assert(live.children.includes(zombie), `children ${live.children}`);
    // Its stdin and stdout are pipes of this test.
    assertEquals(live.descriptors.filter((d) => d.fd <= 1).map((d) => d.kind), ["pipe", "pipe"]);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const info = await inspect(`${dir}/a.cryo`);
    assert(info.kernel, "the image records the kernel state");
    assertEquals(info.kernel.children, live.children);
    assertEquals(info.kernel.descriptors.map((d) => d.fd), live.descriptors.map((d) => d.fd));
    assertMatch(info.kernel.summary, /pipes? \(what they held is gone\)/);
    assertMatch(info.kernel.summary, /1 child process/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readKernelState() gives a file's offset; decodeKernelState() round-trips and refuses garbage", async () => {
  const path = await Deno.makeTempFile();
  await Deno.writeFile(path, new Uint8Array(100));
  const f = await Deno.open(path, { read: true });
  try {
    await f.seek(37, Deno.SeekMode.Start);
    const mine = readKernelState(Deno.pid);
    const d = mine.descriptors.find((x) => x.target === path);
    assert(d && d.kind === "file", "this process's open file is listed");
    assertEquals(d.offset, 37);
    assertEquals(decodeKernelState(encodeKernelState(mine), "x"), mine);
    assertThrows(
      () => decodeKernelState(new TextEncoder().encode("{"), "img", 64),
      ImageError,
      "kernel section",
    );
  } finally {
    f.close();
    await Deno.remove(path);
  }
});

Deno.test("checkpoint() records POSIX timers and timerfds, and inspect() says a rollback leaves them running", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const [id, fd] = (await target.cmd("timers")).split(" ").map(Number);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const info = await inspect(`${dir}/a.cryo`);
    const timers = info.kernel?.timers ?? [];
    const posix = timers.find((t) => t.kind === "posix");
    assertEquals([posix?.id, posix?.clock], [id, 1], JSON.stringify(timers));
    assertMatch(posix?.notify ?? "", /^signal\//);
    const tfd = timers.find((t) => t.kind === "timerfd");
    assertEquals([tfd?.id, tfd?.clock, tfd?.intervalNs], [fd, 1, 1e9], JSON.stringify(timers));
    assert(tfd!.valueNs! > 90e9 && tfd!.valueNs! <= 100e9, `time left ${tfd!.valueNs}`);
    assertMatch(info.kernel!.summary, /2 timers \(1 timerfd\) \(they run on: not rolled back\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
