import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { freeze } from "../lib/kernel/freeze.ts";

/** The one-letter state of `pid` from /proc (R, S, T, t, Z …). */
function state(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).match(/^State:\s+(\S)/m)?.[1] ?? "?";
}

async function settle(pid: number, want: (s: string) => boolean, ms = 5000): Promise<string> {
  const deadline = Date.now() + ms;
  let s = state(pid);
  while (!want(s) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    s = state(pid);
  }
  return s;
}

Deno.test("Frozen.hold() leaves no trace after a normal thaw: the target runs on, no signal delivered", async () => {
  await using target = Target.start();
  await target.cmd("threads 3");
  await target.cmd("heartbeat");
  for (let round = 0; round < 5; round++) {
    const frozen = freeze(target.pid, { registers: false });
    frozen.hold();
    assert(frozen.held);
    frozen.thaw();
    assert(!frozen.held);
    const s = await settle(target.pid, (x) => x !== "T" && x !== "t", 2000);
    assert(s !== "T" && s !== "t", `state ${s} after thaw`);
    assertEquals(await target.cmd("pid"), String(target.pid), "the target still answers");
  }
});

Deno.test("Frozen.hold() keeps the target stopped when the holder dies without thawing (SIGKILL)", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  const script = `
    import { freeze } from "${new URL("../lib/kernel/freeze.ts", import.meta.url).href}";
    const f = freeze(${target.pid}, { registers: false });
    f.hold();
    console.log("held");
    await new Promise(() => {}); // until killed
  `;
  const holder = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const first = await Promise.race([
      reader.read(),
      new Promise<never>((_, rej) => setTimeout(() => rej(new Error("holder did not start")), 30_000)),
    ]);
    assertEquals(first.value?.trim(), "held");
    Deno.kill(holder.pid, "SIGKILL");
    await holder.status;
    const s = await settle(target.pid, (x) => x === "T");
    assertEquals(s, "T", "the process is in group stop after its tracer died");
    Deno.kill(target.pid, "SIGCONT");
    assertEquals(await target.cmd("pid"), String(target.pid), "SIGCONT resumes it intact");
    reader.releaseLock();
  } finally {
    try {
      Deno.kill(holder.pid, "SIGKILL");
    } catch { /* already gone */ }
    await holder.stdout.cancel().catch(() => {});
  }
});
