/**
 * Argument parsing for CLI commands over `node:util` `parseArgs`, with its errors turned into usage errors.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "./main.ts";

/** The option table of one command. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * Parse `args` against `options`, strictly; positionals allowed.
 *
 * @throws {UsageError} On an unknown option or a missing value.
 */
export function parse<O extends Options>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify a positional.*$/s, ""));
  }
}

/** Parse a pid option value. */
export function parsePid(value: string | undefined, flag = "--pid"): number {
  if (value === undefined) throw new UsageError(`${flag} PID is required`);
  if (!/^[1-9][0-9]*$/.test(value)) throw new UsageError(`${flag} takes a process id, got "${value}"`);
  return Number(value);
}

/** Parse `START-END` (hex with 0x, or decimal) into a bigint range. */
export function parseRange(value: string): { start: bigint; end: bigint } {
  const m = /^(0x[0-9a-fA-F]+|[0-9]+)-(0x[0-9a-fA-F]+|[0-9]+)$/.exec(value);
  if (!m) {
    throw new UsageError(
      `expected an address range START-END (e.g. 0x7f0000000000-0x7f0000100000), got "${value}"`,
    );
  }
  const start = BigInt(m[1]);
  const end = BigInt(m[2]);
  if (end <= start) throw new UsageError(`the range ${value} is empty: END must be above START`);
  return { start, end };
}

/** Exactly one positional, named `what` in the error. */
export function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) {
    throw new UsageError(`expected one ${what}, got ${positionals.length ? positionals.join(" ") : "none"}`);
  }
  return positionals[0];
}

/** The `--memory SIZE` option of the commands that move memory. */
export const memoryOption = { memory: { type: "string" } } as const;

/** Parse a `--memory` value (`65536`, `64K`, `64M`, `1G`; powers of 1024) into bytes; undefined if not given. */
export function parseMemory(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^([0-9]+)([KMG]i?B?)?$/i.exec(value);
  if (!m) throw new UsageError(`--memory takes a size such as 64M or 1G, got "${value}"`);
  const unit = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 }[(m[2] ?? "").charAt(0).toLowerCase()]!;
  const bytes = Number(m[1]) * unit;
  if (bytes < 4 * 2 ** 20) throw new UsageError(`--memory ${value} is too small: at least 4M`);
  return bytes;
}
