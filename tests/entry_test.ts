import { assertEquals, assertMatch } from "./_assert.ts";

const root = new URL("../", import.meta.url);
const decoder = new TextDecoder();

/** Run `deno run` with only `--allow-read --allow-env`: no `--allow-ffi`. */
async function withoutFfi(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-check", "--allow-read", "--allow-env", ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return { code: o.code, stdout: decoder.decode(o.stdout), stderr: decoder.decode(o.stderr) };
}

Deno.test("the three entry points import without --allow-ffi: native libraries open on first use", async () => {
  const script = `
    import * as cryo from ${JSON.stringify(new URL("mod.ts", root).href)};
    import { parseMaps } from ${JSON.stringify(new URL("process.ts", root).href)};
    import { MemoryLoader } from ${JSON.stringify(new URL("image.ts", root).href)};
    const regions = parseMaps("7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \\n");
    console.log(typeof cryo.checkpoint, typeof MemoryLoader, regions.length, regions[0].perms.write);
  `;
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/use.ts`, script);
    const r = await withoutFfi([`${dir}/use.ts`]);
    assertEquals([r.code, r.stdout.trim()], [0, "function function 1 true"], r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo --help and --version need no native library; the version is deno.json's", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", root)));
  const version = await withoutFfi([new URL("cli.ts", root).pathname, "--version"]);
  assertEquals([version.code, version.stdout.trim()], [0, `cryo ${config.version}`], version.stderr);
  const help = await withoutFfi([new URL("cli.ts", root).pathname, "restore", "--help"]);
  assertEquals(help.code, 0, help.stderr);
  assertMatch(help.stdout, /--recover/);
});
