/**
 * The errors cryo throws that callers are expected to catch. Bad arguments are plain `TypeError` or
 * `RangeError`; everything here names the file, the offset or address, and what was expected.
 *
 * @module
 */

/** Base class of every error cryo throws on purpose. */
export class CryoError extends Error {
  /**
   * Create the error.
   *
   * @param message One sentence, sentence case, no trailing period.
   * @param options Standard error options (`cause`).
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A system call failed. Carries the errno, its symbolic name and the call, e.g.
 * `Cannot process_vm_readv pid 42 at 0x7f0000000000: EFAULT (Bad address)`.
 */
export class SystemError extends CryoError {
  /** The errno value, e.g. `14`. */
  readonly errno: number;
  /** The errno name, e.g. `"EFAULT"`. */
  readonly code: string;
  /** The call that failed, e.g. `"process_vm_readv"`. */
  readonly call: string;

  /**
   * Create the error from a failed call.
   *
   * @param call The name of the call that failed.
   * @param errno The errno it reported.
   * @param code The errno's symbolic name.
   * @param description The errno's description (strerror).
   * @param detail What the call was applied to (a pid, an address, a path).
   */
  constructor(call: string, errno: number, code: string, description: string, detail?: string) {
    super(`Cannot ${call}${detail ? ` ${detail}` : ""}: ${code} (${description})`);
    this.errno = errno;
    this.code = code;
    this.call = call;
  }
}

/** An image is corrupt, truncated or of an unsupported kind. Names the file and the offset. */
export class ImageError extends CryoError {
  /** The image file, or `"-"` for a stream. */
  readonly path: string;
  /** The byte offset in the image where the problem was found, if known. */
  readonly offset?: number;

  /**
   * Create the error.
   *
   * @param path The image file.
   * @param offset The byte offset of the problem, or `undefined`.
   * @param message What was expected and what was found.
   */
  constructor(path: string, offset: number | undefined, message: string) {
    super(`Invalid image ${path}${offset === undefined ? "" : ` at offset ${offset}`}: ${message}`);
    this.path = path;
    this.offset = offset;
  }
}

/** The destination of a load does not match what the image needs. Nothing was written. */
export class LayoutMismatchError extends CryoError {
  /** One line per difference, e.g. `0x7f..-0x7f.. rw-p: missing in target`. */
  readonly differences: readonly string[];

  /**
   * Create the error.
   *
   * @param what Which destination was checked (e.g. `pid 42`).
   * @param differences One line per difference.
   */
  constructor(what: string, differences: readonly string[]) {
    super(
      `Cannot load into ${what}: ${differences.length} region(s) differ from the image; nothing was written\n  ` +
        differences.join("\n  "),
    );
    this.differences = differences;
  }
}

/**
 * A native library cryo needs (a system library such as `libzstd.so.1`, or its helper) could not be loaded.
 * The message says what was tried and how to install or build it.
 */
export class LibraryNotFoundError extends CryoError {}

/**
 * The helper library could not be loaded or built on first use. The message says what was tried and how to
 * fix it (a C compiler, `CRYO_HELPER`).
 */
export class HelperNotFoundError extends LibraryNotFoundError {}

/**
 * A `/proc/<pid>/maps` or `smaps` text could not be parsed. Names the source, the line number and the line,
 * e.g. `Cannot parse /proc/42/maps line 3: bad perms "rw?p": "7f00-7f01 rw?p 0 00:00 0"`.
 */
export class MapsParseError extends CryoError {
  /** Where the text came from, e.g. `/proc/42/maps`. */
  readonly source: string;
  /** The 1-based line number. */
  readonly line: number;
  /** The offending line. */
  readonly text: string;

  /**
   * Create the error.
   *
   * @param source Where the text came from.
   * @param line The 1-based line number.
   * @param text The offending line.
   * @param reason What is wrong with it.
   */
  constructor(source: string, line: number, text: string, reason: string) {
    super(`Cannot parse ${source} line ${line}: ${reason}: ${JSON.stringify(text)}`);
    this.source = source;
    this.line = line;
    this.text = text;
  }
}

/**
 * An encryption key is missing, malformed, or does not open an image. Never carries the key or any part of it,
 * e.g. `Cannot open image img.cryo: the key does not match the one it was sealed with`.
 */
export class KeyError extends CryoError {}

/**
 * A key file cannot be used as one: it is not a regular file, or (strict loading) group or others have access
 * to it, e.g. `Cannot load key from file app.key: group or others have access to it (mode 0644)`.
 */
export class KeyFileError extends KeyError {
  /** The key file. */
  readonly path: string;
  /** Its permission bits, when they are the problem. */
  readonly mode?: number;

  /**
   * Create the error.
   *
   * @param path The key file.
   * @param problem What is wrong with it.
   * @param mode Its permission bits, when they are the problem.
   */
  constructor(path: string, problem: string, mode?: number) {
    super(`Cannot load key from file ${path}: ${problem}`);
    this.path = path;
    this.mode = mode;
  }
}

/** Threads did not reach the safepoint in time; nobody was left parked. */
export class SafepointTimeoutError extends CryoError {
  /** The names of the threads that did not arrive. */
  readonly missing: readonly string[];

  /**
   * Create the error.
   *
   * @param timeoutMs The timeout that expired.
   * @param total How many threads were expected.
   * @param missing The names of those that did not arrive.
   */
  constructor(timeoutMs: number, total: number, missing: readonly string[]) {
    super(
      `Cannot park: ${missing.length} of ${total} thread(s) did not reach the safepoint within ${timeoutMs} ms: ` +
        missing.join(", "),
    );
    this.missing = missing;
  }
}

/** A restore that failed and could not be undone either: the target is left stopped for recovery. */
export class RestoreIncompleteError extends CryoError {
  /** The process, left stopped (state T). */
  readonly pid: number;

  /**
   * A restore of `pid` that could not be finished or undone.
   *
   * @param pid The process.
   * @param message What failed, and how to recover.
   * @param options The cause.
   */
  constructor(pid: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.pid = pid;
  }
}

/** The error a restore into another process than the image's throws (unless `force`). Nothing was written. */
export class IdentityMismatchError extends CryoError {
  /** One line per difference. */
  readonly differences: readonly string[];

  /**
   * Create the error.
   *
   * @param pid The target.
   * @param path The image.
   * @param differences One line per difference.
   */
  constructor(pid: number, path: string, differences: readonly string[]) {
    super(
      `Cannot restore pid ${pid} from ${path}: it is not the process the image was taken from; nothing was ` +
        `written (the force option restores into it anyway)\n  ${differences.join("\n  ")}`,
    );
    this.differences = differences;
  }
}

/**
 * A process cannot be frozen because another process traces it already (a debugger, strace, or another cryo):
 * ptrace allows one tracer. A {@link SystemError} with code `EPERM` that names the tracer, e.g.
 * `Cannot freeze pid 42 (already traced by pid 77: gdb -p 42): EPERM (Operation not permitted)`.
 */
export class TracedError extends SystemError {
  /** The tracer's process id. */
  readonly tracerPid: number;
  /** The tracer's command line, as `/proc/<tracer>/cmdline` gives it (empty when it could not be read). */
  readonly tracerCommand: readonly string[];

  /**
   * Create the error.
   *
   * @param pid The process that could not be frozen.
   * @param tracerPid The tracer's process id.
   * @param tracerCommand The tracer's command line.
   * @param code The errno's name (`EPERM`).
   * @param errno The errno value.
   * @param description The errno's description.
   * @param thread The tracing thread, when it is not the tracer's main thread.
   */
  constructor(
    pid: number,
    tracerPid: number,
    tracerCommand: readonly string[],
    code: string,
    errno: number,
    description: string,
    thread?: number,
  ) {
    super(
      "freeze",
      errno,
      code,
      description,
      `pid ${pid} (already traced by pid ${tracerPid}${thread ? ` (thread ${thread})` : ""}` +
        `${tracerCommand.length ? `: ${commandLine(tracerCommand)}` : ""})`,
    );
    this.tracerPid = tracerPid;
    this.tracerCommand = tracerCommand;
  }
}

/** A command line on one line: arguments with spaces, quotes or controls JSON-quoted; at most 300 characters. */
function commandLine(args: readonly string[]): string {
  // deno-lint-ignore no-control-regex -- quoting arguments that hold control characters is the point
  const text = args.map((a) => (a === "" || /[\s"'\\\x00-\x1f\x7f-\x9f]/.test(a) ? JSON.stringify(a) : a))
    .join(" ");
  return text.length > 300 ? `${text.slice(0, 299)}…` : text;
}
