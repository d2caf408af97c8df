/**
 * Fault injection: `cryo restore` is killed (SIGKILL) or interrupted (SIGTERM) at random moments, and the
 * target is checked afterwards: it is never left half-written. After SIGTERM it holds either its state before
 * the restore (undone, or not begun) or the image's (finished), and runs; after SIGKILL it may also be left
 * stopped, in which case the same restore run again finishes it. `CRYO_FAULT_ROUNDS` sets the number of rounds
 * (default 6).
 *
 * @module
 */

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { threadReport } from "../lib/kernel/thread_report.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { markerDir } from "../lib/ops/recovery.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const MiB = 1 << 20;
const ROUNDS = Number(Deno.env.get("CRYO_FAULT_ROUNDS") ?? 6);

function state(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).match(/^State:\s+(\S)/m)?.[1] ?? "?";
}

function restoreCli(pid: number, image: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "restore", "--pid", String(pid), "-q", image],
    stdin: "null",
    stdout: "null",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
}

/** The target answers; else an error with its state and each thread's syscall and scheduling policy. */
async function alive(target: Target, where: string): Promise<void> {
  try {
    assertEquals(await target.cmd("pid", 5000), String(target.pid));
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}\n${threadReport(target.pid)}`);
  }
}

async function settled(pid: number): Promise<string> {
  // After its tracer died, a held target's threads are detached and the first to run takes the pending SIGSTOP:
  // it is traced (t), then briefly running (R), then stopped (T). While a marker says a restore was writing,
  // give it a bounded moment to get there (a kill just before the hold leaves it running, with a stale marker).
  const marked = () => {
    try {
      Deno.statSync(`${markerDir()}/restore-${pid}.json`);
      return true;
    } catch {
      return false;
    }
  };
  let s = state(pid);
  for (let i = 0; i < 100 && (s === "t" || (s !== "T" && marked())); i++) {
    await new Promise((r) => setTimeout(r, 10));
    s = state(pid);
  }
  return s;
}

Deno.test(`cryo restore killed or interrupted at random moments never leaves a target half-written (${ROUNDS} rounds)`, async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const len = 48 * MiB;
    const a = await target.map(len);
    await target.fill(a, len, "random", 1);
    const want = await target.sum(a, len);
    const image = `${dir}/a.cryo`;
    await checkpoint(target.pid, image, { fsync: false });
    // How long one uninterrupted restore takes, so that the faults spread over all of it.
    await target.fill(a, len, "random", 2);
    let t0 = performance.now();
    assertEquals((await restoreCli(target.pid, image).status).code, 0);
    const span = performance.now() - t0;
    assertEquals(await target.sum(a, len), want);
    const maps = Deno.readTextFileSync(`/proc/${target.pid}/maps`);
    const sameMap = (where: string) =>
      assertEquals(
        Deno.readTextFileSync(`/proc/${target.pid}/maps`),
        maps,
        `${where}: nothing left mapped aside`,
      );
    const seen = { finished: 0, undone: 0, stopped: 0 };
    let seed = 0x9e3779b9;
    const random = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
    for (let round = 0; round < ROUNDS; round++) {
      await target.fill(a, len, "random", 100 + round);
      const before = await target.sum(a, len);
      const sig = round % 2 === 0 ? "SIGKILL" : "SIGTERM";
      const child = restoreCli(target.pid, image);
      const delay = random() * span;
      t0 = performance.now();
      await new Promise((r) => setTimeout(r, delay));
      try {
        child.kill(sig);
      } catch { /* it finished first */ }
      const code = (await child.status).code;
      const s = await settled(target.pid);
      const where = `round ${round}: ${sig} after ${delay.toFixed(0)} ms, exit ${code}, state ${s}`;
      if (Deno.env.get("CRYO_FAULT_VERBOSE")) console.log(where);
      if (s === "T") {
        assertEquals(sig, "SIGKILL", `${where}: only a killed restore leaves the target stopped`);
        seen.stopped++;
        const again = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", cli, "restore", "--recover", "--pid", String(target.pid), "-q"],
          stdout: "null",
          stderr: "piped",
          env: { NO_COLOR: "1" },
        }).output();
        assertEquals(again.code, 0, `${where}: ${new TextDecoder().decode(again.stderr)}`);
        assertEquals(await settled(target.pid) === "T", false, `${where}: recovery resumes it`);
        await alive(target, `${where}, recovered`);
        assertEquals(await target.sum(a, len), want, `${where}: recovery finished the restore`);
        sameMap(where);
        continue;
      }
      assert(s !== "t", `${where}: the target must not stay traced`);
      await alive(target, where);
      const now = await target.sum(a, len);
      assert(
        now === want || now === before,
        `${where}: half-written (neither the image nor the state before)`,
      );
      if (now === want) seen.finished++;
      else seen.undone++;
      sameMap(where);
      await alive(target, where);
    }
    console.log(
      `${ROUNDS} rounds: ${seen.finished} finished, ${seen.undone} undone or not begun, ${seen.stopped} stopped and recovered`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
