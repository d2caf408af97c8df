import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { splitRuns } from "../lib/ops/live_arm.ts";
import { liveRunTable } from "../lib/kernel/wp_server.ts";
import { markStacks, markStacksAt, threadStacks } from "../lib/kernel/stacks.ts";
import { readRegions } from "../lib/kernel/maps.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { register } from "../lib/kernel/threads.ts";
import { Target } from "./_target.ts";

const P = 4096n;
const runs = (...pages: number[]) => BigUint64Array.from(pages.map((p) => BigInt(p) * P));

Deno.test("splitRuns cuts runs where the hot runs begin and end, and flags those", () => {
  // Runs [10, 20), [30, 40), [50, 60); hot: the start of the first, the middle of the second, the whole third.
  const { runs: out, hot } = splitRuns(runs(10, 20, 30, 40, 50, 60), runs(10, 12, 33, 35, 50, 60));
  assertEquals([...out], [...runs(10, 12, 12, 20, 30, 33, 33, 35, 35, 40, 50, 60)]);
  assertEquals([...hot], [1, 0, 0, 1, 0, 1]);
  // Runs after the last hot one are kept as they are.
  const tail = splitRuns(runs(10, 20, 30, 40, 50, 60), runs(18, 20));
  assertEquals([...tail.runs], [...runs(10, 18, 18, 20, 30, 40, 50, 60)]);
  assertEquals([...tail.hot], [0, 1, 0, 0]);
  // Two hot runs in one run.
  const two = splitRuns(runs(0, 100), runs(10, 20, 30, 40));
  assertEquals([...two.runs], [...runs(0, 10, 10, 20, 20, 30, 30, 40, 40, 100)]);
  assertEquals([...two.hot], [0, 1, 0, 1, 0]);
  assertThrows(() => splitRuns(runs(10, 20), runs(25, 26)), RangeError, "outside");
});

Deno.test("liveRunTable flags hot runs to be copied aside at the start", () => {
  const { runs: r, hot } = splitRuns(runs(10, 20), runs(12, 14));
  const table = liveRunTable([{ runs: r, preload: false, hot }, { runs: runs(30, 31), preload: true }]);
  assertEquals([...table], [10n * P, 2n * P, 0n, 12n * P, 2n * P, 1n, 14n * P, 6n * P, 0n, 30n * P, P, 1n]);
});

Deno.test("markStacksAt finds the stacks a frozen child's registers point into, as /proc/PID/task says", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  using frozen = freeze(target.pid, { registers: true });
  const regions = readRegions(target.pid);
  const stacks = (rs: typeof regions) => rs.filter((r) => r.kind === "stack").map((r) => r.start);
  const fromRegisters = stacks(markStacksAt(regions, frozen.threads.map((t) => register(t, "rsp"))));
  const fromProc = stacks(markStacks(regions, threadStacks(target.pid, regions)));
  assertEquals(fromRegisters, fromProc);
  assert(fromRegisters.length >= 2, `only ${fromRegisters.length} thread stacks found (main's is [stack])`);
});
