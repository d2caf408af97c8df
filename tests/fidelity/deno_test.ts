// A Deno program with two Workers, a SharedArrayBuffer and an FFI arena (examples/workload.ts); fingerprint
// its `state` (hashes of the arena and the shared buffer, the JS ledger's length).
//
// Deno's runtime ends pool threads by itself (its blocking pool ends a thread idle for ~10 s): the rollback
// creates them again (lib/kernel/threads_fix.ts); without that the program hangs at its next blocking task.
// It also starts new pool threads when it needs them: endBornThreads ends those (left running on memory
// rolled back to before they existed, they crash it: SIGSEGV within a few rounds).
import { assert } from "../_assert.ts";
import { fidelity, Pipe } from "./_harness.ts";

const workload = new URL("../../examples/workload.ts", import.meta.url).pathname;
const fingerprint = (state: string) => state.replace(/ arena_addr=\S+/, "");

fidelity({
  name: "deno-workers",
  binary: Deno.execPath(),
  restore: { endBornThreads: true },
  async start() {
    const p = new Pipe(Deno.execPath(), ["run", "-A", workload]);
    await p.request("state");
    return {
      pid: p.pid,
      fingerprint: async () => fingerprint(await p.request("state")),
      async change() {
        await p.request("work 3");
        await p.request("churn 32");
      },
      async use() {
        const before = await p.request("state");
        await p.request("work 1");
        const after = await p.request("state");
        const n = (s: string) => Number(/ledger=(\d+)/.exec(s)?.[1]);
        assert(n(after) === n(before) + 1, `${before} -> ${after}`);
      },
      async exit() {
        await p.write("exit\n");
        return (await p.status).code;
      },
      close: () => p.close(),
    };
  },
});
