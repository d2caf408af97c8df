// A real program (python3) rolled back CRYO_ROLLBACKS times (default 1000, as the issue asks) with write
// tracking. Every round changes the program's state (about 11 MiB written), rolls it back, and checks its
// fingerprint; its RSS must not grow over the rounds. On our 2-core machine at load ~10, 1000 rounds took 80 s
// (a rollback 14.7 ms, the rest python's own work: the case and the fingerprint, a sort of 50,000 items).
import { assert, assertEquals } from "./_assert.ts";
import { snapshot } from "../lib/ops/snapshot.ts";
import { Pipe, PYTHON_REPL } from "./fidelity/_harness.ts";

const ROUNDS = Number(Deno.env.get("CRYO_ROLLBACKS") ?? 1000);

function rss(pid: number): number {
  return Number(Deno.readTextFileSync(`/proc/${pid}/status`).match(/VmRSS:\s+(\d+) kB/)![1]) * 1024;
}

Deno.test({
  name:
    `snapshot().rollback() of python3, ${ROUNDS} times with tracking: the same fingerprint every time, RSS does not grow`,
  ignore: !new Deno.Command("python3", { args: ["-c", "1"] }).outputSync().success,
  async fn() {
    const p = new Pipe("python3", ["-u", "-c", PYTHON_REPL]);
    try {
      await p.request("d = {i: str(i) * 3 for i in range(50000)}");
      const print =
        "_r = hashlib.sha256(repr(sorted(d.items())[::97]).encode()).hexdigest() + ' %d' % len(d)";
      const fingerprint = await p.request(print);
      await using snap = await snapshot(p.pid, { settleMs: 100 });
      assert(snap.tracked);
      const rssAt: number[] = [];
      let written = 0, stopped = 0, took = 0;
      for (let round = 1; round <= ROUNDS; round++) {
        // Writes spread over the dict, a few MiB of new objects (populated since), some freed again.
        await p.request(
          `[d.__setitem__(i, 'r${round}') for i in range(${round % 97}, 50000, 613)]; ` +
            `junk = [bytearray(4096) for _ in range(${100 + (round % 5) * 50})]; ` +
            `e = {i: i for i in range(5000)}; del junk`,
        );
        const t = performance.now();
        const r = await snap.rollback();
        took += performance.now() - t;
        assertEquals(r.tracking?.used, true, r.tracking?.reason);
        written += r.tracking?.writtenBytes ?? 0;
        stopped += r.stoppedMs;
        assertEquals(await p.request(print), fingerprint, `round ${round}`);
        rssAt.push(rss(p.pid));
      }
      const early = Math.max(...rssAt.slice(0, Math.min(10, rssAt.length)));
      const late = Math.max(...rssAt.slice(-10));
      assert(
        late <= early + 2 * 1024 * 1024,
        `RSS grew from ${early} to ${late} bytes over ${ROUNDS} rounds`,
      );
      console.log(
        `${ROUNDS} rollbacks: ${(written / ROUNDS / 1024).toFixed(0)} KiB written, ${
          (took / ROUNDS).toFixed(1)
        } ms and ${(stopped / ROUNDS).toFixed(1)} ms stopped per rollback; RSS ${
          (early / 1048576).toFixed(1)
        } -> ${(late / 1048576).toFixed(1)} MiB`,
      );
    } finally {
      await p.close();
    }
  },
});
