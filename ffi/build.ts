/**
 * Build the C parts: the helper library, the test workload and fixtures, and the benchmark's C pipeline.
 * `deno task build` rebuilds everything;
 * `deno task build --if-stale` only what is missing or older than its source. Uses `$CC` or `cc`.
 *
 * @module
 */

const root = new URL("../", import.meta.url).pathname;
const outDir = `${root}ffi/build`;

interface Target {
  out: string;
  sources: string[];
  /** Flags before `-o` (compile and link options). */
  flags: string[];
  /** Flags after the sources (libraries to link). */
  libs?: string[];
  /** Other files whose change makes `out` stale (besides its sources and the shared headers). */
  deps?: string[];
}

/** The helper's C sources: every `ffi/helper/*.c`, one concern each (docs/NATIVE.md). */
function helperSources(): string[] {
  const out: string[] = [];
  try {
    for (const e of Deno.readDirSync(`${root}ffi/helper`)) {
      if (e.isFile && e.name.endsWith(".c")) out.push(`ffi/helper/${e.name}`);
    }
  } catch { /* no folder: the build fails with the compiler's message */ }
  return out.sort();
}

/** Headers the C sources share (a change to one rebuilds everything). */
function headers(): string[] {
  try {
    return [...Deno.readDirSync(`${root}ffi/helper`)].filter((e) => e.name.endsWith(".h")).map((e) =>
      `ffi/helper/${e.name}`
    );
  } catch {
    return [];
  }
}

const targets: Target[] = [
  { out: "libcryo_helper.so", sources: helperSources(), flags: ["-shared", "-fPIC"] },
  // A test fixture (a native thread that parks on a helper safepoint), linked against the helper built above.
  {
    out: "libcryo_test_thread.so",
    sources: ["tests/fixtures/test_thread.c"],
    flags: ["-shared", "-fPIC", "-pthread", "-Wl,-z,now", "-Wl,-rpath,$ORIGIN"],
    libs: [`-L${outDir}`, "-l:libcryo_helper.so"],
    deps: ["ffi/build/libcryo_helper.so"],
  },
  { out: "cryo_target", sources: ["tests/fixtures/target.c"], flags: ["-pthread"] },
  { out: "cryo_live_writer", sources: ["tests/fixtures/live_writer.c"], flags: ["-pthread"] },
  { out: "cryo_pipeline", sources: ["bench/pipeline.c"], flags: [] },
];

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

const cc = Deno.env.get("CC") ?? "cc";
const ifStale = Deno.args.includes("--if-stale");
Deno.mkdirSync(outDir, { recursive: true });
for (const t of targets) {
  const out = `${outDir}/${t.out}`;
  const sources = t.sources.map((s) => `${root}${s}`);
  const deps = [...t.sources, ...headers(), ...(t.deps ?? [])].map((d) => `${root}${d}`);
  if (ifStale && mtime(out) !== 0 && deps.every((s) => mtime(s) <= mtime(out))) continue;
  const args = [
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    ...t.flags,
    "-o",
    out,
    ...sources,
    ...(t.libs ?? []),
  ];
  let status: Deno.CommandStatus;
  try {
    status = await new Deno.Command(cc, { args, stdout: "inherit", stderr: "inherit" }).spawn().status;
  } catch (e) {
    console.error(`Cannot build ${t.out}: ${cc} not found (${(e as Error).message}); install a C compiler`);
    Deno.exit(1);
  }
  if (!status.success) {
    console.error(`Cannot build ${t.out}: ${cc} ${args.join(" ")} failed`);
    Deno.exit(1);
  }
  console.error(`built ffi/build/${t.out}`);
}
