/**
 * The CLI's contract with scripts: the exit code of each failure class, the error as JSON on stdout under
 * `--json`, `diff` exiting 1 when images differ, one schema for every JSON document, the "already traced" error
 * naming the tracer, and `restore -` freezing the target only once the image's header has arrived. Every case
 * drives a real child process and real images.
 *
 * @module
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Target } from "./_target.ts";
import { EXIT } from "../lib/cli/exit.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cryo(args: string[], opts: { uid?: number; env?: Record<string, string> } = {}): Promise<Run> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...opts.env },
    ...(opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.uid }),
  }).output();
  return { code: o.code, stdout: decoder.decode(o.stdout), stderr: decoder.decode(o.stderr) };
}

/** The JSON error a failed `--json` command printed on stdout, checked for its shape. */
function jsonError(r: Run): { code: string; exit: number; message: string; hint: string | null } {
  const doc = JSON.parse(r.stdout);
  assertEquals(Object.keys(doc), ["schema", "error"], r.stdout);
  assertEquals(doc.schema, 1);
  assertEquals(Object.keys(doc.error), ["code", "exit", "message", "hint"]);
  assertEquals(doc.error.exit, r.code, "the document's exit is the process's");
  return doc.error;
}

function status(pid: number): { state: string; tracer: number } {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  return { state: /^State:\s+(\S)/m.exec(text)![1], tracer: Number(/^TracerPid:\s+(\d+)/m.exec(text)![1]) };
}

Deno.test("cryo exits with the code of each failure class and prints the error as JSON under --json", async () => {
  const dir = await Deno.makeTempDir();
  await using a = Target.start();
  await using b = Target.start();
  try {
    const addr = await a.map(1 << 20);
    await a.fill(addr, 1 << 20, "random", 2);
    const image = `${dir}/a.cryo`;
    assertEquals((await cryo(["checkpoint", "--pid", String(a.pid), "-o", image, "-q"])).code, 0);

    // usage: 2
    const usage = await cryo(["checkpoint", "--pid", "x", "--json"]);
    assertEquals(usage.code, 2, usage.stderr);
    assertEquals(jsonError(usage).code, "usage");
    // not found: 3 (no such process; no such image)
    const noPid = await cryo(["checkpoint", "--pid", "4194000", "-o", `${dir}/n.cryo`, "--json"]);
    assertEquals([noPid.code, jsonError(noPid).code], [3, "not-found"], noPid.stderr);
    const noFile = await cryo(["inspect", `${dir}/none.cryo`, "--json"]);
    assertEquals([noFile.code, jsonError(noFile).code], [3, "not-found"], noFile.stderr);
    assertEquals(jsonError(noFile).hint, "check the path");
    // mismatch: 6 (another process than the image's); nothing written
    const other = await cryo(["restore", "--pid", String(b.pid), image, "--json", "-q"]);
    assertEquals([other.code, jsonError(other).code], [6, "mismatch"], other.stderr);
    assertMatch(jsonError(other).message, /it is not the process the image was taken from/);
    assertEquals(status(b.pid).tracer, 0);
    // damaged image: 7, for a command that needs a sound one (verify answers 1: "no")
    const bytes = await Deno.readFile(image);
    bytes[bytes.length >> 1] ^= 0x40;
    await Deno.writeFile(`${dir}/bad.cryo`, bytes);
    const damaged = await cryo(["restore", "--pid", String(a.pid), `${dir}/bad.cryo`, "--json", "-q"]);
    assertEquals([damaged.code, jsonError(damaged).code], [7, "damaged-image"], damaged.stderr);
    assertMatch(jsonError(damaged).hint!, /cryo verify IMAGE/);
    assertEquals((await cryo(["verify", `${dir}/bad.cryo`])).code, 1);
    const notImage = await cryo(["inspect", "/proc/self/cmdline"]);
    assertEquals(notImage.code, 7, notImage.stderr);
    // wrong key: 8
    const key = `${dir}/k.key`;
    await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const sealed = `${dir}/sealed.cryo`;
    assertEquals(
      (await cryo(["checkpoint", "--pid", String(a.pid), "-o", sealed, "--key-file", key, "-q"])).code,
      0,
    );
    // inspect takes the key options too: the key is checked against the header.
    const right = await cryo(["inspect", sealed, "--key-file", key, "--json"]);
    assertEquals([right.code, JSON.parse(right.stdout).keyChecked], [0, true], right.stderr);
    const plainWithKey = await cryo(["inspect", image, "--key-file", key, "--json"]);
    assertEquals([plainWithKey.code, jsonError(plainWithKey).code], [8, "key"], plainWithKey.stderr);
    const sealedDiff = await cryo(["diff", image, sealed, "--json"]);
    assertEquals([sealedDiff.code, jsonError(sealedDiff).code], [8, "key"], sealedDiff.stderr);
    assertMatch(jsonError(sealedDiff).message, /it is encrypted, and diff compares unencrypted images only/);
    assert(!/--key-file FILE or --key-env/.test(sealedDiff.stderr), "diff does not hint at options it lacks");
    await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const wrongInspect = await cryo(["inspect", sealed, "--key-file", key, "--json"]);
    assertEquals([wrongInspect.code, jsonError(wrongInspect).code], [8, "key"], wrongInspect.stderr);
    const wrong = await cryo(["restore", "--pid", String(a.pid), sealed, "--key-file", key, "--json", "-q"]);
    assertEquals([wrong.code, jsonError(wrong).code], [8, "key"], wrong.stderr);
    // set-up: 10 (a system library that cannot be opened: here libzstd, pointed elsewhere)
    const noZstd = await cryo(
      ["checkpoint", "--pid", String(a.pid), "-o", `${dir}/z.cryo`, "--compress", "zstd", "--json", "-q"],
      { env: { CRYO_LIBZSTD: `${dir}/missing/libzstd.so.1` } },
    );
    assertEquals([noZstd.code, jsonError(noZstd).code], [10, "setup"], noZstd.stderr);
    assertMatch(jsonError(noZstd).message, /Cannot load libzstd\.so\.1; tried:/);
    // The human line stays on stderr, the JSON alone on stdout.
    assertMatch(wrong.stderr, /^cryo restore: /);
    assertEquals(status(a.pid).tracer, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Whether user nobody can run this Deno and read cli.ts (not when either lives under /root, say). */
async function nobodyCanRun(): Promise<boolean> {
  if (Deno.uid() !== 0) return false;
  const probe = await new Deno.Command("/bin/sh", {
    args: ["-c", 'test -x "$1" && test -r "$2"', "sh", Deno.execPath(), cli],
    uid: 65534,
    gid: 65534,
  }).output().catch(() => ({ success: false }));
  return probe.success;
}

Deno.test({
  name: "cryo run without the right to trace a process exits 4 (permission) and says why",
  ignore: !(await nobodyCanRun()),
}, async () => {
  const dir = await Deno.makeTempDir();
  await Deno.chmod(dir, 0o777);
  await using target = Target.start();
  try {
    const r = await cryo(["checkpoint", "--pid", String(target.pid), "-o", `${dir}/a.cryo`, "--json"], {
      uid: 65534,
      env: { DENO_DIR: `${dir}/deno`, HOME: dir },
    });
    assertEquals(r.code, 4, r.stderr);
    const e = jsonError(r);
    assertEquals(e.code, "permission");
    assertMatch(e.message, /EPERM|EACCES/);
    assertMatch(e.hint!, /root or CAP_SYS_PTRACE/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint of a process another tracer holds exits 5 naming the tracer and its command line", async () => {
  await using target = Target.start();
  const freezeUrl = new URL("../lib/kernel/freeze.ts", import.meta.url).href;
  // A tracer: freezes the target and waits for its stdin to close.
  const tracer = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--ext=ts",
      `import { freeze } from ${JSON.stringify(freezeUrl)};
       using f = freeze(Number(Deno.args[0]));
       console.log("frozen");
       for await (const _ of Deno.stdin.readable) { /* until closed */ }`,
      String(target.pid),
      "tracer-marker",
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const line = await tracer.stdout.pipeThrough(new TextDecoderStream()).getReader().read();
    assertEquals(line.value?.trim(), "frozen");
    assertEquals(status(target.pid).tracer, tracer.pid);
    const r = await cryo(["checkpoint", "--pid", String(target.pid), "-o", "/nonexistent/x.cryo", "--json"]);
    assertEquals(r.code, 5, r.stderr);
    const e = jsonError(r);
    assertEquals(e.code, "busy");
    assertMatch(
      e.message,
      new RegExp(`already traced by pid ${tracer.pid}: \\S*deno eval --ext=ts "import \\{ freeze`),
    );
    assert(!e.message.includes("\n"), "the tracer's command line on one line");
    assertMatch(e.hint!, new RegExp(`ptrace allows one tracer: wait until pid ${tracer.pid}`));
    assert(!/root or CAP_SYS_PTRACE/.test(r.stderr), "it does not blame privileges");
  } finally {
    try {
      tracer.kill("SIGKILL");
    } catch { /* exited */ }
    await tracer.status;
  }
  assertEquals(status(target.pid).tracer, 0);
});

Deno.test("cryo diff exits 0 for images with the same pages and 1 when they differ, like cmp", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const addr = await target.map(1 << 20);
    await target.fill(addr, 1 << 20, "random", 5);
    const pid = String(target.pid);
    assertEquals((await cryo(["checkpoint", "--pid", pid, "-o", `${dir}/a.cryo`, "-q"])).code, 0);
    const same = await cryo(["diff", `${dir}/a.cryo`, `${dir}/a.cryo`, "--json"]);
    assertEquals(same.code, 0, same.stderr);
    assertEquals(JSON.parse(same.stdout).same, true);
    await target.fill(addr + 8192n, 4096, "random", 6);
    assertEquals((await cryo(["checkpoint", "--pid", pid, "-o", `${dir}/b.cryo`, "-q"])).code, 0);
    const differ = await cryo(["diff", `${dir}/a.cryo`, `${dir}/b.cryo`]);
    assertEquals(differ.code, 1, differ.stderr);
    assertMatch(differ.stdout, /pages differ/);
    const differJson = await cryo(["diff", `${dir}/a.cryo`, `${dir}/b.cryo`, "--json"]);
    assertEquals(differJson.code, 1);
    const d = JSON.parse(differJson.stdout);
    assertEquals([d.schema, d.same], [1, false]);
    assert(d.runs.some((r: { start: string }) => BigInt(r.start) === addr + 8192n), differJson.stdout);
    const missing = await cryo(["diff", `${dir}/a.cryo`, `${dir}/none.cryo`]);
    assertEquals(missing.code, 3, "trouble is not a difference");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Every key of a JSON document, with its value, depth first. */
function* entries(v: unknown, key = ""): Generator<[string, unknown]> {
  if (Array.isArray(v)) { for (const x of v) yield* entries(x, key); }
  else if (v && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) {
      yield [k, x];
      yield* entries(x, k);
    }
  }
}

Deno.test("every --json document has schema 1, byte counts as numbers in *Bytes keys, addresses as 0x strings", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const addr = await target.map(1 << 20);
    await target.fill(addr, 1 << 20, "random", 7);
    const pid = String(target.pid);
    const docs: Record<string, Run> = {
      checkpoint: await cryo(["checkpoint", "--pid", pid, "-o", `${dir}/a.cryo`, "--json"]),
      inspect: await cryo(["inspect", `${dir}/a.cryo`, "--records", "--json"]),
      verify: await cryo(["verify", `${dir}/a.cryo`, "--json"]),
      diff: await cryo(["diff", `${dir}/a.cryo`, `${dir}/a.cryo`, "--json"]),
      regions: await cryo(["regions", "--pid", pid, "--json"]),
      restore: await cryo(["restore", "--pid", pid, `${dir}/a.cryo`, "--json", "-q"]),
      caps: await cryo(["debug", "caps", "--json"]),
    };
    for (const [name, r] of Object.entries(docs)) {
      assertEquals(r.code, 0, `${name}: ${r.stderr}`);
      const doc = JSON.parse(r.stdout);
      assertEquals(Object.keys(doc)[0], "schema", name);
      assertEquals(doc.schema, 1, name);
      for (const [k, v] of entries(doc)) {
        assert(k !== "bytes", `${name}: a bare "bytes" key`);
        if (/Bytes$|Ms$|Length$|^(inode|offset|pid)$/.test(k)) {
          assertEquals(typeof v, "number", `${name}: ${k} = ${JSON.stringify(v)} is a number`);
        }
        if (k === "start" || k === "end" || k === "address") {
          assertMatch(String(v), /^0x[0-9a-f]+$/, `${name}: ${k}`);
        }
      }
    }
    const regions = JSON.parse(docs.regions.stdout).regions;
    const file = regions.find((g: { inode: number }) => g.inode > 0);
    assert(file && Number.isInteger(file.inode) && typeof file.rssBytes === "number", JSON.stringify(file));
    assertEquals(typeof JSON.parse(docs.verify.stdout).checkedBytes, "number");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo restore --pid P - freezes P only once the image's header has arrived, and says so", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  const pid = String(target.pid);
  try {
    const addr = await target.map(2 << 20);
    await target.fill(addr, 2 << 20, "random", 11);
    const want = await target.sum(addr, 2 << 20);
    assertEquals((await cryo(["checkpoint", "--pid", pid, "-o", `${dir}/a.cryo`, "-q"])).code, 0);
    await target.fill(addr, 2 << 20, "text", 12);
    const image = await Deno.readFile(`${dir}/a.cryo`);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "restore", "--pid", pid, "-"],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    try {
      const stderr = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      let said = "";
      const deadline = Date.now() + 30_000;
      while (!said.includes("\n") && Date.now() < deadline) {
        const { value, done } = await stderr.read();
        if (done) break;
        said += value;
      }
      assertMatch(said, new RegExp(`pid ${pid} is frozen once its header has arrived`));
      // Nothing has come down the pipe: the target runs on untraced for as long as the writer is idle.
      const w = child.stdin.getWriter();
      await w.write(image.subarray(0, 64)); // not even the fixed header
      await new Promise((r) => setTimeout(r, 700));
      assertEquals(status(target.pid).tracer, 0, "not frozen while the header is incomplete");
      assertEquals(await target.cmd("pid"), pid, "it answers");
      await w.write(image.subarray(64));
      await w.close();
      const rest = (async () => {
        for (;;) {
          const { done } = await stderr.read();
          if (done) return;
        }
      })();
      const s = await child.status;
      await rest;
      assertEquals(s.code, 0);
      assertEquals(await target.sum(addr, 2 << 20), want);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await child.stdout.cancel().catch(() => {});
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README's exit code table is the one lib/cli/exit.ts applies", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const rows = [...readme.matchAll(/^\| (\d+) +\| `([a-z-]+)` +\|/gm)].map((m) => [Number(m[1]), m[2]]);
  assertEquals(rows, Object.values(EXIT).map((c) => [c.exit, c.code]));
});
