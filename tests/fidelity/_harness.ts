/**
 * The fidelity suite's harness: a real program nobody here wrote is brought to a state, checkpointed, changed a
 * lot (writes, allocations, frees), rolled back, and checked through its own interface (a fingerprint of its
 * data), then used further; after the last round it is asked to exit and must exit 0. Each program runs
 * `CRYO_FIDELITY_ROUNDS` rounds (default 20), once quiet and once with two busy loops in the background. Every
 * child is killed by its pid in a `finally`; programs talk over pipes or loopback only.
 *
 * @module
 */

import { assert, assertEquals } from "../_assert.ts";
import { checkpoint } from "../../lib/ops/checkpoint.ts";
import { restore, type RestoreOptions } from "../../lib/ops/restore.ts";
import type { RestoreResult } from "../../lib/ops/restore_commit.ts";
import { threadReport } from "../../lib/kernel/thread_report.ts";

/** Rounds per run: `CRYO_FIDELITY_ROUNDS`, default 20. */
export const ROUNDS = Number(Deno.env.get("CRYO_FIDELITY_ROUNDS") ?? 20);

/** A running program under test. */
export interface Session {
  /** Its pid. */
  readonly pid: number;
  /** A fingerprint of its data, asked through its own interface. */
  fingerprint(): Promise<string>;
  /** Change it a lot: writes, allocations, frees. */
  change(round: number): Promise<void>;
  /** Use it a little after a rollback and check it answers right (throws when not). */
  use(round: number): Promise<void>;
  /** Ask it to exit; resolves with its exit code. */
  exit(): Promise<number>;
  /** Kill it by pid (SIGKILL) and reap it; idempotent. */
  close(): Promise<void>;
}

/** A program of the suite. */
export interface Program {
  /** Its name in test names. */
  name: string;
  /** The executable that must be present (the test is ignored without it, naming it). */
  binary: string;
  /** Start it and bring it to its first state. */
  start(): Promise<Session>;
  /** Restore options it needs (documented where set). */
  restore?: RestoreOptions;
}

/** Whether `binary` is on PATH. */
export function have(binary: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${binary}`], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** A child spoken to by lines over pipes. */
export class Pipe {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncGenerator<string>;
  #closed = false;
  /** Its exit status, once it exited. */
  readonly status: Promise<Deno.CommandStatus>;

  /**
   * Spawn `command`.
   *
   * @param command The program.
   * @param args Its arguments.
   * @param env Extra environment.
   */
  constructor(command: string, args: string[], env: Record<string, string> = {}) {
    this.#child = new Deno.Command(command, { args, env, stdin: "piped", stdout: "piped", stderr: "inherit" })
      .spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#lines = lines(this.#child.stdout);
    this.status = this.#child.status;
  }

  /** The pid. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Write text. */
  async write(text: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(text));
  }

  /** The next line, or an error after `timeoutMs` or at its exit. */
  async line(timeoutMs = 120_000): Promise<string> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`pid ${this.pid}: no output in ${timeoutMs} ms\n${threadReport(this.pid)}`)),
        timeoutMs,
      );
    });
    try {
      const next = await Promise.race([this.#lines.next(), timeout]);
      if (next.done) throw new Error(`pid ${this.pid} exited`);
      return next.value;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Send one line, read one answer that must start with `ok`; return what follows it. */
  async request(text: string, timeoutMs?: number): Promise<string> {
    await this.write(text + "\n");
    const answer = await this.line(timeoutMs);
    if (!answer.startsWith("ok")) throw new Error(`pid ${this.pid}: ${JSON.stringify(text)} -> ${answer}`);
    return answer.slice(3);
  }

  /** Close its stdin (many programs exit on end of input). */
  async closeInput(): Promise<void> {
    await this.#writer.close().catch(() => {});
  }

  /** Kill it by pid and reap it. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      Deno.kill(this.pid, "SIGKILL");
    } catch { /* already gone */ }
    await this.#writer.close().catch(() => {});
    await this.#child.status;
    await this.#child.stdout.cancel().catch(() => {});
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, nl);
      pending = pending.slice(nl + 1);
    }
  }
}

/** Two busy loops (`sh -c 'while :; do :; done'`), killed by pid with {@link stopLoad}. */
export function startLoad(): Deno.ChildProcess[] {
  return [0, 1].map(() =>
    new Deno.Command("sh", { args: ["-c", "while :; do :; done"], stdout: "null", stderr: "null" }).spawn()
  );
}

/** Kill the busy loops by pid and reap them. */
export async function stopLoad(load: Deno.ChildProcess[]): Promise<void> {
  for (const c of load) {
    try {
      Deno.kill(c.pid, "SIGKILL");
    } catch { /* gone */ }
  }
  await Promise.all(load.map((c) => c.status));
}

/** Figures of one run, printed at its end. */
interface Figures {
  restoreMs: number[];
  layoutChanges: number;
}

async function run(p: Program, loaded: boolean): Promise<Figures> {
  const dir = await Deno.makeTempDir({ prefix: "cryo-fidelity-" });
  const load = loaded ? startLoad() : [];
  let s: Session | undefined;
  const figures: Figures = { restoreMs: [], layoutChanges: 0 };
  let step = "start";
  let last: RestoreResult | undefined;
  try {
    s = await p.start();
    const image = `${dir}/${p.name}.cryo`;
    const f0 = await s.fingerprint();
    await checkpoint(s.pid, image, { fsync: false });
    for (let round = 0; round < ROUNDS; round++) {
      step = `round ${round}: change`;
      await s.change(round);
      const changed = await s.fingerprint();
      assert(changed !== f0, `round ${round}: the change changed the fingerprint`);
      const t0 = performance.now();
      let r: RestoreResult;
      try {
        r = await restore(s.pid, image, p.restore);
      } catch (e) {
        throw new Error(`${p.name} round ${round}: restore failed: ${(e as Error).message}`, { cause: e });
      }
      figures.restoreMs.push(performance.now() - t0);
      figures.layoutChanges += r.layoutChanges.length;
      last = r;
      step = `round ${round}: the fingerprint after the rollback`;
      assertEquals(
        await s.fingerprint(),
        f0,
        `${p.name} round ${round}: the fingerprint is the checkpoint's`,
      );
      step = `round ${round}: use after the rollback`;
      await s.use(round);
    }
    step = "exit";
    assertEquals(await s.exit(), 0, `${p.name} exits cleanly`);
    return figures;
  } catch (e) {
    throw new Error(
      `${p.name} at ${step}: ${(e as Error).message}${last ? `\nthe last restore: ${brief(last)}` : ""}`,
      {
        cause: e,
      },
    );
  } finally {
    await s?.close();
    await stopLoad(load);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The parts of a restore's result that tell what it did to threads, descriptors and the layout. */
function brief(r: RestoreResult): string {
  return JSON.stringify({
    threadsGone: r.threadsGone,
    threadsRecreated: r.threadsRecreated,
    threadsEnded: r.threadsEnded,
    descriptorChanges: r.descriptorChanges,
    offsetChanges: r.offsetChanges,
    layoutChanges: r.layoutChanges.length,
  });
}

/**
 * Register the quiet and the loaded run of a program.
 *
 * @param p The program.
 */
export function fidelity(p: Program): void {
  for (const loaded of [false, true]) {
    Deno.test({
      name: `${p.name}: ${ROUNDS} rollbacks ${
        loaded ? "under CPU load" : "quiet"
      } each give back the checkpoint's fingerprint; it runs on and exits 0`,
      ignore: !have(p.binary),
      sanitizeResources: false,
      sanitizeOps: false,
      fn: async () => {
        const f = await run(p, loaded);
        const sorted = [...f.restoreMs].sort((a, b) => a - b);
        console.log(
          `  ${p.name} ${loaded ? "loaded" : "quiet"}: ${ROUNDS} rounds, restore median ${
            sorted[sorted.length >> 1]?.toFixed(0)
          } ms (max ${sorted.at(-1)?.toFixed(0)}), ${f.layoutChanges} layout changes in all`,
        );
      },
    });
  }
}

/**
 * A python3 program that runs each line of its stdin (`exec`, in one namespace with `hashlib`) and answers
 * `ok <_r>` or `err <exception>`: run with `python3 -c PYTHON_REPL`.
 */
export const PYTHON_REPL = `
import sys, hashlib
g = {'hashlib': hashlib}
for line in sys.stdin:
    try:
        exec(line, g)
        r = g.pop('_r', '')
        sys.stdout.write('ok %s\\n' % (r,))
    except SystemExit:
        raise
    except BaseException as e:
        sys.stdout.write('err %r\\n' % (e,))
    sys.stdout.flush()
`;
