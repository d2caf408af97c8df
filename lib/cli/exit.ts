/**
 * The CLI's contract with scripts on failure, in one place: the exit code of each failure class, the class of
 * each error cryo throws, the hint the CLI adds (library errors name no CLI flag), and the error as one line on
 * stderr plus, under `--json`, a JSON document on stdout. The table is README's "Exit codes".
 *
 * @module
 */

import {
  CryoError,
  HelperNotFoundError,
  IdentityMismatchError,
  ImageError,
  KeyError,
  KeyFileError,
  LayoutMismatchError,
  LibraryNotFoundError,
  RestoreIncompleteError,
  SystemError,
  TracedError,
} from "../errors.ts";
import { printable } from "./format.ts";
import { JSON_SCHEMA, toJson } from "./json.ts";

/** A failure class: its exit code, and the `code` of the JSON error. */
export interface FailureClass {
  /** The process's exit status. */
  exit: number;
  /** The `error.code` string under `--json`. */
  code: string;
  /** What it means, for README's table and `--help`. */
  meaning: string;
}

/** Every exit status cryo uses, by failure class. */
export const EXIT = {
  ok: { exit: 0, code: "ok", meaning: "success (diff: the images are the same; verify: the image is sound)" },
  no: {
    exit: 1,
    code: "no",
    meaning: "the answer is no: diff found pages that differ; verify found damage; debug syscall failed",
  },
  usage: { exit: 2, code: "usage", meaning: "bad arguments or options (nothing was done)" },
  notFound: { exit: 3, code: "not-found", meaning: "no such process, file or image" },
  permission: { exit: 4, code: "permission", meaning: "not permitted: needs root or CAP_SYS_PTRACE, Yama" },
  busy: { exit: 5, code: "busy", meaning: "the process is traced by another tracer (named), or busy" },
  mismatch: {
    exit: 6,
    code: "mismatch",
    meaning: "the target does not match the image (layout, identity, threads); nothing was written",
  },
  damaged: { exit: 7, code: "damaged-image", meaning: "the image is damaged, truncated or not an image" },
  key: { exit: 8, code: "key", meaning: "the key is missing, wrong, or its file unusable" },
  incomplete: {
    exit: 9,
    code: "restore-incomplete",
    meaning: "a restore could neither finish nor be undone: the target is stopped; restore --recover",
  },
  setup: {
    exit: 10,
    code: "setup",
    meaning: "cryo cannot run here: no C compiler for its helper, a system library missing",
  },
  failed: { exit: 11, code: "failed", meaning: "any other failure (disk full, I/O error, a kernel refusal)" },
  internal: { exit: 70, code: "internal", meaning: "a bug in cryo (run with --debug for the stack)" },
  interrupted: {
    exit: 130,
    code: "interrupted",
    meaning: "SIGINT or SIGTERM: the target thawed, nothing half-done left",
  },
} as const satisfies Record<string, FailureClass>;

/** The failure class of an error thrown by a command. */
export function classify(e: unknown): FailureClass {
  if (e instanceof RestoreIncompleteError) return EXIT.incomplete;
  if (e instanceof TracedError) return EXIT.busy;
  if (e instanceof SystemError) {
    switch (e.code) {
      case "ESRCH":
      case "ENOENT":
        return EXIT.notFound;
      case "EPERM":
      case "EACCES":
        return EXIT.permission;
      case "EBUSY":
        return EXIT.busy;
    }
    return EXIT.failed;
  }
  if (e instanceof LayoutMismatchError || e instanceof IdentityMismatchError) return EXIT.mismatch;
  if (e instanceof ImageError) return EXIT.damaged;
  if (e instanceof KeyError) return EXIT.key; // KeyFileError included
  if (e instanceof LibraryNotFoundError) return EXIT.setup; // the helper, or a system library
  if (e instanceof CryoError) return EXIT.failed;
  if (e instanceof Deno.errors.NotFound) return EXIT.notFound;
  if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
    return EXIT.permission;
  }
  return EXIT.internal;
}

/** What the CLI knows about the command that failed, for the hint. */
export interface FailureContext {
  /** Bytes of an image may have gone to stdout. */
  imageOnStdout?: boolean;
  /** The command's name. */
  command?: string;
}

/** The hint the CLI adds to an error (flags, commands to run), or undefined. */
export function hintFor(e: unknown, ctx: FailureContext = {}): string | undefined {
  if (e instanceof TracedError) {
    return `hint: ptrace allows one tracer: wait until pid ${e.tracerPid} has let go (or end it), then run again; ` +
      "a checkpoint piped into a restore of the same process still holds it when the image's header arrives: " +
      "write the image to a file, then restore from it";
  }
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
  if (e instanceof IdentityMismatchError) {
    return "hint: `--force` restores into it anyway (its memory and registers become the image's)";
  }
  if (e instanceof LayoutMismatchError) {
    return "hint: the target's memory map no longer matches the image; `cryo regions --pid PID` shows it";
  }
  if (e instanceof HelperNotFoundError) {
    return "hint: the helper is built on first use with a C compiler (see README, Set-up); in a checkout " +
      "`deno task build` builds it; CRYO_HELPER=PATH names a built one";
  }
  if (e instanceof RestoreIncompleteError) {
    return `hint: run \`cryo restore --recover --pid ${e.pid}\` to finish the restore and resume it`;
  }
  if (e instanceof KeyFileError) {
    return e.mode === undefined
      ? "hint: give a regular file holding the key (32 bytes or 64 hex characters), or --key-env NAME"
      : `hint: run \`chmod 600 ${printable(e.path)}\` (--strict refuses a key file others may read)`;
  }
  if (e instanceof KeyError && !(e instanceof KeyFileError) && ctx.command === "diff") {
    return "hint: checkpoint without a key to compare images; `cryo verify --key-file FILE IMAGE` checks an " +
      "encrypted one";
  }
  if (e instanceof KeyError) {
    return "hint: give the key the image was written with: --key-file FILE or --key-env NAME";
  }
  return undefined;
}

/**
 * The JSON error document printed on stdout under `--json`:
 * `{"schema": N, "error": {"code", "exit", "message", "hint"}}` (`hint` null when there is none).
 *
 * @param failure The failure class.
 * @param message The error's message (one line or several).
 * @param hint The hint, without its `hint: ` prefix, or undefined.
 * @returns The text to print.
 */
export function jsonError(failure: FailureClass, message: string, hint?: string): string {
  return toJson({
    schema: JSON_SCHEMA,
    error: { code: failure.code, exit: failure.exit, message, hint: hint?.replace(/^hint: /, "") ?? null },
  });
}
