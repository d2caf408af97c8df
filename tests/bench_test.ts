import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "./_assert.ts";
import { Target } from "./_target.ts";
import { median, min, ratio, summarize } from "../bench/stats.ts";
import { fileSize, pipelineDump, pipelineLoad, withStopWindow } from "../bench/peers.ts";
import { checkRows, MODULES } from "../bench/main.ts";
import { formatValue, markdown } from "../bench/report.ts";
import type { Report } from "../bench/report.ts";

const MiB = 2 ** 20;
const runner = new URL("../bench/main.ts", import.meta.url).pathname;

Deno.test("`median()` and `min()` summarise odd and even sample counts", () => {
  assertEquals(median([3, 1, 2]), 2);
  assertEquals(median([4, 1, 3, 2]), 2.5);
  assertEquals(median([7]), 7);
  assertEquals(min([3, -1, 2]), -1);
  assertThrows(() => median([]), RangeError, "there are none");
  assertThrows(() => min([1, NaN]), RangeError, "NaN is not a finite number");
});

Deno.test("`summarize()` gives min, median and the ratio of medians to the baseline", () => {
  const row = summarize({
    group: "g",
    name: "n",
    unit: "ms",
    samples: [30, 10, 20],
    baseline: "b",
    baselineSamples: [40, 80, 60, 100],
  });
  assertEquals([row.min, row.median, row.baselineMin, row.baselineMedian, row.ratio], [
    10,
    20,
    40,
    70,
    20 / 70,
  ]);
  assertEquals(summarize({ group: "g", name: "n", unit: "bytes", samples: [5] }).ratio, undefined);
  assertEquals(ratio([1], [0]), undefined);
});

Deno.test("`formatValue()` prints each unit for people", () => {
  assertEquals(formatValue(1.23456, "ms"), "1.23 ms");
  assertEquals(formatValue(432.16, "ms"), "432.2 ms");
  assertEquals(formatValue(64 * MiB, "bytes"), "64.0 MiB");
  assertEquals(formatValue(4 * 2 ** 30, "bytes"), "4.000 GiB");
  assertEquals(formatValue(5.126, "GiB/s"), "5.13 GiB/s");
});

Deno.test("`markdown()` lists missed goals and modules that did not run", () => {
  const row = summarize({
    group: "checkpoint 1 GiB random",
    name: "cryo: checkpoint time",
    unit: "ms",
    samples: [600, 700, 650],
    baseline: "C pipeline",
    baselineSamples: [400, 500, 450],
    goal: "≤ 500 ms",
    met: false,
    note: "bounded by | reading",
  });
  const text = markdown({
    date: "2026-01-01T00:00:00Z",
    quick: false,
    runs: 3,
    machine: {
      cpu: "CPU X",
      cores: 2,
      memory: 2 ** 34,
      kernel: "6.18",
      deno: "deno 2",
      gdb: "absent",
      scratch: "/tmp",
      load: "0.5",
    },
    modules: [{ name: "checkpoint", status: "ran", seconds: 1 }, {
      name: "freeze",
      status: "absent",
      seconds: 0,
    }],
    rows: [row],
  });
  assertMatch(text, /\| CPU \| CPU X \|/);
  assertMatch(text, /\| memory \| 16\.0 GiB \|/);
  assertMatch(
    text,
    /\| cryo: checkpoint time \| 600\.0 ms \| 650\.0 ms \| C pipeline \| 450\.0 ms \| 1\.44× \| ≤ 500 ms \| NO \|/,
  );
  assertMatch(
    text,
    /## Goals\n[^#]*\| checkpoint 1 GiB random \| cryo: checkpoint time \| ≤ 500 ms \| 650\.0 ms \| 1\.44× \| NO \|/,
  );
  assertMatch(text, /- checkpoint 1 GiB random, cryo: checkpoint time: bounded by \\\| reading/);
  assertMatch(text, /- freeze: not measured, bench\/freeze\.ts is not in the tree yet/);
});

Deno.test("`checkRows()` refuses rows without finite samples or with an unknown unit", () => {
  const good = { group: "g", name: "n", unit: "ms", samples: [1] };
  assertEquals(checkRows("x", [good]).length, 1);
  assertThrows(
    () => checkRows("x", [{ ...good, samples: [] }]),
    TypeError,
    "row 0 (n) has no finite samples",
  );
  assertThrows(
    () => checkRows("x", [{ ...good, baselineSamples: [Infinity] }]),
    TypeError,
    "baselineSamples",
  );
  assertThrows(() => checkRows("x", [{ ...good, unit: "s" }]), TypeError, 'unit "s"');
  assertThrows(() => checkRows("x", {}), TypeError, "returned no array");
});

Deno.test("`pipelineDump()` and `pipelineLoad()` roll a target's memory back, holding it stopped", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-bench-test-" });
  const target = Target.start();
  try {
    await target.cmd("heartbeat");
    const len = 4 * MiB;
    const addr = await target.map(len);
    await target.fill(addr, len, "random", 1);
    const before = await target.sum(addr, len);
    const dump = `${dir}/p.dump`;
    const d = await withStopWindow(target, () => pipelineDump(target.pid, addr, len, dump));
    assertEquals(d.value.bytes, len);
    assert(d.value.stopMs > 0 && d.value.stopMs <= d.value.ms, `stop ${d.value.stopMs} of ${d.value.ms} ms`);
    await target.fill(addr, len, "random", 2);
    assert((await target.sum(addr, len)) !== before, "the fill changed the memory");
    const l = await pipelineLoad(target.pid, addr, len, dump);
    assertEquals(l.bytes, len);
    assertEquals(await target.sum(addr, len), before);
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("`pipelineDump()` stores only resident pages of a sparse range", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-bench-test-" });
  const target = Target.start();
  try {
    const len = 8 * MiB;
    const addr = await target.map(len);
    await target.fill(addr, len, "stride:4", 3);
    const dump = `${dir}/p.dump`;
    const d = await pipelineDump(target.pid, addr, len, dump, { stop: false });
    assertEquals(d.bytes, len / 4);
    assertEquals(d.stopMs, 0);
    const size = await fileSize(dump);
    const pages = len / 4096;
    assertEquals(size.apparent, len / 4 + pages / 8 + 16); // data, bitmap, page count and magic
    await assertRejects(() => pipelineLoad(target.pid, addr, len / 2, dump), Error, "not a pipeline dump");
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** What one run of `bench/main.ts --quick --only checkpoint --runs 1` wrote and printed. */
interface QuickRun {
  success: boolean;
  stdout: string;
  stderr: string;
  report?: Report;
  md?: string;
}

let quickRun: Promise<QuickRun> | undefined;

/**
 * The benchmark smoke run, once for the tests that read it: the checkpoint module, one run, with nothing on
 * PATH, so that it also shows that the gcore rows are skipped without gdb (the other rows are the same with it).
 */
function quick(): Promise<QuickRun> {
  return quickRun ??= (async () => {
    const out = await Deno.makeTempDir({ prefix: "cryo-bench-out-" });
    try {
      const run = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          runner,
          "--quick",
          "--only",
          "checkpoint",
          "--runs",
          "1",
          "--out",
          out,
          "--dir",
          out,
        ],
        env: { PATH: "/nonexistent" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = (b: Uint8Array) => new TextDecoder().decode(b);
      const result: QuickRun = { success: run.success, stdout: text(run.stdout), stderr: text(run.stderr) };
      if (run.success) {
        result.report = JSON.parse(await Deno.readTextFile(`${out}/BENCHMARKS.json`));
        result.md = await Deno.readTextFile(`${out}/BENCHMARKS.md`);
      }
      return result;
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  })();
}

Deno.test("bench/main.ts --quick writes a well-formed report of the modules it ran", async () => {
  const run = await quick();
  assert(run.success, `${run.stdout}\n${run.stderr}`);
  const report = run.report!;
  assertEquals(report.quick, true);
  assertEquals(report.runs, 1);
  assertEquals(report.modules.map((m) => [m.name, m.status]), [["checkpoint", "ran"]]);
  assertEquals(report.machine.kernel, Deno.osRelease());
  assertEquals(
    report.machine.cores,
    (await Deno.readTextFile("/proc/cpuinfo")).match(/^processor/gm)!.length,
  );
  assert(report.rows.length >= 6, `${report.rows.length} rows`);
  for (const r of report.rows) {
    assertEquals(r.samples.length, 1);
    assert(r.min <= r.median && r.min > 0, `${r.group}: ${r.name}: ${r.min} / ${r.median}`);
    if (r.baselineSamples) assertEquals(r.ratio, r.median / r.baselineMedian!);
  }
  // The sparse workload: 256 MiB mapped, every 4th page written, so the pipeline moved 64 MiB.
  const sparse = report.rows.find((r) =>
    r.group.includes("sparse") && r.name === "C pipeline: image allocated"
  );
  assertEquals(sparse?.baselineMedian, 64 * MiB);
  const md = run.md!;
  assertMatch(md, /^# cryo benchmarks\n/);
  assertMatch(md, /## Machine/);
  assert(md.includes(`Linux ${Deno.osRelease()}`), "the kernel is described");
  assert(md.includes(`deno ${Deno.version.deno}`), "the Deno version is described");
  for (const r of report.rows) {
    assert(md.includes(`### ${r.group}`), `heading ${r.group}`);
    assertMatch(md, new RegExp(`\\| ${r.name.replace(/[()]/g, "\\$&")} +\\|`));
  }
  assert(run.stdout.includes("C pipeline: checkpoint time"), "the table is printed");
});

Deno.test("bench/main.ts refuses an unknown module and names the known ones", async () => {
  const run = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", runner, "--quick", "--only", "nosuch"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(run.code, 2);
  const err = new TextDecoder().decode(run.stderr);
  assertMatch(err, /Cannot run the benchmarks: no module nosuch/);
  assert(err.includes(MODULES.join(", ")), err);
});

Deno.test("bench/main.ts without gdb on PATH skips the gcore rows with a note", async () => {
  const run = await quick();
  assert(run.success, run.stderr);
  const report = run.report!;
  assertEquals(report.machine.gdb, "absent");
  assertEquals(report.rows.filter((r) => r.name.startsWith("gcore") || r.baseline === "gcore").length, 0);
  const noted = report.rows.filter((r) => r.note?.includes("gcore skipped: gdb is not installed"));
  assertEquals(noted.length, 3); // one per workload
  assert(report.rows.some((r) => r.name === "C pipeline: checkpoint time"), "the pipeline still ran");
});
