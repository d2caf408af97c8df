/**
 * cryo as users pick it up: the files `deno publish` would put on JSR, served over HTTP from this test, and the
 * CLI run from that URL with an empty cache (the helper library built there on first use from the package's own
 * C source); a clear error when there is no C compiler; `CRYO_HELPER` still wins.
 *
 * @module
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Target } from "./_target.ts";
import { HELPER_SOURCES } from "../ffi/helper_sources.ts";

const root = new URL("../", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The files `deno publish --dry-run` lists, relative to the package root; fails on any warning. */
async function publishedFiles(): Promise<string[]> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = decoder.decode(o.stdout) + decoder.decode(o.stderr);
  assertEquals(o.code, 0, text);
  assert(!/warning/i.test(text), `deno publish --dry-run warns:\n${text}`);
  const files = [...text.matchAll(/^\s+file:\/\/(\S+) \(/gm)].map((m) => m[1].slice(root.length));
  assert(files.length > 0, text);
  return files;
}

/** Serve `files` (paths relative to the package root) on 127.0.0.1 at a free port; anything else is a 404. */
function serve(files: string[]): Deno.HttpServer<Deno.NetAddr> {
  const allowed = new Set(files);
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname.slice(1));
    if (!allowed.has(path)) return new Response("not published", { status: 404 });
    return new Response(await Deno.readFile(root + path));
  });
}

/** Run `deno run -A <entry> args…` with only the environment given (no CRYO_HELPER, a fresh DENO_DIR). */
async function runFrom(entry: string, args: string[], env: Record<string, string>): Promise<Run> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", entry, ...args],
    cwd: env.HOME,
    clearEnv: true,
    env: { NO_COLOR: "1", PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: o.code, stdout: decoder.decode(o.stdout), stderr: decoder.decode(o.stderr) };
}

Deno.test("HELPER_SOURCES holds every file of ffi/helper/ with its contents", () => {
  const names = [...Deno.readDirSync(`${root}ffi/helper`)].filter((e) => e.isFile).map((e) => e.name).sort();
  assertEquals(Object.keys(HELPER_SOURCES), names);
  for (const name of names) {
    assertEquals(HELPER_SOURCES[name], Deno.readTextFileSync(`${root}ffi/helper/${name}`), name);
  }
});

Deno.test("cryo run from a URL serving the published files (and installed from it) checkpoints and restores a child, building its helper into an empty cache", async () => {
  const files = await publishedFiles();
  for (const f of ["cli.ts", "mod.ts", "deno.json", "ffi/helper/freeze.c", "ffi/helper/helper.h"]) {
    assert(files.includes(f), `${f} is published`);
  }
  for (const f of files) {
    assert(
      !/^(tests|bench|\.ci|examples|ffi\/build)\//.test(f) && f !== "ffi/build.ts",
      `${f} is not published`,
    );
  }
  const version = JSON.parse(await Deno.readTextFile(`${root}deno.json`)).version;
  const home = await Deno.makeTempDir();
  await using target = Target.start();
  const server = serve(files);
  try {
    const url = `http://127.0.0.1:${server.addr.port}/cli.ts`;
    const env = { HOME: home, XDG_CACHE_HOME: `${home}/cache`, DENO_DIR: `${home}/deno` };
    const a = await target.map(4 << 20);
    await target.fill(a, 4 << 20, "random", 3);
    const before = await target.sum(a, 4 << 20);
    const cp = await runFrom(
      url,
      ["checkpoint", "--pid", String(target.pid), "-o", `${home}/a.cryo`, "-q"],
      env,
    );
    assertEquals(cp.code, 0, cp.stderr);
    assertMatch(cp.stderr, /building the helper library into .*\/cache\/cryo\/[^/]+ \(first use/);
    const dirs = [...Deno.readDirSync(`${home}/cache/cryo`)].map((e) => e.name);
    assertEquals(dirs.length, 1);
    assertMatch(dirs[0], new RegExp(`^${version.replaceAll(".", "\\.")}-[0-9a-f]{16}$`));
    assert(Deno.statSync(`${home}/cache/cryo/${dirs[0]}/libcryo_helper.so`).isFile);
    await target.fill(a, 4 << 20, "text", 7);
    // Installed as a command from the same URL, as `deno install -g -A -n cryo jsr:@cryo/cryo/cli` does.
    const denoBin = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));
    const path = `${denoBin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`;
    const install = await new Deno.Command(Deno.execPath(), {
      args: ["install", "-g", "-A", "-n", "cryo", "--root", `${home}/inst`, url],
      cwd: home,
      clearEnv: true,
      env: { ...env, PATH: path, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(install.code, 0, decoder.decode(install.stderr));
    const o = await new Deno.Command(`${home}/inst/bin/cryo`, {
      args: ["restore", "--pid", String(target.pid), `${home}/a.cryo`, "-q"],
      cwd: home,
      clearEnv: true,
      env: { ...env, PATH: path, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const rs = { code: o.code, stderr: decoder.decode(o.stderr) };
    assertEquals(rs.code, 0, rs.stderr);
    assert(!/building/.test(rs.stderr), `built once only: ${rs.stderr}`);
    assertEquals(await target.sum(a, 4 << 20), before);
    // A cached library others could have changed is refused, not loaded.
    Deno.chmodSync(`${home}/cache/cryo/${dirs[0]}/libcryo_helper.so`, 0o777);
    const unsafe = await runFrom(url, ["restore", "--pid", String(target.pid), `${home}/a.cryo`, "-q"], env);
    assertEquals(unsafe.code, 10, unsafe.stderr);
    assertMatch(unsafe.stderr, /Cannot use the cryo helper library .*\(mode 0777\), not to this user/);
    // `cryo --help` from the URL says `cryo`.
    const help = await runFrom(url, ["--help"], env);
    assertEquals(help.code, 0, help.stderr);
    assertMatch(help.stdout, /usage: cryo <command>/);
  } finally {
    await server.shutdown();
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("cryo without a C compiler and without a built helper says how to get one; CRYO_HELPER wins", async () => {
  const home = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    // A copy of the package without ffi/build/: the helper must come from the cache, which is empty.
    await Deno.mkdir(`${home}/pkg`, { recursive: true });
    const cp = await new Deno.Command("cp", {
      args: ["-r", `${root}lib`, `${root}ffi`, `${root}cli.ts`, `${root}deno.json`, `${home}/pkg/`],
    }).output();
    assert(cp.success, decoder.decode(cp.stderr));
    await Deno.remove(`${home}/pkg/ffi/build`, { recursive: true }).catch(() => {});
    const env = { HOME: home, XDG_CACHE_HOME: `${home}/cache`, PATH: `${home}/empty`, CC: "" };
    const args = ["checkpoint", "--pid", String(target.pid), "-o", `${home}/a.cryo`, "-q"];
    const r = await runFrom(`${home}/pkg/cli.ts`, args, env);
    assertEquals(r.code, 10, r.stderr);
    assertMatch(r.stderr, /Cannot build the cryo helper library: no C compiler \(cc is not on PATH\)/);
    assertMatch(r.stderr, /apt-get install gcc/);
    assert(!/ at /.test(r.stderr.split("\n")[0]), "one line, no stack");
    await assertRejectsMissing(`${home}/a.cryo`);
    // CRYO_HELPER names a built library: no compiler needed.
    const withHelper = await runFrom(`${home}/pkg/cli.ts`, args, {
      ...env,
      CRYO_HELPER: `${root}ffi/build/libcryo_helper.so`,
    });
    assertEquals(withHelper.code, 0, withHelper.stderr);
    assert(Deno.statSync(`${home}/a.cryo`).isFile);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

async function assertRejectsMissing(path: string): Promise<void> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  throw new Error(`${path} exists after a failed checkpoint`);
}

Deno.test("README's set-up and .ci/run name the same Deno version and Debian packages", async () => {
  const readme = await Deno.readTextFile(`${root}README.md`);
  const ci = await Deno.readTextFile(`${root}.ci/run`);
  const version = /^DENO_VERSION=(\S+)$/m.exec(ci)![1];
  assertMatch(readme, new RegExp(`install\\.sh \\| sh -s v${version.replaceAll(".", "\\.")}\``));
  assertMatch(readme, new RegExp(`npm install --prefix \\S+ deno@${version.replaceAll(".", "\\.")}\``));
  const ciPackages = /^PACKAGES="([^"]+)"$/m.exec(ci)![1].split(" ").sort();
  const readmePackages = [
    ...readme.matchAll(/^\s+- Debian\/Ubuntu: `apt-get install ([^`]+)`.*\n\s+`apt-get install ([^`]+)`/gm),
  ]
    .flatMap((m) => `${m[1]} ${m[2]}`.split(" ")).sort();
  assertEquals(readmePackages, ciPackages);
  assertMatch(readme, /deno install -g -A -n cryo jsr:@cryo\/cryo\/cli/);
  assertMatch(readme, /deno install -g -A -n cryo \.\/cli\.ts/);
  assertMatch(readme, /head -c 32 \/dev\/urandom > app\.key; chmod 600 app\.key/);
  assert(/deno publish --dry-run/.test(ci), ".ci/run runs the publish dry run");
});
