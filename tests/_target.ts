/**
 * Drives `ffi/build/cryo_target` (tests/fixtures/target.c), a child process whose memory tests and benchmarks
 * checkpoint and restore. Each command answers one line; `Target` is async-disposable and kills the child by
 * its pid.
 *
 * @module
 */

const binary = new URL("../ffi/build/cryo_target", import.meta.url).pathname;

/** A running cryo_target child. */
export class Target {
  readonly pid: number;
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  #closed = false;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.pid = child.pid;
    this.#writer = child.stdin.getWriter();
    this.#lines = lineReader(child.stdout);
  }

  /** Start a target child. */
  static start(): Target {
    const child = new Deno.Command(binary, { stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn();
    return new Target(child);
  }

  /** Send one command; resolves with the answer after "ok " (throws on "err" or a bounded timeout). */
  async cmd(line: string, timeoutMs = 60_000): Promise<string> {
    await this.#writer.write(new TextEncoder().encode(line + "\n"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`target ${this.pid}: no answer to "${line}"`)), timeoutMs);
    });
    try {
      const next = await Promise.race([this.#lines.next(), timeout]);
      if (next.done) throw new Error(`target ${this.pid} exited during "${line}"`);
      if (!next.value.startsWith("ok")) throw new Error(`target ${this.pid}: "${line}" -> ${next.value}`);
      return next.value.slice(3);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Map `bytes` of anonymous private memory; returns its address. */
  async map(bytes: number | bigint): Promise<bigint> {
    return BigInt(await this.cmd(`map ${bytes}`));
  }

  /** Fill memory: kind is random, text, zero, byte:N or stride:K. */
  async fill(addr: bigint, bytes: number | bigint, kind: string, seed = 1): Promise<void> {
    await this.cmd(`fill 0x${addr.toString(16)} ${bytes} ${kind} ${seed}`);
  }

  /** FNV-1a 64 of the bytes, as the child sees them. */
  async sum(addr: bigint, bytes: number | bigint): Promise<string> {
    return await this.cmd(`sum 0x${addr.toString(16)} ${bytes}`);
  }

  /** Kill the child by pid (SIGKILL) and reap it. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      Deno.kill(this.pid, "SIGKILL");
    } catch { /* already gone */ }
    try {
      await this.#writer.close();
    } catch { /* pipe closed */ }
    await this.#child.status;
    await this.#child.stdout.cancel().catch(() => {});
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

async function* lineReader(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
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
