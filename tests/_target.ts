/**
 * Drives `ffi/build/cryo_target` (tests/fixtures/target.c), a child process whose memory tests and benchmarks
 * checkpoint and restore. Each command answers one line; `Target` is async-disposable and kills the child by
 * its pid.
 *
 * @module
 */

import { LineChild } from "../lib/kernel/child.ts";

const binary = new URL("../ffi/build/cryo_target", import.meta.url).pathname;

/** A running cryo_target child. */
export class Target implements AsyncDisposable {
  readonly #child: LineChild;

  private constructor(child: LineChild) {
    this.#child = child;
  }

  /** The child's pid. */
  get pid(): number {
    return this.#child.pid;
  }

  /**
   * Start a target child.
   *
   * @param opts `noAslr`: run it under `setarch -R` (no address randomization), so two targets have the same
   *   layout.
   */
  static start(opts: { noAslr?: boolean } = {}): Target {
    return new Target(
      opts.noAslr ? LineChild.spawn("setarch", [Deno.build.arch, "-R", binary]) : LineChild.spawn(binary),
    );
  }

  /** Send one command; resolves with the answer after "ok " (throws on "err" or a bounded timeout). */
  cmd(line: string, timeoutMs = 60_000): Promise<string> {
    return this.#child.request(line, timeoutMs);
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
  close(): Promise<void> {
    return this.#child.close();
  }

  /** Same as {@link close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
