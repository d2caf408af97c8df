// The memory budget (lib/image/budget.ts, `--memory`): cryo's peak RSS does not grow with the size of the
// process it works on. Each command runs as a fresh `deno run -A cli.ts` process under ffi/build/cryo_rusage
// (bench/rusage.c), which reports its ru_maxrss; the same command on an 8 MiB child and on a 512 MiB child
// may differ by at most the budget and a stated slack, and the 512 MiB run stays under the runtime's own peak
// (`cryo --help`) plus the budget, one chunk per codec worker and the slack.

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { type Cost, peakRss } from "./_peak_rss.ts";
import { checkpoint, restore } from "../mod.ts";
import { parseCodec } from "../lib/codecs/select.ts";
import { MIN_MEMORY_BUDGET } from "../lib/image/budget.ts";

const MiB = 2 ** 20;
const BUDGET = 16 * MiB;
/** Codec workers (2 × cores + 2) times a chunk's input and output (1 MiB each). */
const WORKERS = 2 * navigator.hardwareConcurrency + 2;
/**
 * What the budget does not cover and may still grow with the work: V8's heap (records, frames) and the garbage
 * it collects late, the libraries a mode loads (libzstd, libcrypto), pool threads' stacks and malloc arenas.
 */
const SLACK = 24 * MiB;
const BIG = 512 * MiB;
const SMALL = 8 * MiB;

/** The CLI once, measured (a redirection through `sh -c` when `shell`). */
const cryo = (args: string[], shell?: string): Promise<Cost> => peakRss(args, { shell });

const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

/** A child with `bytes` of random data, checkpointed/restored by `run(pid, dir)`. */
async function peakWith(
  bytes: number,
  run: (pid: number, dir: string) => Promise<Cost>,
  kind = "random",
): Promise<number> {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(bytes);
    await target.fill(a, bytes, kind, 1);
    const c = await run(target.pid, dir);
    assertEquals(c.code, 0, c.stderr);
    return c.rss;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Assert that `run` on a 512 MiB child peaks at most the budget and the slack above the same on an 8 MiB child,
 * and under the runtime's own peak plus the budget, the codec workers' chunks and the slack.
 */
async function assertBounded(
  what: string,
  run: (pid: number, dir: string) => Promise<Cost>,
  kind = "random",
): Promise<void> {
  const runtime = (await cryo(["--help"])).rss;
  const small = await peakWith(SMALL, run, kind);
  const big = await peakWith(BIG, run, kind);
  const limit = runtime + BUDGET + WORKERS * 2 * MiB + SLACK;
  console.log(`${what}: peak RSS ${mib(big)} (512 MiB), ${mib(small)} (8 MiB), runtime ${mib(runtime)}`);
  assert(
    big <= small + BUDGET + SLACK,
    `${what}: peak RSS ${mib(big)} for a 512 MiB process, ${
      mib(small)
    } for an 8 MiB one: it grew with the size`,
  );
  assert(
    big <= limit,
    `${what}: peak RSS ${mib(big)}, above ${mib(limit)} (the runtime's ${mib(runtime)} + budget)`,
  );
}

const memory = ["--memory", `${BUDGET / MiB}M`, "-q"];

Deno.test("cryo checkpoint keeps its peak RSS within --memory, whatever the process's size (raw)", async () => {
  await assertBounded(
    "raw",
    (pid, dir) => cryo(["checkpoint", "--pid", String(pid), "-o", `${dir}/i`, ...memory]),
  );
});

Deno.test("cryo checkpoint keeps its peak RSS within --memory, whatever the process's size (zstd)", async () => {
  // Text: random memory would keep its raw image (lib/ops/transcode.ts `incompressible`), not be transcoded.
  await assertBounded(
    "zstd",
    (pid, dir) =>
      cryo(["checkpoint", "--pid", String(pid), "-o", `${dir}/i`, "--compress", "zstd:1", ...memory]),
    "text",
  );
});

Deno.test("cryo checkpoint keeps its peak RSS within --memory, whatever the process's size (streamed)", async () => {
  await assertBounded(
    "streamed",
    (pid) => cryo(["checkpoint", "--pid", String(pid), "-o", "-", ...memory], "> /dev/null"),
  );
});

/** A key file for the encrypted modes (32 random bytes, mode 0600), removed with `dir`. */
async function keyIn(dir: string): Promise<string[]> {
  const path = `${dir}/key`;
  await Deno.writeFile(path, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
  return ["--key-file", path];
}

Deno.test("cryo checkpoint keeps its peak RSS within --memory, whatever the process's size (encrypted)", async () => {
  await assertBounded("encrypted", async (pid, dir) => {
    const key = await keyIn(dir);
    return await cryo(["checkpoint", "--pid", String(pid), "-o", `${dir}/i`, ...key, ...memory]);
  });
});

Deno.test("cryo restore keeps its peak RSS within --memory, whatever the process's size (streamed from stdin)", async () => {
  await assertBounded("restore streamed", async (pid, dir) => {
    const c = await cryo(["checkpoint", "--pid", String(pid), "-o", `${dir}/i`, "--no-fsync", "-q"]);
    assertEquals(c.code, 0, c.stderr);
    return await cryo(["restore", "--pid", String(pid), "-", ...memory], `< '${dir}/i'`);
  });
});

Deno.test("cryo restore keeps its peak RSS within --memory, whatever the process's size (encrypted)", async () => {
  await assertBounded("restore encrypted", async (pid, dir) => {
    const key = await keyIn(dir);
    const c = await cryo(["checkpoint", "--pid", String(pid), "-o", `${dir}/i`, "--no-fsync", "-q", ...key]);
    assertEquals(c.code, 0, c.stderr);
    return await cryo(["restore", "--pid", String(pid), `${dir}/i`, ...key, ...memory]);
  });
});

Deno.test("cryo hibernate keeps its peak RSS within --memory, whatever the process's size", async () => {
  await assertBounded("hibernate", async (pid, dir) => {
    const h = await cryo(["hibernate", "--pid", String(pid), "-o", `${dir}/i`, ...memory]);
    const w = await cryo(["wake", "--pid", String(pid), `${dir}/i`, "-q"]); // the child runs again before it is killed
    assertEquals(w.code, 0, w.stderr);
    return h;
  });
});

for (const [mode, extra] of [["raw", []], ["zstd", ["--compress", "zstd:1"]]] as const) {
  Deno.test(`cryo restore keeps its peak RSS within --memory, whatever the process's size (${mode})`, async () => {
    await assertBounded(`restore ${mode}`, async (pid, dir) => {
      const c = await cryo([
        "checkpoint",
        "--pid",
        String(pid),
        "-o",
        `${dir}/i`,
        "--no-fsync",
        "-q",
        ...extra,
      ]);
      assertEquals(c.code, 0, c.stderr);
      return await cryo(["restore", "--pid", String(pid), `${dir}/i`, ...memory]);
    }, mode === "zstd" ? "text" : "random"); // random memory compressed is kept raw
  });
}

Deno.test("cryo wake keeps its peak RSS within --memory, whatever the process's size", async () => {
  await assertBounded("wake", async (pid, dir) => {
    const h = await cryo(["hibernate", "--pid", String(pid), "-o", `${dir}/i`, "-q"]);
    assertEquals(h.code, 0, h.stderr);
    return await cryo(["wake", "--pid", String(pid), `${dir}/i`, ...memory]);
  });
});

Deno.test("checkpoint() and restore() in the smallest budget roll a child back byte for byte (raw, zstd, lz4)", async () => {
  // 1 MiB windows and 256 KiB bounce buffers: runs, records and the raw image's windows are cut many times.
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(24 * MiB);
    await target.fill(a, 8 * MiB, "random", 3);
    await target.fill(a + BigInt(8 * MiB), 8 * MiB, "text", 4);
    await target.fill(a + BigInt(16 * MiB), 8 * MiB, "stride:4", 5);
    const before = await target.sum(a, 24 * MiB);
    for (const spec of ["raw", "zstd:1", "lz4"]) {
      const codec = spec === "raw" ? undefined : parseCodec(spec);
      const opts = { memoryBudget: MIN_MEMORY_BUDGET };
      await checkpoint(target.pid, `${dir}/i`, { ...opts, fsync: false, codec });
      await target.fill(a, 24 * MiB, "random", 9);
      await restore(target.pid, `${dir}/i`, { ...opts, codecs: codec ? [codec] : undefined });
      assertEquals(await target.sum(a, 24 * MiB), before, spec);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo checkpoint refuses a --memory below 4M or that is not a size", async () => {
  for (const bad of ["1M", "lots"]) {
    const c = await cryo(["checkpoint", "--pid", "1", "-o", "/nonexistent/i", "--memory", bad]);
    assertEquals(c.code, 2, c.stderr);
    assert(c.stderr.includes("--memory"), c.stderr);
  }
});
