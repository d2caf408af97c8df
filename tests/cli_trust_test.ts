/**
 * Issue 18 (trust): what the CLI prints from targets and images, key files, streaming to stdout, and what a
 * killed checkpoint leaves behind. Every child (target or CLI) is spawned here and killed by its pid.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Mapping, regionAt, tempDir } from "./_image.ts";
import { LineChild } from "../lib/kernel/child.ts";
import { printable } from "../lib/cli/format.ts";
import { toJson } from "../lib/cli/json.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const targetBinary = new URL("../ffi/build/cryo_target", import.meta.url).pathname;
const decoder = new TextDecoder();

/** Run the CLI to completion. */
async function cryo(args: string[], env: Record<string, string> = {}) {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  return { code: o.code, stdout: decoder.decode(o.stdout), stderr: decoder.decode(o.stderr) };
}

// deno-lint-ignore no-control-regex -- the test looks for control characters
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;

function assertNoControl(text: string, what: string): void {
  const m = CONTROL.exec(text);
  assert(!m, `${what} prints control character ${JSON.stringify(m?.[0])}: ${JSON.stringify(text)}`);
}

Deno.test("printable() escapes C0, DEL, C1 and lone surrogates, and keeps the rest", () => {
  assertEquals(printable("a\x1b[31mb\x07"), "a\\x1b[31mb\\x07");
  assertEquals(printable("\x00\x7f\u0085\u009b"), "\\x00\\x7f\\u0085\\u009b");
  assertEquals(printable("x\ud800y\udc00z"), "x\\ud800y\\udc00z");
  assertEquals(printable("é 😀 ≤ \ufffd"), "é 😀 ≤ \ufffd", "printable text, pairs and U+FFFD stay");
  assertEquals(printable("a\nb\tc"), "a\\x0ab\\x09c");
  assertEquals(printable("a\nb\tc", { lines: true }), "a\nb\\x09c");
  const once = printable("\x1b]0;t\x07\u009b");
  assertEquals(printable(once), once, "idempotent");
});

Deno.test("toJson() escapes DEL and C1 as well as what JSON.stringify escapes, and round-trips", () => {
  const value = { s: "a\x1b[31m\x07\x7f\u009b\ud800" };
  const text = toJson(value);
  assertNoControl(text, "toJson");
  assertEquals(JSON.parse(text), value);
});

Deno.test("cryo inspect and regions escape a target's command line and a mapped file's name", async () => {
  await using dir = await tempDir();
  const evilArgs = ["\x1b[31mred", "bell\x07", "c1\u009b2J"];
  const file = `${dir.path}/map\x1b[2J\x07.bin`;
  await Deno.writeFile(file, new Uint8Array(1 << 20).fill(7));
  await using target = LineChild.spawn(targetBinary, evilArgs);
  const addr = BigInt(await target.request(`mapfile ${file} ${1 << 20}`));
  await target.request(`fill 0x${addr.toString(16)} ${1 << 20} random 3`);
  const pid = String(target.pid);
  const image = `${dir.path}/a.cryo`;
  const cp = await cryo(["checkpoint", "--pid", pid, "-o", image]);
  assertEquals(cp.code, 0, cp.stderr);

  const info = await cryo(["inspect", image]);
  assertEquals(info.code, 0, info.stderr);
  assertNoControl(info.stdout, "inspect");
  assert(info.stdout.includes("\\x1b[31mred bell\\x07 c1\\u009b2J"), info.stdout);
  assert(info.stdout.includes("map\\x1b[2J\\x07.bin"), info.stdout);

  const json = await cryo(["inspect", image, "--json"]);
  assertNoControl(json.stdout, "inspect --json");
  const parsed = JSON.parse(json.stdout);
  assertEquals(parsed.source.commandLine, [targetBinary, ...evilArgs], "JSON keeps the exact strings");
  assert(parsed.regions.some((g: { path: string }) => g.path === file));

  const regions = await cryo(["regions", "--pid", pid]);
  assertEquals(regions.code, 0, regions.stderr);
  assertNoControl(regions.stdout, "regions");
  assert(regions.stdout.includes("map\\x1b[2J\\x07.bin"), regions.stdout);

  // An error that quotes the image's path.
  const bad = await cryo(["inspect", `${dir.path}/none\x1b[31m.cryo`]);
  assertEquals(bad.code, 3);
  assertNoControl(bad.stderr, "an error message");
  assertMatch(bad.stderr, /none\\x1b\[31m\.cryo/);
});

Deno.test("cryo inspect and verify escape control bytes in an image's region path and section name", async () => {
  await using dir = await tempDir();
  using m = new Mapping(16 << 12);
  m.bytes().fill(9);
  const image = `${dir.path}/evil.cryo`;
  const region = { ...regionAt(m.addr, m.len), path: "/x\x1b]0;owned\x07\u009b\x7f", kind: "file" as const };
  const section = "notes\x1b[8m";
  {
    await using p = await MemoryPersister.create(image, { regions: [region], fsync: false });
    await p.store(m.addr, m.len);
    p.addSection(section, new Uint8Array([1, 2, 3, 4]));
    await p.finalize();
  }
  const info = await cryo(["inspect", image]);
  assertEquals(info.code, 0, info.stderr);
  assertNoControl(info.stdout, "inspect");
  assert(info.stdout.includes("/x\\x1b]0;owned\\x07\\u009b\\x7f"), info.stdout);
  assert(info.stdout.includes("notes\\x1b[8m"), info.stdout);

  // Damage the section: verify's message quotes its name.
  let offset: number;
  {
    using loader = await MemoryLoader.open(image);
    offset = loader.sections.find((s) => s.name === section)!.offset;
  }
  const bytes = await Deno.readFile(image);
  bytes[offset] ^= 0xff;
  await Deno.writeFile(image, bytes);
  const v = await cryo(["verify", image]);
  assertEquals(v.code, 1, v.stdout + v.stderr);
  assertNoControl(v.stderr, "verify");
  assertMatch(v.stderr, /DAMAGED: .*section "notes\\x1b\[8m" checksum mismatch/);
});

Deno.test("cryo checkpoint warns about a key file others may read, and --strict refuses it before freezing", async () => {
  await using dir = await tempDir();
  await using target = LineChild.spawn(targetBinary);
  const key = `${dir.path}/app.key`;
  await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)));
  await Deno.chmod(key, 0o644);
  const pid = String(target.pid);
  const warned = await cryo(["checkpoint", "--pid", pid, "-o", `${dir.path}/a.cryo`, "--key-file", key]);
  assertEquals(warned.code, 0, warned.stderr);
  assert(
    warned.stderr.startsWith(
      `cryo: warning: key file ${key} is open to group or others (mode 0644); run \`chmod 600 ${key}\`\n`,
    ),
    warned.stderr,
  );
  const strict = await cryo([
    "checkpoint",
    "--pid",
    pid,
    "-o",
    `${dir.path}/b.cryo`,
    "--key-file",
    key,
    "--strict",
  ]);
  assertEquals(strict.code, 8, strict.stderr);
  assertEquals(
    strict.stderr,
    `cryo checkpoint: Cannot load key from file ${key}: group or others have access to it (mode 0644)\n` +
      `hint: run \`chmod 600 ${key}\` (--strict refuses a key file others may read)\n`,
  );
  assertEquals([...Deno.readDirSync(dir.path)].map((e) => e.name).sort(), ["a.cryo", "app.key"]);
  const verify = await cryo(["verify", "--strict", "--key-file", key, `${dir.path}/a.cryo`]);
  assertEquals(verify.code, 8);
  assertMatch(verify.stderr, /group or others have access to it \(mode 0644\)/);
  await Deno.chmod(key, 0o600);
  const quiet = await cryo(["verify", "--strict", "--key-file", key, `${dir.path}/a.cryo`]);
  assertEquals(quiet.code, 0, quiet.stderr);
  assertEquals(quiet.stderr, "", "no warning for mode 0600");
});

Deno.test("cryo checkpoint refuses a key file that is not a regular file (a FIFO is not opened)", async () => {
  await using dir = await tempDir();
  await using target = LineChild.spawn(targetBinary);
  const fifo = `${dir.path}/key.fifo`;
  assert((await new Deno.Command("mkfifo", { args: ["-m", "600", fifo] }).output()).success, "mkfifo");
  const r = await cryo([
    "checkpoint",
    "--pid",
    String(target.pid),
    "-o",
    `${dir.path}/a.cryo`,
    "--key-file",
    fifo,
  ]);
  assertEquals(r.code, 8, r.stderr);
  assertEquals(
    r.stderr,
    `cryo checkpoint: Cannot load key from file ${fifo}: it is a FIFO, not a regular file\n` +
      "hint: give a regular file holding the key (32 bytes or 64 hex characters), or --key-env NAME\n",
  );
  const d = await cryo(["verify", "--key-file", dir.path, "-"]);
  assertEquals(d.code, 8);
  assertMatch(d.stderr, /it is a directory, not a regular file/);
});

/** Spawn the CLI; the caller drains its output and kills it by pid in a `finally`. */
function spawnCryo(args: string[], opts: { command?: string; prefix?: string[] } = {}): Deno.ChildProcess {
  return new Deno.Command(opts.command ?? Deno.execPath(), {
    args: [...(opts.prefix ?? []), ...(opts.command ? [Deno.execPath()] : []), "run", "-A", cli, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

function kill(child: Deno.ChildProcess): void {
  try {
    Deno.kill(child.pid, "SIGKILL");
  } catch { /* already gone */ }
}

function stateOf(pid: number): string {
  return /^State:\s+(\S)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))![1];
}

Deno.test("cryo checkpoint -o - refuses a terminal on stdout and suggests a pipe or a file", async () => {
  await using target = LineChild.spawn(targetBinary);
  // `script` gives the CLI a pseudo-terminal as stdout.
  const line = [Deno.execPath(), "run", "-A", cli, "checkpoint", "--pid", String(target.pid), "-o", "-"]
    .map((a) => `'${a}'`).join(" ");
  const child = new Deno.Command("script", {
    args: ["-qec", line, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  try {
    const o = await child.output();
    const text = decoder.decode(o.stdout) + decoder.decode(o.stderr);
    assertEquals(o.code, 2, text);
    assertMatch(
      text,
      /cryo checkpoint: -o - writes the binary image to stdout, which is a terminal: pipe it/,
    );
    assertMatch(text, /or write a file \(-o IMAGE\)/);
    assertEquals(stateOf(target.pid) === "t" || stateOf(target.pid) === "T", false, "never frozen");
  } finally {
    kill(child);
  }
});

Deno.test("cryo checkpoint -o - that fails part-way says the stream is incomplete, and verify - refuses it", async () => {
  await using target = LineChild.spawn(targetBinary);
  const a = BigInt(await target.request(`map ${64 << 20}`));
  await target.request(`fill 0x${a.toString(16)} ${64 << 20} random 5`);
  const pid = String(target.pid);
  // The reader closes the pipe after the first 256 KiB: the writer gets EPIPE.
  const child = spawnCryo(["checkpoint", "--pid", pid, "-o", "-"]);
  const stderr = child.stderr.pipeThrough(new TextDecoderStream());
  let errText = "";
  const errDone = (async () => {
    for await (const s of stderr) errText += s;
  })();
  const got: Uint8Array[] = [];
  let n = 0;
  try {
    const reader = child.stdout.getReader();
    while (n < 256 << 10) {
      const r = await reader.read();
      if (r.done) break;
      got.push(r.value);
      n += r.value.length;
    }
    await reader.cancel();
    const status = await child.status;
    await errDone;
    assertEquals(status.code, 11, errText);
    assertMatch(errText, /EPIPE.* \(the image on stdout is incomplete and its reader will refuse it\)\n/);
    assertMatch(errText, /\nhint: the reader of stdout closed it before the end\n$/);
    assert(!/nothing was left|removed/.test(errText), errText);
  } finally {
    kill(child);
  }
  const partial = new Uint8Array(n);
  let at = 0;
  for (const b of got) partial.set(b, (at += b.length) - b.length);
  const verify = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "verify", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const w = verify.stdin.getWriter();
    await w.write(partial);
    await w.close();
    const o = await verify.output();
    assertEquals(o.code, 1, "the reader refuses the incomplete stream");
  } finally {
    kill(verify);
  }

  // A full device: nothing went out, and the hint does not claim a disk.
  const full = spawnCryo(["checkpoint", "--pid", pid, "-o", "-", "--compress", "lz4"], {
    command: "sh",
    prefix: ["-c", 'exec "$@" >/dev/full', "sh"],
  });
  try {
    const o = await full.output();
    const text = decoder.decode(o.stderr);
    assertEquals(o.code, 11, text);
    assertMatch(text, /ENOSPC.* \(the image on stdout is incomplete and its reader will refuse it\)\n/);
    assertMatch(text, /\nhint: the file system or device stdout writes to is full\n$/);
  } finally {
    kill(full);
  }
  for (let i = 0; i < 200 && stateOf(target.pid).toLowerCase() === "t"; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert(stateOf(target.pid).toLowerCase() !== "t", "the target runs");
  assertEquals(await target.request("pid"), pid);
});

Deno.test("cryo checkpoint killed (SIGKILL) at random moments leaves a complete image or nothing, and the target runs", async () => {
  await using dir = await tempDir();
  await using keys = await tempDir();
  const key = `${keys.path}/k`;
  await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  await using target = LineChild.spawn(targetBinary);
  const a = BigInt(await target.request(`map ${96 << 20}`));
  await target.request(`fill 0x${a.toString(16)} ${48 << 20} random 7`);
  await target.request(`fill 0x${(a + (48n << 20n)).toString(16)} ${48 << 20} text 8`);
  const pid = String(target.pid);
  const image = `${dir.path}/a.cryo`;
  const perMode = Number(Deno.env.get("CRYO_FAULT_ROUNDS") ?? 2); // kills per mode (more for a long run)
  const modes: [string, string[], number][] = [
    ["raw", [], perMode],
    ["zstd", ["--compress", "zstd:1"], perMode],
    ["encrypted", ["--compress", "lz4", "--key-file", key], perMode],
  ];
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let kills = 0, complete = 0, frozenAtKill = 0;
  for (const [mode, extra, rounds] of modes) {
    // One run to the end says how long a checkpoint takes; the kills are spread over that time.
    const t0 = performance.now();
    const full = await cryo(["checkpoint", "--pid", pid, "-o", image, "-q", ...extra]);
    const took = performance.now() - t0;
    assertEquals(full.code, 0, full.stderr);
    Deno.removeSync(image);
    for (let round = 0; round < rounds; round++) {
      const delay = ((round + Math.random()) / rounds) * took * 1.1;
      const child = spawnCryo(["checkpoint", "--pid", pid, "-o", image, "-q", ...extra]);
      try {
        await sleep(delay);
        const before = stateOf(target.pid);
        if (before === "t" || before === "T") frozenAtKill++;
        kill(child);
        await child.output();
      } finally {
        kill(child);
      }
      kills++;
      const left = names(dir.path);
      const what = `${mode} killed after ${delay.toFixed(0)} of ${took.toFixed(0)} ms`;
      assert(left.length === 0 || (left.length === 1 && left[0] === "a.cryo"), `${what}: left ${left}`);
      if (left.length) {
        const v = await cryo(["verify", ...(mode === "encrypted" ? ["--key-file", key] : []), image]);
        assertEquals(v.code, 0, `${what}: the image left verifies: ${v.stderr}`);
        Deno.removeSync(image);
        complete++;
      }
      // The target is thawed by the kernel when its tracer dies: bounded wait, then it must answer.
      let state = stateOf(target.pid);
      for (let i = 0; i < 200 && (state === "t" || state === "T"); i++) {
        await sleep(10);
        state = stateOf(target.pid);
      }
      assert(state !== "t" && state !== "T", `${what}: target left in state ${state}`);
      assertEquals(await target.request("pid", 10_000), pid, `${what}: the target runs`);
    }
  }
  console.log(
    `${kills} kills (${frozenAtKill} with the target frozen): ${complete} left a complete image, ` +
      `${kills - complete} nothing`,
  );
});

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}
