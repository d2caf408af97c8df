/**
 * The CLI's shell: command dispatch, usage errors (exit 2), one-line errors with a hint (exit 1, `--debug`
 * for the stack), and SIGINT/SIGTERM turned into an abort that every command honours.
 *
 * @module
 */

import config from "../../deno.json" with { type: "json" };
import {
  CryoError,
  HelperNotFoundError,
  ImageError,
  KeyError,
  KeyFileError,
  LayoutMismatchError,
  RestoreIncompleteError,
  SystemError,
} from "../errors.ts";
import { printable } from "./format.ts";

/** A command's context: its arguments, an abort signal raised by SIGINT/SIGTERM, and output flags. */
export interface CommandContext {
  /** Arguments after the command name. */
  args: string[];
  /** Aborted on SIGINT or SIGTERM; long operations check it and clean up. */
  signal: AbortSignal;
  /**
   * Set by a command that writes an image to stdout: bytes of it may have gone out when it fails, so the errors
   * say that the stream is incomplete (its reader refuses it) rather than that nothing was left.
   */
  imageOnStdout?: boolean;
  /** What a SIGINT/SIGTERM leads to, for the message (default: the target thawed, a partial image removed). */
  onInterrupt?: string;
}

/** One CLI command. */
export interface Command {
  /** The command's name. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** The full `--help` text. */
  help: string;
  /** Run; resolves with the exit code. */
  run(ctx: CommandContext): Promise<number>;
}

/** A usage error: printed with the command's usage hint, exit code 2. */
export class UsageError extends CryoError {}

/** Print to stdout. */
export function out(text: string): void {
  console.log(text);
}

/** What a failed command that wrote an image to stdout adds to its error. */
const INCOMPLETE = "the image on stdout is incomplete and its reader will refuse it";

function hintFor(e: unknown, ctx: CommandContext): string | undefined {
  if (e instanceof SystemError) {
    if (e.code === "EPERM" || e.code === "EACCES") {
      return "hint: freezing or writing another process needs root or CAP_SYS_PTRACE (and Yama ptrace_scope ≤ 1)";
    }
    if (e.code === "ESRCH") return "hint: is the pid right? `ps -p PID` shows whether it is alive";
    if (e.code === "ENOENT") return "hint: check the path";
    if (e.code === "ENOSPC") {
      return ctx.imageOnStdout
        ? "hint: the file system or device stdout writes to is full"
        : "hint: the disk is full; nothing was left at the image path";
    }
    if (e.code === "EPIPE" && ctx.imageOnStdout) return "hint: the reader of stdout closed it before the end";
  }
  if (e instanceof ImageError) {
    return "hint: `cryo verify IMAGE` checks the whole image and says where it is damaged";
  }
  if (e instanceof LayoutMismatchError) {
    return "hint: the target's memory map no longer matches the image; `cryo regions --pid PID` shows it";
  }
  if (e instanceof HelperNotFoundError) return "hint: run `deno task build`";
  if (e instanceof RestoreIncompleteError) {
    return `hint: run \`cryo restore --recover --pid ${e.pid}\` to finish the restore and resume it`;
  }
  if (e instanceof KeyFileError) {
    return e.mode === undefined
      ? "hint: give a regular file holding the key (32 bytes or 64 hex characters), or --key-env NAME"
      : `hint: run \`chmod 600 ${printable(e.path)}\` (--strict refuses a key file others may read)`;
  }
  if (e instanceof KeyError) {
    return "hint: give the key the image was written with: --key-file FILE or --key-env NAME";
  }
  return undefined;
}

/**
 * Run the CLI: dispatch to a command, map errors to one line plus a hint and exit codes.
 *
 * @param commands The commands by name.
 * @param argv The arguments (without the program).
 * @returns The exit code.
 */
export async function main(commands: Command[], argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  const args = argv.filter((a) => a !== "--debug");
  const name = args[0];
  if (!name || name === "--help" || name === "-h" || name === "help") {
    const which = name === "help" ? commands.find((c) => c.name === args[1]) : undefined;
    out(which ? which.help : usage(commands));
    return name ? 0 : 2;
  }
  if (name === "--version") {
    out(`cryo ${config.version}`);
    return 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    console.error(`cryo: unknown command "${printable(name)}"\n\n${usage(commands)}`);
    return 2;
  }
  if (args.includes("--help") || args.includes("-h")) {
    out(command.help);
    return 0;
  }
  const controller = new AbortController();
  const ctx: CommandContext = { args: args.slice(1), signal: controller.signal };
  const onSignal = (sig: Deno.Signal) => () => {
    if (controller.signal.aborted) return;
    console.error(
      `cryo: ${sig} received; stopping (${
        ctx.onInterrupt ??
          `the target will be thawed, ${ctx.imageOnStdout ? INCOMPLETE : "a partial image removed"}`
      })`,
    );
    controller.abort(new CryoError(`Interrupted by ${sig}`));
  };
  const handlers: [Deno.Signal, () => void][] = [["SIGINT", onSignal("SIGINT")], [
    "SIGTERM",
    onSignal("SIGTERM"),
  ]];
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  try {
    const code = await command.run(ctx);
    return controller.signal.aborted ? 130 : code;
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`cryo ${name}: ${printable(e.message, { lines: true })}\n(see \`cryo ${name} --help\`)`);
      return 2;
    }
    if (controller.signal.aborted && !(e instanceof RestoreIncompleteError)) {
      console.error(
        `cryo ${name}: interrupted; ${ctx.imageOnStdout ? INCOMPLETE : "nothing was left half-done"}`,
      );
      if (debug) console.error(printable(String(e instanceof Error ? e.stack : e), { lines: true }));
      return 130;
    }
    // Messages quote paths, command lines and region names from targets and images: escape them.
    const message = printable(e instanceof Error ? e.message : String(e), { lines: true });
    console.error(
      `cryo ${name}: ${e instanceof CryoError ? "" : "internal error: "}${message}` +
        (ctx.imageOnStdout ? ` (${INCOMPLETE})` : ""),
    );
    const hint = hintFor(e, ctx);
    if (hint) console.error(hint);
    if (debug) console.error(printable(String(e instanceof Error ? e.stack : e), { lines: true }));
    else if (!(e instanceof CryoError)) console.error("(run with --debug for the stack trace)");
    return 1;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}

function usage(commands: Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    "cryo: checkpoint and restore Linux process memory",
    "",
    "usage: deno run -A cli.ts <command> [options]",
    "",
    "commands:",
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "`cryo <command> --help` for a command's options and examples; --debug shows stack traces.",
  ].join("\n");
}
