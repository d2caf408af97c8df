/**
 * The baselines cryo is measured against, run on the same target in the same run: the physical C pipeline
 * (ffi/build/cryo_pipeline, built from bench/pipeline.c) and gdb's `gcore`. Also the two measuring tools every
 * end-to-end figure uses: the stop window (the target's 1 ms heartbeat thread records its longest gap) and an
 * image's apparent and allocated size.
 *
 * @module
 */

import type { Target } from "../tests/_target.ts";

export type { Target };

const pipelineBinary = new URL("../ffi/build/cryo_pipeline", import.meta.url).pathname;

/** What one run of the C pipeline reported. */
export interface PipelineResult {
  /** Bytes of page data moved. */
  bytes: number;
  /** Wall time of the whole operation inside the pipeline process, in ms (process start-up excluded). */
  ms: number;
  /** How long the pipeline held the target stopped (SIGSTOP to SIGCONT), in ms; 0 without `stop`. */
  stopMs: number;
}

/** What one run of gcore took. */
export interface GcoreResult {
  /** Wall time of the `gcore` command, in ms (gdb's start-up included: that is what a user waits for). */
  ms: number;
  /** The core file it wrote. */
  path: string;
}

/** The size of a file as `ls -l` and as `du` see it. */
export interface FileSize {
  /** Bytes, holes included. */
  apparent: number;
  /** Bytes of disk blocks allocated (`blocks * 512`). */
  allocated: number;
}

/**
 * Dump the resident pages of `[addr, addr + len)` of process `pid` to `out` with the C pipeline
 * (process_vm_readv → write in 8 MiB batches), holding the target stopped (SIGSTOP) meanwhile.
 *
 * @param pid The target process.
 * @param addr Page-aligned start of the range.
 * @param len Page-aligned length of the range.
 * @param out The file to write.
 * @param opts `stop`: hold the target stopped (default true); `fsync`: fsync before the clock stops.
 * @returns The bytes moved and the times the pipeline measured.
 */
export async function pipelineDump(
  pid: number,
  addr: bigint,
  len: number,
  out: string,
  opts: { stop?: boolean; fsync?: boolean } = {},
): Promise<PipelineResult> {
  const extra = [...(opts.stop ?? true ? ["stop"] : []), ...(opts.fsync ? ["fsync"] : [])];
  return await runPipeline(["dump", String(pid), `0x${addr.toString(16)}`, String(len), out, ...extra]);
}

/**
 * Load a pipeline dump back into the same range of process `pid` (pread → process_vm_writev in 8 MiB
 * batches): the baseline of a rollback restore.
 *
 * @param pid The target process.
 * @param addr Page-aligned start of the range, as dumped.
 * @param len Page-aligned length of the range, as dumped.
 * @param input The file {@link pipelineDump} wrote.
 * @param opts `stop`: hold the target stopped (default true).
 * @returns The bytes moved and the times the pipeline measured.
 */
export async function pipelineLoad(
  pid: number,
  addr: bigint,
  len: number,
  input: string,
  opts: { stop?: boolean } = {},
): Promise<PipelineResult> {
  const extra = opts.stop ?? true ? ["stop"] : [];
  return await runPipeline(["load", String(pid), `0x${addr.toString(16)}`, String(len), input, ...extra]);
}

async function runPipeline(args: string[]): Promise<PipelineResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(pipelineBinary, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(
      `Cannot run ${pipelineBinary}: ${(e as Error).message}; build it with \`deno task build\``,
    );
  }
  const text = new TextDecoder().decode(out.stdout).trim();
  const m = /^ok (\d+) (\d+) (\d+)$/.exec(text);
  if (!out.success || !m) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`Cannot run the C pipeline ${args[0]}: ${err || text || `exit status ${out.code}`}`);
  }
  return { bytes: Number(m[1]), ms: Number(m[2]) / 1e6, stopMs: Number(m[3]) / 1e6 };
}

let gcorePath: string | null | undefined;

/**
 * Where gdb's `gcore` is, or `null` when it is not installed (`$PATH` is searched once).
 *
 * @returns The path of `gcore`, or `null`.
 */
export function findGcore(): string | null {
  if (gcorePath !== undefined) return gcorePath;
  gcorePath = null;
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      const p = `${dir || "."}/gcore`;
      if (Deno.statSync(p).isFile && Deno.statSync(`${dir || "."}/gdb`).isFile) {
        gcorePath = p;
        break;
      }
    } catch { /* not here */ }
  }
  return gcorePath;
}

/**
 * Write a core file of process `pid` with `gcore -o PREFIX PID` (the file is `PREFIX.PID`), timed.
 *
 * @param pid The target process.
 * @param prefix The core file prefix.
 * @returns The time taken and the core file written.
 */
export async function gcore(pid: number, prefix: string): Promise<GcoreResult> {
  const bin = findGcore();
  if (!bin) throw new Error("Cannot run gcore: gdb is not installed (apt-get install gdb)");
  const t0 = performance.now();
  const out = await new Deno.Command(bin, {
    args: ["-o", prefix, String(pid)],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const ms = performance.now() - t0;
  const path = `${prefix}.${pid}`;
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join("; ");
    throw new Error(`Cannot gcore pid ${pid}: exit status ${out.code}: ${err}`);
  }
  try {
    Deno.statSync(path);
  } catch {
    throw new Error(`Cannot gcore pid ${pid}: gcore succeeded but wrote no ${path}`);
  }
  return { ms, path };
}

/**
 * The apparent and allocated size of a file.
 *
 * @param path The file.
 * @returns Its size with and without holes.
 */
export async function fileSize(path: string): Promise<FileSize> {
  const st = await Deno.stat(path);
  return { apparent: st.size, allocated: (st.blocks ?? 0) * 512 };
}

/**
 * Run `op` and measure how long the target was stopped meanwhile: the longest gap of its 1 ms heartbeat
 * thread (started with the target's `heartbeat` command), in ms. A gap includes the 1 ms period itself and
 * any scheduling delay, so an unstopped target shows about 1 ms.
 *
 * @param target The target, with its heartbeat running.
 * @param op The operation to measure.
 * @returns What `op` returned and the stop window in ms.
 */
export async function withStopWindow<T>(
  target: Target,
  op: () => Promise<T>,
): Promise<{ value: T; stopMs: number }> {
  await target.cmd("maxgap"); // resets the gap, but only after answering: a stop right then could be wiped
  await target.cmd("pid"); // so wait for the next answer, which the target gives after the reset is done
  const value = await op();
  // The heartbeat thread records the gap when it next runs after the target resumes, which on a busy machine
  // can be after the main thread answers: read (and reset) three times over 30 ms and keep the largest.
  let ns = 0;
  for (const wait of [5, 10, 15]) {
    await new Promise((resolve) => setTimeout(resolve, wait));
    ns = Math.max(ns, Number(await target.cmd("maxgap")));
  }
  return { value, stopMs: ns / 1e6 };
}
