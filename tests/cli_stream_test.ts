import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Target } from "./_target.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

/** Run the CLI; `stdin` bytes are piped to it (else it gets none). */
async function cryo(args: string[], env: Record<string, string> = {}, stdin?: Uint8Array) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const o = await child.output();
  return { code: o.code, stdout: decoder.decode(o.stdout), stderr: decoder.decode(o.stderr) };
}

Deno.test("cryo checkpoint --compress zstd --key-file round-trips through restore, and the key is required", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const key = crypto.getRandomValues(new Uint8Array(32));
    await Deno.writeFile(`${dir}/k`, key, { mode: 0o600 });
    const hexKey = [...crypto.getRandomValues(new Uint8Array(32))].map((b) =>
      b.toString(16).padStart(2, "0")
    );
    const a = await target.map(8 << 20);
    await target.fill(a, 8 << 20, "text", 3);
    const before = await target.sum(a, 8 << 20);
    const pid = String(target.pid);
    const cp = await cryo([
      "checkpoint",
      "--pid",
      pid,
      "-o",
      `${dir}/a.cryo`,
      "--compress",
      "zstd:1",
      "--key-file",
      `${dir}/k`,
    ]);
    assertEquals(cp.code, 0, cp.stderr);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, ["a.cryo", "k"], "the raw image it was transcoded from is gone");
    const info = await cryo(["inspect", `${dir}/a.cryo`]);
    assertMatch(info.stdout, /required \[codec, encrypted\]/);
    assertMatch(info.stdout, /contents need the key/);
    assert(!info.stdout.includes("process is persisted"), "no plaintext in inspect");
    // The text the target wrote is not in the image file.
    const file = await Deno.readFile(`${dir}/a.cryo`);
    assert(
      !decoder.decode(file).includes("checkpoint image index"),
      "the image holds no plaintext of the memory",
    );

    await target.fill(a, 8 << 20, "random", 4);
    const changed = await target.sum(a, 8 << 20);
    const nokey = await cryo(["restore", "--pid", pid, `${dir}/a.cryo`]);
    assertEquals(nokey.code, 8);
    assertMatch(nokey.stderr, /hint: give the key the image was written with/);
    const wrong = await cryo(["restore", "--pid", pid, "--key-env", "K", `${dir}/a.cryo`], {
      K: hexKey.join(""),
    });
    assertEquals(wrong.code, 8);
    assertEquals(await target.sum(a, 8 << 20), changed, "a refused restore writes nothing");
    const bad = await cryo(["verify", "--key-env", "K", `${dir}/a.cryo`], { K: hexKey.join("") });
    assertEquals(bad.code, 8);

    const good = await cryo(["verify", "--key-file", `${dir}/k`, `${dir}/a.cryo`]);
    assertEquals(good.code, 0, good.stderr);
    assertMatch(good.stdout, /every chunk authenticated with the key/);
    const rs = await cryo(["restore", "--pid", pid, "--key-file", `${dir}/k`, `${dir}/a.cryo`]);
    assertEquals(rs.code, 0, rs.stderr);
    assertEquals(await target.sum(a, 8 << 20), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint -o - piped into cryo restore - rolls a child back", async () => {
  await using target = Target.start();
  const a = await target.map(16 << 20);
  await target.fill(a, 16 << 20, "stride:3", 5);
  const before = await target.sum(a, 16 << 20);
  const pid = String(target.pid);
  // Take the checkpoint into a pipe held open by the restorer, after the memory has changed: the restore then
  // has real work to do. The checkpoint's summary goes to stderr, stdout carries only the image.
  const checkpointer = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "checkpoint", "--pid", pid, "-o", "-", "--compress", "lz4"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const image = new Uint8Array(await new Response(checkpointer.stdout).arrayBuffer());
  const cp = await checkpointer.output().catch(() => undefined);
  const status = await checkpointer.status;
  assert(status.success, cp ? decoder.decode(cp.stderr) : "checkpoint failed");
  await target.fill(a, 16 << 20, "text", 6);
  const rs = await cryo(["restore", "--pid", pid, "-"], {}, image);
  assertEquals(rs.code, 0, rs.stderr);
  assertEquals(await target.sum(a, 16 << 20), before);

  // verify - reads an image from stdin too; a truncated stream is refused.
  const v = await cryo(["verify", "-"], {}, image);
  assertEquals(v.code, 0, v.stderr);
  const t = await cryo(["verify", "-"], {}, image.subarray(0, image.length >> 1));
  assertEquals(t.code, 1, t.stdout);
});

Deno.test("cryo checkpoint --encode-while-stopped of one-page runs writes frames of many records: the image is the size of the default one's, and restores", async () => {
  // Each run read into the bounce buffer closed the open frame, so a fragmented process (every other page
  // written) got a frame, and a page of alignment, per record: 257.6 MiB against 129.5 MiB for 256 MiB.
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const n = 32 << 20;
    const a = await target.map(n);
    await target.cmd(`fill 0x${a.toString(16)} ${n} stride:2 3`); // summed after: a read maps the zero page
    const pid = String(target.pid);
    const size = async (name: string, extra: string[]) => {
      const cp = await cryo([
        "checkpoint",
        "--pid",
        pid,
        "-o",
        `${dir}/${name}`,
        "--compress",
        "zstd:1",
        ...extra,
      ]);
      assertEquals(cp.code, 0, cp.stderr);
      return (await Deno.stat(`${dir}/${name}`)).size;
    };
    const stopped = await size("w.cryo", ["--encode-while-stopped"]), after = await size("d.cryo", []);
    assert(stopped <= after * 1.02, `encoded while stopped: ${stopped} bytes, the default: ${after}`);
    const before = await target.sum(a, n);
    await target.cmd(`fill 0x${a.toString(16)} ${n} stride:2 4`);
    const rs = await cryo(["restore", "--pid", pid, `${dir}/w.cryo`]);
    assertEquals(rs.code, 0, rs.stderr);
    assertEquals(await target.sum(a, n), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("one-page chunks of text, compressed (and sealed) into slabs a piece each, restore byte-exact in every mode", async () => {
  // 8,192 one-page records that compress: each is encoded on the calling thread and kept in a piece of a 1 MiB
  // slab, reused once every piece cut from it is written (lib/image/chunks.ts): several slabs, reused.
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const n = 64 << 20;
    const a = await target.map(n);
    await target.cmd(`fill 0x${a.toString(16)} ${n} stride:2:text 5`);
    const pid = String(target.pid);
    const key = `${dir}/k`;
    await Deno.writeFile(key, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const modes = [
      ["--compress", "zstd:1"],
      ["--compress", "lz4", "--encode-while-stopped"],
      ["--compress", "zstd:1", "--key-file", key],
      ["--key-file", key, "--encode-while-stopped"],
    ];
    for (const [i, mode] of modes.entries()) {
      const cp = await cryo(["checkpoint", "--pid", pid, "-o", `${dir}/${i}.cryo`, ...mode]);
      assertEquals(cp.code, 0, cp.stderr);
      if (mode[0] === "--compress") {
        const size = (await Deno.stat(`${dir}/${i}.cryo`)).size;
        assert(size < n / 4, `${mode.join(" ")}: ${size} bytes for ${n / 2} of text`);
      }
    }
    const before = await target.sum(a, n); // after the checkpoints: a read maps the zero page
    for (const [i, mode] of modes.entries()) {
      await target.cmd(`fill 0x${a.toString(16)} ${n} stride:2 ${i + 6}`);
      const keyArgs = mode.includes("--key-file") ? ["--key-file", key] : [];
      const rs = await cryo(["restore", "--pid", pid, `${dir}/${i}.cryo`, ...keyArgs]);
      assertEquals(rs.code, 0, rs.stderr);
      assertEquals(await target.sum(a, n), before, mode.join(" "));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint --encode-while-stopped writes an image that restores like the default one", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(8 << 20);
    await target.fill(a, 8 << 20, "text", 7);
    const before = await target.sum(a, 8 << 20);
    const pid = String(target.pid);
    const cp = await cryo([
      "checkpoint",
      "--pid",
      pid,
      "-o",
      `${dir}/w.cryo`,
      "--compress",
      "lz4",
      "--encode-while-stopped",
    ]);
    assertEquals(cp.code, 0, cp.stderr);
    assertMatch((await cryo(["inspect", `${dir}/w.cryo`])).stdout, /required \[codec\]/);
    await target.fill(a, 8 << 20, "random", 8);
    const rs = await cryo(["restore", "--pid", pid, `${dir}/w.cryo`]);
    assertEquals(rs.code, 0, rs.stderr);
    assertEquals(await target.sum(a, 8 << 20), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
