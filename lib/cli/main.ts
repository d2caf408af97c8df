/**
 * The CLI's shell: command dispatch, errors reported as one line plus a hint (`--debug` for the stack) and,
 * under `--json`, as JSON on stdout, with the exit code of their failure class (`exit.ts`), and SIGINT/SIGTERM
 * turned into an abort that every command honours.
 *
 * @module
 */

import config from "../../deno.json" with { type: "json" };
import { CryoError, RestoreIncompleteError } from "../errors.ts";
import { onHelperBuild } from "../../ffi/helper.ts";
import { printable } from "./format.ts";
import { classify, EXIT, hintFor, jsonError } from "./exit.ts";

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

/**
 * Print text made in pieces to stdout as {@link out} prints it whole (a line feed after it), a piece at a time.
 *
 * @param pieces The text's pieces.
 */
export function outPieces(pieces: Iterable<string>): void {
  const encoder = new TextEncoder();
  const write = (b: Uint8Array) => {
    for (let off = 0; off < b.length;) off += Deno.stdout.writeSync(b.subarray(off));
  };
  for (const p of pieces) write(encoder.encode(p));
  write(encoder.encode("\n"));
}

/** What a failed command that wrote an image to stdout adds to its error. */
const INCOMPLETE = "the image on stdout is incomplete and its reader will refuse it";

/**
 * Run the CLI: dispatch to a command, map errors to one line plus a hint and exit codes.
 *
 * @param commands The commands by name.
 * @param argv The arguments (without the program).
 * @returns The exit code.
 */
export async function main(commands: Command[], argv: string[]): Promise<number> {
  const debug = argv.includes("--debug");
  const json = argv.includes("--json");
  onHelperBuild((dir) =>
    console.error(`cryo: building the helper library into ${printable(dir)} (first use of this version)`)
  );
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
    if (json) out(jsonError(EXIT.usage, `unknown command "${name}"`));
    return EXIT.usage.exit;
  }
  if (args.includes("--help") || args.includes("-h")) {
    out(command.help);
    return 0;
  }
  const controller = new AbortController();
  const ctx: CommandContext = { args: args.slice(1), signal: controller.signal };
  const onSignal = (sig: Deno.Signal) => () => {
    if (controller.signal.aborted) return;
    // On a terminal the progress line may be drawn: erase it, so the message has a line of its own.
    if (Deno.stderr.isTerminal()) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
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
    return controller.signal.aborted ? EXIT.interrupted.exit : code;
  } catch (e) {
    return fail(e, { command: name, json, debug, ctx, interrupted: controller.signal.aborted });
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  }
}

function usage(commands: Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    "cryo: checkpoint and restore Linux process memory",
    "",
    "usage: cryo <command> [options]",
    "  (installed with `deno install -g -A -n cryo jsr:@cryo/cryo/cli`; in a checkout `deno run -A cli.ts`)",
    "",
    "commands:",
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    "`cryo <command> --help` for a command's options and examples; --debug shows stack traces.",
    ...wrap([
      "exit status:",
      ...Object.values(EXIT).map((c, i, all) => `${c.exit} ${c.code}${i < all.length - 1 ? "," : ""}`),
    ]),
    'under --json an error is also a JSON document on stdout: {"schema","error":{"code","exit","message","hint"}}',
  ].join("\n");
}

/** What {@link fail} needs to know about the failed command. */
interface Failure {
  command: string;
  json: boolean;
  debug: boolean;
  ctx: CommandContext;
  interrupted: boolean;
}

/** Report a command's error (one line plus a hint on stderr; JSON on stdout under --json); its exit code. */
function fail(e: unknown, f: Failure): number {
  const { command: name, ctx } = f;
  const stack = () => {
    if (f.debug) console.error(printable(String(e instanceof Error ? e.stack : e), { lines: true }));
  };
  if (e instanceof UsageError) {
    console.error(`cryo ${name}: ${printable(e.message, { lines: true })}\n(see \`cryo ${name} --help\`)`);
    if (f.json) out(jsonError(EXIT.usage, e.message, `see \`cryo ${name} --help\``));
    return EXIT.usage.exit;
  }
  if (f.interrupted && !(e instanceof RestoreIncompleteError)) {
    const message = `interrupted; ${ctx.imageOnStdout ? INCOMPLETE : "nothing was left half-done"}`;
    console.error(`cryo ${name}: ${message}`);
    if (f.json && !ctx.imageOnStdout) out(jsonError(EXIT.interrupted, message));
    stack();
    return EXIT.interrupted.exit;
  }
  const failure = classify(e);
  // Messages quote paths, command lines and region names from targets and images: escape them.
  const message = (e instanceof Error ? e.message : String(e)) +
    (ctx.imageOnStdout ? ` (${INCOMPLETE})` : "");
  console.error(
    `cryo ${name}: ${failure === EXIT.internal ? "internal error: " : ""}${
      printable(message, { lines: true })
    }`,
  );
  const hint = hintFor(e, { imageOnStdout: ctx.imageOnStdout, command: name });
  if (hint) console.error(hint);
  if (f.json && !ctx.imageOnStdout) out(jsonError(failure, message, hint));
  stack();
  if (!f.debug && failure === EXIT.internal) console.error("(run with --debug for the stack trace)");
  return failure.exit;
}

/** `items` joined by spaces into lines of at most `width` characters (an item is never broken). */
function wrap(items: string[], width = 100): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of items) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}
