/**
 * `cryo demo`: start the bundled Deno workload, checkpoint it, let it change, roll it back, show the state is
 * back and that it keeps running, inspect and verify the image, clean up.
 *
 * @module
 */

import { checkpoint } from "../../ops/checkpoint.ts";
import { LineChild } from "../../kernel/child.ts";
import { inspect, verify } from "../../ops/inspect.ts";
import { restore } from "../../ops/restore.ts";
import { parse } from "../args.ts";
import { humanBytes, humanDuration } from "../format.ts";
import { type Command, out } from "../main.ts";

const workload = new URL("../../../examples/workload.ts", import.meta.url).pathname;

function describe(state: string): string {
  const f = Object.fromEntries(state.split(" ").map((kv) => kv.split("=")));
  return `arena ${f.arena}  shared ${f.shared}  ledger ${f.ledger} entries`;
}

export const demoCommand: Command = {
  name: "demo",
  summary: "checkpoint a live Deno program, change it, roll it back (needs root)",
  help: `cryo demo [--keep DIR]

Starts examples/workload.ts: a Deno program holding state in a 64 MiB FFI arena, a SharedArrayBuffer written by
two Workers, and a ledger on the V8 heap. cryo checkpoints the whole process (every thread frozen), lets the
program change all three, rolls the live process back to the image, and shows that the state is back and that
the program keeps running. Then it inspects and verifies the image, and cleans up.

options:
  --keep DIR   write the image into DIR and keep it (default: a temporary directory, removed)`,
  async run(ctx) {
    const { values } = parse(ctx.args, { keep: { type: "string" } });
    const dir = values.keep ?? await Deno.makeTempDir({ prefix: "cryo-demo-" });
    const image = `${dir}/workload.cryo`;
    const step = (n: number, text: string) => out(`\n${n}. ${text}`);
    await using child = LineChild.spawn(Deno.execPath(), ["run", "-A", workload]);
    try {
      const initial = (await child.request("state", 30_000)).replace(/ arena_addr=\S+/, "");
      out(`cryo demo: rolling back a live Deno process\n`);
      out(`workload pid ${child.pid}: 2 Workers, a 64 MiB FFI arena, a SharedArrayBuffer, a JS-heap ledger`);
      step(1, "its state now");
      out(`   ${describe(initial)}`);

      step(2, `checkpoint: freeze all its threads, persist its memory to ${image}, thaw`);
      const cp = await checkpoint(child.pid, image, { signal: ctx.signal });
      out(
        `   ${cp.regions} regions, ${cp.threads} threads, ${humanBytes(cp.dataBytes)} of data ` +
          `(+ ${humanBytes(cp.holeBytes)} of holes that take no space), image ${
            humanBytes(cp.allocatedBytes)
          } on disk`,
      );
      out(`   the process was stopped for ${humanDuration(cp.stoppedMs)}`);

      step(3, "the workload keeps running: 5 more rounds of work change all three");
      await child.request("work 5");
      const changed = (await child.request("state")).replace(/ arena_addr=\S+/, "");
      out(`   ${describe(changed)}`);

      step(4, "restore: freeze it again, verify the image, write its memory and registers back, thaw");
      const rs = await restore(child.pid, image, { signal: ctx.signal });
      out(
        `   wrote ${humanBytes(rs.dataBytes)}, made ${humanBytes(rs.holeBytes)} of holes read as zero, ` +
          `${rs.threadsRestored} threads' registers; stopped ${humanDuration(rs.stoppedMs)}; ` +
          `all or nothing (${humanBytes(rs.journalBytes)} journaled)`,
      );
      if (rs.threadsEnded.length) {
        out(`   ${rs.threadsEnded.length} thread(s) of Deno's pool born since the checkpoint were ended`);
      }

      step(5, "its state after the rollback");
      const back = (await child.request("state", 10_000)).replace(/ arena_addr=\S+/, "");
      const same = back === initial;
      out(`   ${describe(back)}   ${same ? "== the checkpoint's state" : "!= the checkpoint's state"}`);

      step(6, "and it still works: one more round");
      await child.request("work 1", 10_000);
      out(`   ${describe((await child.request("state", 10_000)).replace(/ arena_addr=\S+/, ""))}`);

      step(7, "the image");
      const info = await inspect(image);
      const v = await verify(image);
      out(
        `   ${info.regions.length} regions, ${info.totals.records} records, ` +
          `${humanBytes(info.fileBytes)} (${humanBytes(info.allocatedBytes)} on disk); ` +
          `verify: ${v.ok ? "sound" : v.problem}`,
      );
      out(`   see it all with: cryo inspect ${values.keep ? image : "IMAGE"}`);
      out(same ? "\ndemo passed: the live process was rolled back to its checkpoint" : "\ndemo FAILED");
      return same && v.ok ? 0 : 1;
    } finally {
      await child.close();
      if (!values.keep) await Deno.remove(dir, { recursive: true });
    }
  },
};
