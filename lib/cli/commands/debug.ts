/**
 * `cryo debug syscall --pid P NAME [ARG...]`: run one system call inside a frozen process and print its result;
 * `cryo debug caps`: what this kernel allows (userfaultfd, WP_ASYNC, PAGEMAP_SCAN, pidfd_getfd).
 *
 * @module
 */

import { freeze } from "../../kernel/freeze.ts";
import { inject, SYS } from "../../kernel/inject.ts";
import { capabilities } from "../../kernel/capabilities.ts";
import { errnoDescription, errnoName } from "../../../ffi/libc.ts";
import { parse, parsePid } from "../args.ts";
import { jsonDocument } from "../json.ts";
import { type Command, out, UsageError } from "../main.ts";

function parseNumber(s: string): bigint {
  if (!/^-?(0x[0-9a-f]+|[0-9]+)$/i.test(s)) {
    throw new UsageError(`"${s}" is not a number (decimal or 0x hex)`);
  }
  return s.startsWith("-") ? -BigInt(s.slice(1)) : BigInt(s);
}

export const debugCommand: Command = {
  name: "debug",
  summary: "low-level probes: run a syscall inside a process, list kernel capabilities",
  help: `cryo debug syscall --pid PID NAME|NUMBER [ARG...]
cryo debug caps [--json]

syscall freezes PID, runs one system call in its first thread (at a syscall instruction of its vDSO, every
register put back afterwards), prints the result and thaws it. NAME is one of ${Object.keys(SYS).join(", ")},
or a number; arguments are integers (decimal or 0x hex), at most six. Exit 1 when the call fails.
caps prints what this kernel allows: userfaultfd (and for kernel-mode faults), its WP_ASYNC and
WP_UNPOPULATED features, PAGEMAP_SCAN, pidfd_getfd.

examples:
  cryo debug syscall --pid 4242 getpid
  cryo debug syscall --pid 4242 madvise 0x7f0000000000 4096 4
  cryo debug caps`,
  run(ctx) {
    const { values, positionals } = parse(ctx.args, { pid: { type: "string" }, json: { type: "boolean" } });
    const [what, ...rest] = positionals;
    if (what === "caps") {
      const caps = capabilities();
      if (values.json) {
        out(jsonDocument({ ...caps, uffdFeatures: `0x${caps.uffdFeatures.toString(16)}` }));
      } else {
        for (const [k, v] of Object.entries(caps)) {
          out(`${k.padEnd(24)} ${typeof v === "bigint" ? `0x${v.toString(16)}` : v ? "yes" : "no"}`);
        }
      }
      return Promise.resolve(0);
    }
    if (what !== "syscall") throw new UsageError(`debug takes "syscall" or "caps", got "${what ?? ""}"`);
    const pid = parsePid(values.pid);
    const [name, ...args] = rest;
    if (name === undefined) throw new UsageError("debug syscall needs a NAME or NUMBER");
    const nr = name in SYS ? SYS[name as keyof typeof SYS] : Number(parseNumber(name));
    if (args.length > 6) throw new UsageError(`at most six arguments, got ${args.length}`);
    const values_ = args.map(parseNumber);
    using frozen = freeze(pid);
    using inj = inject(frozen);
    const r = inj.raw(nr, ...values_);
    const call = `${name}(${args.join(", ")})`;
    if (r < 0n && r >= -4095n) {
      const e = -Number(r);
      out(`${call} = ${r} ${errnoName(e)} (${errnoDescription(e)})`);
      return Promise.resolve(1);
    }
    out(`${call} = ${r} (0x${BigInt.asUintN(64, r).toString(16)})`);
    return Promise.resolve(0);
  },
};
