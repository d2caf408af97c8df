import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { removeTrackingMark } from "../lib/ops/tracked.ts";
import { Target } from "./_target.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const decoder = new TextDecoder();
const MiB = 1n << 20n;

async function cryo(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

Deno.test("cryo checkpoint --track / --parent, inspect shows the chain, flatten, and restore says once which path it took", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-cli-inc-" });
  await using t = Target.start();
  try {
    const a = await t.map(8n * MiB);
    await t.fill(a, 8n * MiB, "random", 1);
    const sumBase = await t.sum(a, 8n * MiB);
    const base = await cryo(
      "checkpoint",
      "--pid",
      `${t.pid}`,
      "-o",
      `${dir}/base.cryo`,
      "--track",
      "--no-fsync",
    );
    assertEquals(base.code, 0, base.stderr);
    assertMatch(base.stdout, /tracking {2}armed at this image/);
    await t.fill(a + MiB, 4n * 4096n, "random", 2);
    const sumTip = await t.sum(a, 8n * MiB);
    const tip = await cryo(
      "checkpoint",
      "--pid",
      `${t.pid}`,
      "-o",
      `${dir}/tip.cryo`,
      "--parent",
      `${dir}/base.cryo`,
      "--track",
      "--no-fsync",
    );
    assertEquals(tip.code, 0, tip.stderr);
    assertMatch(tip.stdout, /parent {4}.*base\.cryo \(a chain of 2\); .* changed, by write tracking/);
    const info = await cryo("inspect", `${dir}/tip.cryo`);
    assertEquals(info.code, 0, info.stderr);
    assertMatch(info.stdout, /chain {5}2 images, this one first:/);
    assertMatch(info.stdout, /base\.cryo [0-9a-f]{16} .* \(full\)/);
    const flat = await cryo("flatten", `${dir}/tip.cryo`, "-o", `${dir}/full.cryo`, "--no-fsync");
    assertEquals(flat.code, 0, flat.stderr);
    assertMatch(flat.stdout, /a chain of 2/);
    assertEquals((await cryo("verify", `${dir}/full.cryo`)).code, 0);

    // The tracking is armed at tip: a rollback to base takes the full path, and says why, once.
    const toBase = await cryo("restore", "--pid", `${t.pid}`, `${dir}/base.cryo`);
    assertEquals(toBase.code, 0, toBase.stderr);
    assertEquals(
      toBase.stdout.match(/tracking {2}full rollback: .*armed again since/g)?.length,
      1,
      toBase.stdout,
    );
    assertEquals(await t.sum(a, 8n * MiB), sumBase);
    // That rollback armed it for base again: the next one is fast.
    await t.fill(a, 4096n, "random", 3);
    const again = await cryo("restore", "--pid", `${t.pid}`, `${dir}/base.cryo`);
    assertMatch(again.stdout, /tracking {2}wrote back only what was written since/);
    assertEquals(await t.sum(a, 8n * MiB), sumBase);
    // The chain restores like one image; --no-track takes the full path without a word.
    const toTip = await cryo("restore", "--pid", `${t.pid}`, "--no-track", `${dir}/tip.cryo`);
    assertEquals(toTip.code, 0, toTip.stderr);
    assert(!toTip.stdout.includes("tracking"), toTip.stdout);
    assertEquals(await t.sum(a, 8n * MiB), sumTip);
  } finally {
    removeTrackingMark(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});
