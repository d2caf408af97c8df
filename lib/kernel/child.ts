/**
 * A child process spoken to one line at a time: each request line gets one answer line ("ok …" or "err …").
 * Used by the demo to drive its workload and by the tests to drive their targets. Async-disposable: closing
 * kills the child by its pid and reaps it.
 *
 * @module
 */

import { threadReport } from "./thread_report.ts";

/** A running child answering one line per request. */
export class LineChild implements AsyncDisposable {
  /** The child's pid. */
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

  /**
   * Start `command` with `args`, stdin and stdout piped, stderr inherited.
   *
   * @param command The program.
   * @param args Its arguments.
   * @returns The child.
   */
  static spawn(command: string, args: string[] = []): LineChild {
    return new LineChild(
      new Deno.Command(command, { args, stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn(),
    );
  }

  /**
   * Send one line; resolve with the answer after `ok ` (throws on `err …`, on exit, or after `timeoutMs`: then
   * the error says what each of the child's threads is doing, lib/kernel/thread_report.ts).
   *
   * @param line The request, without a newline.
   * @param timeoutMs How long to wait for the answer.
   * @returns The answer's text after `ok`.
   */
  async request(line: string, timeoutMs = 60_000): Promise<string> {
    await this.#writer.write(new TextEncoder().encode(line + "\n"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `pid ${this.pid}: no answer to "${line}" in ${timeoutMs} ms\n${threadReport(this.pid)}`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      const next = await Promise.race([this.#lines.next(), timeout]);
      if (next.done) throw new Error(`pid ${this.pid} exited during "${line}"`);
      if (!next.value.startsWith("ok")) throw new Error(`pid ${this.pid}: "${line}" -> ${next.value}`);
      return next.value.slice(3);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kill the child by its pid (SIGKILL) and reap it. Idempotent. */
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
