/**
 * Run `deno run -A cli.ts ARGS` as a fresh process under ffi/build/cryo_rusage (bench/rusage.c), which reports
 * its ru_maxrss: cryo's peak RSS as users run it, for the tests that bound it.
 *
 * @module
 */

const cli = new URL("../cli.ts", import.meta.url).pathname;
const rusage = new URL("../ffi/build/cryo_rusage", import.meta.url).pathname;

/** What a command cost. */
export interface Cost {
  /** Peak RSS, bytes. */
  rss: number;
  /** Exit code. */
  code: number;
  /** What it wrote to stderr. */
  stderr: string;
  /** What it wrote to stdout (unless `opts.shell` redirects it). */
  stdout: string;
}

/**
 * Run the CLI once and measure it.
 *
 * @param args The CLI's arguments.
 * @param opts `shell`: a redirection, run through `sh -c` (e.g. `> /dev/null`); `stdin`: a file fed to it.
 * @returns Its peak RSS, exit code, stderr and stdout.
 */
export async function peakRss(args: string[], opts: { shell?: string; stdin?: string } = {}): Promise<Cost> {
  const report = await Deno.makeTempFile();
  try {
    const cmd = opts.shell === undefined
      ? [Deno.execPath(), "run", "-A", cli, ...args]
      : ["sh", "-c", `exec "$0" run -A "$@" ${opts.shell}`, Deno.execPath(), cli, ...args];
    const child = new Deno.Command(rusage, {
      args: [report, ...cmd],
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const fed = opts.stdin
      ? (await Deno.open(opts.stdin)).readable.pipeTo(child.stdin).catch(() => {})
      : undefined;
    const out = await child.output();
    await fed;
    const [kib] = (await Deno.readTextFile(report)).split(" ").map(Number);
    const text = (b: Uint8Array) => new TextDecoder().decode(b);
    return { rss: kib * 1024, code: out.code, stderr: text(out.stderr), stdout: text(out.stdout) };
  } finally {
    await Deno.remove(report);
  }
}
