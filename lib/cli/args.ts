/**
 * Argument parsing for CLI commands: the subset of `node:util` `parseArgs` they use, without loading it, with
 * its errors as usage errors.
 *
 * @module
 */

import type { parseArgs, ParseArgsConfig } from "node:util"; // types only: loading node:util costs start-up
import { UsageError } from "./main.ts";

/** The option table of one command. */
export type Options = NonNullable<ParseArgsConfig["options"]>;

/** What {@link parse} returns for an option table: `values` typed from it, and the positionals. */
export type Parsed<O extends Options> = ReturnType<
  typeof parseArgs<{ options: O; allowPositionals: true; strict: true; args: string[] }>
>;

/**
 * Parse `args` against `options`, strictly, as `node:util`'s `parseArgs` does with `strict` and
 * `allowPositionals` (`--name value`, `--name=value`, `-n value`, `-nVALUE`, grouped boolean shorts, `multiple`,
 * `--` ends the options), without loading the Node compatibility layer (tens of ms of every command's start).
 *
 * @throws {UsageError} On an unknown option, a missing value, or a value given to a boolean.
 */
export function parse<O extends Options>(args: string[], options: O): Parsed<O> {
  const values: Record<string, string | boolean | (string | boolean)[]> = {};
  const positionals: string[] = [];
  const shorts = new Map(Object.entries(options).flatMap(([k, o]) => o.short ? [[o.short, k] as const] : []));
  const set = (name: string, v: string | boolean) => {
    if (options[name].multiple) ((values[name] ??= []) as (string | boolean)[]).push(v);
    else values[name] = v;
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (!a.startsWith("-") || a === "-") {
      positionals.push(a);
      continue;
    }
    let name: string | undefined, inline: string | undefined, shown = a;
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      name = eq < 0 ? a.slice(2) : a.slice(2, eq);
      inline = eq < 0 ? undefined : a.slice(eq + 1);
      shown = `--${name}`;
    } else {
      name = shorts.get(a[1]);
      shown = `-${a[1]}`;
      if (name !== undefined && a.length > 2) {
        if (options[name].type === "string") inline = a.slice(2);
        else { // grouped boolean shorts: -qv
          for (const c of a.slice(1)) {
            const n = shorts.get(c);
            if (n === undefined || options[n].type !== "boolean") {
              throw new UsageError(`Unknown option '-${c}' in '${a}'`);
            }
            set(n, true);
          }
          continue;
        }
      }
    }
    if (name === undefined || !Object.hasOwn(options, name)) {
      throw new UsageError(`Unknown option '${shown}'`);
    }
    if (options[name].type === "boolean") {
      if (inline !== undefined) throw new UsageError(`Option '${shown}' does not take an argument`);
      set(name, true);
      continue;
    }
    let v = inline;
    if (v === undefined) {
      v = args[++i];
      if (v === undefined) throw new UsageError(`Option '${shown} <value>' argument missing`);
      if (v.length > 1 && v.startsWith("-")) {
        throw new UsageError(
          `Option '${shown}' argument is ambiguous: did you forget its value? A value starting with a dash is ` +
            `given as '${shown}=${v}'`,
        );
      }
    }
    set(name, v);
  }
  return { values, positionals } as Parsed<O>;
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
