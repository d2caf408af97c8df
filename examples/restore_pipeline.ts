/**
 * A scripted restore pipeline: checkpoint a running program, check the image, and decide with a dry run before
 * rolling the program back, the way a deploy script would. Starts its own workload (examples/workload.ts) and
 * kills it at the end. Needs root (ptrace).
 *
 * Run: `deno run -A examples/restore_pipeline.ts`
 *
 * @module
 */

import { LineChild } from "../lib/kernel/child.ts";
import { checkpoint, inspect, LayoutMismatchError, restore, verify } from "../mod.ts";

const workload = new URL("./workload.ts", import.meta.url).pathname;
const dir = await Deno.makeTempDir({ prefix: "cryo-pipeline-" });
const image = `${dir}/warm.cryo`;
await using app = LineChild.spawn(Deno.execPath(), ["run", "-A", workload]);
try {
  await app.request("work 3", 30_000); // warm it up
  const warm = await app.request("state");

  // 1. Checkpoint the warm state.
  const cp = await checkpoint(app.pid, image);
  console.log(
    `checkpoint: ${cp.regions} regions, ${cp.dataBytes >> 20} MiB, stopped ${cp.stoppedMs.toFixed(0)} ms`,
  );

  // 2. The program goes on and drifts from the warm state.
  await app.request("work 10");

  // 3. Before rolling back: the image must verify, come from this boot, and match the process's layout.
  const v = await verify(image);
  if (!v.ok) throw new Error(`image damaged: ${v.problem}`);
  const info = await inspect(image);
  const bootId = Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
  if (info.source.bootId !== bootId) throw new Error("image from another boot");
  try {
    const dry = await restore(app.pid, image, { dryRun: true });
    console.log(`dry run: would write ${dry.dataBytes >> 20} MiB into ${dry.regions} regions`);
  } catch (e) {
    if (e instanceof LayoutMismatchError) {
      throw new Error(`cannot roll back, the layout changed:\n  ${e.differences.join("\n  ")}`);
    }
    throw e;
  }

  // 4. Roll back (all or nothing), and check the program is in its warm state again.
  const rs = await restore(app.pid, image);
  console.log(`restore: ${rs.threadsRestored} threads, stopped ${rs.stoppedMs.toFixed(0)} ms`);
  const now = await app.request("state", 10_000);
  if (now !== warm) throw new Error(`MISMATCH: ${now} != ${warm}`);
  console.log("rolled back to the warm state");
} finally {
  await app.close();
  await Deno.remove(dir, { recursive: true });
}
