/**
 * The tools of the cold benchmark (bench/cold.ts), each run as a fresh process under `ffi/build/cryo_rusage`
 * (bench/rusage.c: fork, exec, `wait4`), which reports the command's wall time and peak RSS (`ru_maxrss`, its
 * waited-for children included): cryo's CLI, gdb's `gcore`, and memcr (a built binary from `$MEMCR`, or one
 * built from the source tree `$MEMCR_SRC` in a temporary directory outside the project).
 *
 * @module
 */

const rusageBinary = new URL("../ffi/build/cryo_rusage", import.meta.url).pathname;
const cliPath = new URL("../cli.ts", import.meta.url).pathname;

/** What one command cost. */
export interface Cost {
  /** Wall time from fork to its end, in ms (process start-up included: what a user waits for). */
  ms: number;
  /** Peak resident set of the command (and the children it waited for), in bytes. */
  rssBytes: number;
}

/**
 * Run `program args` as a fresh process under cryo_rusage; throws with its stderr when it fails.
 *
 * @param program The program.
 * @param args Its arguments.
 * @returns Its wall time and peak RSS.
 */
export async function measured(program: string, args: string[]): Promise<Cost> {
  const report = await Deno.makeTempFile({ prefix: "cryo-rusage-" });
  try {
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(rusageBinary, {
        args: [report, program, ...args],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (e) {
      throw new Error(
        `Cannot run ${rusageBinary}: ${(e as Error).message}; build it with \`deno task build\``,
      );
    }
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join("; ");
      throw new Error(`Cannot run ${program} ${args.join(" ")}: exit status ${out.code}: ${err}`);
    }
    return parseReport(await Deno.readTextFile(report), program);
  } finally {
    await Deno.remove(report).catch(() => {});
  }
}

function parseReport(text: string, program: string): Cost {
  const m = /^(\d+) (\d+) (\d+)\s*$/.exec(text);
  if (!m) throw new Error(`Cannot read what ${program} cost: cryo_rusage wrote ${JSON.stringify(text)}`);
  return { ms: Number(m[2]) / 1e6, rssBytes: Number(m[1]) * 1024 };
}

/**
 * Run cryo's CLI (`deno run -A cli.ts ARGS`) as a fresh process.
 *
 * @param args The CLI's arguments.
 * @param stdinFrom A file to give it as stdin (`restore -`), if any.
 * @returns Its wall time and peak RSS.
 */
export function cryoCli(args: string[], stdinFrom?: string): Promise<Cost> {
  if (stdinFrom === undefined) return measured(Deno.execPath(), ["run", "-A", cliPath, ...args]);
  // `sh` execs Deno with stdin redirected: the measured process is still the CLI alone.
  return measured("sh", [
    "-c",
    'f="$1"; shift; exec "$0" run -A "$@" < "$f"',
    Deno.execPath(),
    stdinFrom,
    cliPath,
    ...args,
  ]);
}

/** What one memcr hibernation cost, split at its prompt. */
export interface MemcrCost {
  /** From fork until memcr has written the dump and freed the target's memory (its prompt), in ms. */
  checkpointMs: number;
  /** From the key press until memcr has put the memory back and ended, in ms. */
  restoreMs: number;
  /** Peak RSS of memcr, in bytes. */
  rssBytes: number;
  /** Disk blocks of its dump (every file in its dump directory), in bytes. */
  allocated: number;
}

/**
 * Where memcr is: `$MEMCR` (a built binary), or built from `$MEMCR_SRC` (`make O=1` in a copy under the
 * system's temporary directory, once per process), or `null` when neither is given.
 *
 * @returns The binary, or `null`.
 */
export async function findMemcr(): Promise<string | null> {
  const bin = Deno.env.get("MEMCR");
  if (bin) return bin;
  const src = Deno.env.get("MEMCR_SRC");
  if (!src) return null;
  builtMemcr ??= buildMemcr(src);
  return await builtMemcr;
}

let builtMemcr: Promise<string> | undefined;

async function buildMemcr(src: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "cryo-memcr-build-" });
  const run = async (cmd: string, args: string[]) => {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join("; ");
      throw new Error(`Cannot build memcr from ${src}: ${cmd} ${args.join(" ")}: ${err}`);
    }
  };
  await run("cp", ["-a", `${src}/.`, dir]);
  await run("make", ["-C", dir, "clean"]);
  await run("make", ["-C", dir, "-j2", "O=1"]); // -O2, as a packaged build would be
  return `${dir}/memcr`;
}

/**
 * Hibernate `pid` with memcr (`memcr -p PID -d DIR`: freeze, dump, free the memory, wait for a key press),
 * measure its dump, press the key, and let it restore the memory and thaw the target.
 *
 * @param memcr The memcr binary.
 * @param pid The target.
 * @param dir Where its dump goes (emptied afterwards).
 * @returns The two phases' times, its peak RSS and the dump's allocated bytes.
 */
export async function memcrHibernate(memcr: string, pid: number, dir: string): Promise<MemcrCost> {
  const report = await Deno.makeTempFile({ prefix: "cryo-rusage-" });
  const started = performance.now();
  const child = new Deno.Command(rusageBinary, {
    args: [report, memcr, "-p", String(pid), "-d", dir],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let log = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    // memcr logs a line per step; its prompt says the dump is written and the target's memory freed.
    const prompt = (async () => {
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        log += chunk;
        if (log.includes("press enter to restore")) return true;
      }
      return false;
    })();
    const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 600_000));
    if (!await Promise.race([prompt, timeout])) {
      throw new Error(`Cannot hibernate pid ${pid} with memcr: no prompt; it said: ${log.slice(-300)}`);
    }
    const checkpointMs = performance.now() - started;
    let allocated = 0;
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile) allocated += ((await Deno.stat(`${dir}/${e.name}`)).blocks ?? 0) * 512;
    }
    const pressed = performance.now();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode("\n"));
    await w.close();
    const status = await child.status;
    const restoreMs = performance.now() - pressed;
    if (!status.success) {
      throw new Error(`Cannot hibernate pid ${pid} with memcr: exit status ${status.code}: ${await stderr}`);
    }
    const cost = parseReport(await Deno.readTextFile(report), "memcr");
    return { checkpointMs, restoreMs, rssBytes: cost.rssBytes, allocated };
  } finally {
    clearTimeout(timer);
    try {
      child.kill("SIGKILL"); // by pid: the cryo_rusage child (memcr thaws its target when its tracer dies)
    } catch { /* already ended */ }
    await child.status;
    await Deno.remove(report).catch(() => {});
    for await (const e of Deno.readDir(dir)) await Deno.remove(`${dir}/${e.name}`).catch(() => {});
  }
}
