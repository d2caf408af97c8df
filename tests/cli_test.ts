import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Target } from "./_target.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cryo(...args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

function statusOf(pid: number): { state: string; tracer: number } {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  return {
    state: /^State:\s+(\S)/m.exec(text)![1],
    tracer: Number(/^TracerPid:\s+(\d+)/m.exec(text)![1]),
  };
}

const hex = (n: bigint) => `0x${n.toString(16)}`;

Deno.test("cryo checkpoint and restore roll a child back and the child's own check passes", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(32 << 20);
    await target.fill(a, 8 << 20, "random", 5);
    await target.fill(a + (16n << 20n), 8 << 20, "stride:4", 6);
    const before = await target.sum(a, 32 << 20);
    const cp = await cryo("checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`);
    assertEquals(cp.code, 0, cp.stderr);
    assertMatch(cp.stdout, /checkpoint of pid \d+ -> .*a\.cryo\n {2}regions/);
    assertEquals((await Deno.stat(`${dir}/a.cryo`)).mode! & 0o777, 0o600);
    await target.fill(a, 32 << 20, "text", 9);
    assert((await target.sum(a, 32 << 20)) !== before);
    const rs = await cryo("restore", "--pid", String(target.pid), `${dir}/a.cryo`);
    assertEquals(rs.code, 0, rs.stderr);
    assertEquals(await target.sum(a, 32 << 20), before);
    const st = statusOf(target.pid);
    assertEquals(st.tracer, 0);
    assert(st.state === "S" || st.state === "R", `state ${st.state}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo restore maps a region that vanished since the checkpoint back and rolls it back", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(4 << 20);
    const b = await target.map(4 << 20);
    await target.fill(a, 4 << 20, "random", 1);
    await target.fill(b, 4 << 20, "random", 2);
    const [sumA, sumB] = [await target.sum(a, 4 << 20), await target.sum(b, 4 << 20)];
    assertEquals((await cryo("checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`)).code, 0);
    await target.cmd(`unmap ${hex(b)} ${4 << 20}`);
    await target.fill(a, 4 << 20, "text", 3);
    const dry = await cryo("restore", "--pid", String(target.pid), "--dry-run", `${dir}/a.cryo`);
    assertEquals(dry.code, 0, dry.stderr);
    assertMatch(dry.stdout, new RegExp(`map ${hex(b)}-${hex(b + (4n << 20n))} rw-p anonymous`));
    const rs = await cryo("restore", "--pid", String(target.pid), `${dir}/a.cryo`);
    assertEquals(rs.code, 0, rs.stderr);
    assertMatch(rs.stdout, /layout change\(s\) made/);
    assertEquals(await target.sum(a, 4 << 20), sumA);
    assertEquals(await target.sum(b, 4 << 20), sumB);
    assertEquals(statusOf(target.pid).tracer, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo verify exits 0 on a sound image, 1 on a corrupted one naming the offset, 2 on usage errors", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(1 << 20);
    await target.fill(a, 1 << 20, "random", 4);
    assertEquals(
      (await cryo("checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`, "-q")).code,
      0,
    );
    const ok = await cryo("verify", `${dir}/a.cryo`);
    assertEquals(ok.code, 0, ok.stderr);
    assertMatch(ok.stdout, /: sound \(/);
    // Flip one bit in the middle of the data.
    const bytes = await Deno.readFile(`${dir}/a.cryo`);
    bytes[bytes.length >> 1] ^= 0x10;
    await Deno.writeFile(`${dir}/bad.cryo`, bytes);
    const bad = await cryo("verify", `${dir}/bad.cryo`);
    assertEquals(bad.code, 1);
    assertMatch(bad.stderr, /bad\.cryo: DAMAGED: Invalid image .*bad\.cryo at offset \d+: /);
    assertEquals((await cryo("verify")).code, 2);
    assertEquals((await cryo("verify", "--bogus", `${dir}/a.cryo`)).code, 2);
    assertEquals((await cryo("nonsense")).code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo --json outputs parse for checkpoint, restore, inspect, verify, diff and regions", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(2 << 20);
    await target.fill(a, 1 << 20, "random", 8);
    const pid = String(target.pid);
    const cp = JSON.parse((await cryo("checkpoint", "--pid", pid, "-o", `${dir}/a.cryo`, "--json")).stdout);
    assertEquals(cp.pid, target.pid);
    assert(cp.dataBytes >= 1 << 20 && cp.holeBytes >= 1 << 20, JSON.stringify(cp));
    await target.cmd(`poke ${hex(a)} 42`);
    assertEquals((await cryo("checkpoint", "--pid", pid, "-o", `${dir}/b.cryo`, "-q")).code, 0);
    const info = JSON.parse((await cryo("inspect", `${dir}/a.cryo`, "--records", "--json")).stdout);
    assertEquals(info.source.pid, target.pid);
    assertEquals(info.totals.records, info.records.length);
    assert(info.regions.some((g: { start: string }) => BigInt(g.start) <= a), "the mapping is in the table");
    assertEquals(JSON.parse((await cryo("verify", `${dir}/a.cryo`, "--json")).stdout).ok, true);
    const d = JSON.parse((await cryo("diff", `${dir}/a.cryo`, `${dir}/b.cryo`, "--json")).stdout);
    assert(
      d.runs.some((r: { start: string; kind: string }) => BigInt(r.start) === a && r.kind === "changed"),
      JSON.stringify(d.runs),
    );
    const regions = JSON.parse((await cryo("regions", "--pid", pid, "--json")).stdout).regions;
    assert(regions.some((g: { kind: string; persist: boolean }) => g.kind === "vdso" && !g.persist));
    const dry = JSON.parse(
      (await cryo("restore", "--pid", pid, "--dry-run", `${dir}/a.cryo`, "--json")).stdout,
    );
    assertEquals(dry.dryRun, true);
    assertEquals(await target.cmd(`peek ${hex(a)}`), "2a", "a dry run writes nothing");
    const rs = JSON.parse((await cryo("restore", "--pid", pid, `${dir}/a.cryo`, "--json")).stdout);
    assertEquals(rs.dryRun, false);
    assert((await target.cmd(`peek ${hex(a)}`)) !== "2a", "the real restore wrote the word back");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint interrupted by SIGINT thaws the target, leaves no image and exits 130 (JSON too)", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(768 << 20);
    await target.fill(a, 768 << 20, "random", 2);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`, "--json"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Wait (bounded) until the checkpoint has frozen the target (the image is an unnamed file: nothing shows in
    // the directory), then interrupt.
    let seen = false;
    for (let i = 0; i < 2000 && !seen; i++) {
      seen = statusOf(target.pid).tracer !== 0;
      if (!seen) await new Promise((r) => setTimeout(r, 5));
    }
    assert(seen, "the checkpoint started");
    child.kill("SIGINT");
    const out = await child.output();
    const stderr = decoder.decode(out.stderr);
    assertEquals(out.code, 130, stderr);
    assertMatch(stderr, /SIGINT received/);
    const error = JSON.parse(decoder.decode(out.stdout)).error; // under --json, the error on stdout too
    assertEquals([error.code, error.exit], ["interrupted", 130]);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), [], "no image, no temporary file");
    assertEquals(statusOf(target.pid).tracer, 0);
    assertEquals(await target.cmd("pid"), String(target.pid), "the target runs");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo with a pid that does not exist says so in one line with a hint", async () => {
  const r = await cryo("checkpoint", "--pid", "4194000", "-o", "/tmp/never.cryo");
  assertEquals(r.code, 3);
  assertMatch(r.stderr, /^cryo checkpoint: .*4194000.*\nhint: /);
  assert(!r.stderr.includes("    at "));
});

Deno.test("cryo demo runs to completion", async () => {
  const r = await cryo("demo");
  assertEquals(r.code, 0, r.stdout + r.stderr);
  assertMatch(r.stdout, /== the checkpoint's state/);
  assertMatch(r.stdout, /demo passed/);
});

Deno.test("cryo debug syscall runs a call inside a child and thaws it; debug caps lists the kernel's features", async () => {
  await using target = Target.start();
  await target.cmd("pid");
  const pid = String(target.pid);
  const ok = await cryo("debug", "syscall", "--pid", pid, "getpid");
  assertEquals(ok.code, 0, ok.stderr);
  assertEquals(ok.stdout, `getpid() = ${pid} (0x${target.pid.toString(16)})\n`);
  const bad = await cryo("debug", "syscall", "--pid", pid, "munmap", "0x1", "4096");
  assertEquals(bad.code, 1);
  assertEquals(bad.stdout, "munmap(0x1, 4096) = -22 EINVAL (Invalid argument)\n");
  assertEquals(statusOf(target.pid).tracer, 0);
  assertEquals(await target.cmd("pid"), pid);
  const usage = await cryo("debug", "syscall", "--pid", pid, "getpid", "x");
  assertEquals(usage.code, 2);
  const caps = JSON.parse((await cryo("debug", "caps", "--json")).stdout);
  assertEquals(caps.wpAsync, true);
  assertEquals(caps.pagemapScan, true);
});
