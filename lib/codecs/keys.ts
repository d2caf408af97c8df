/**
 * The user's master key ({@link SealKey}): loaded from a file (`keyFromFile`, `--key-file`) or from an
 * environment variable the user names (`keyFromEnv`, `--key-env NAME`), as 32 raw bytes or 64 hex characters;
 * never from argv, never logged, never written into an image. A loaded key holds a non-extractable WebCrypto
 * key only. What is derived from it per image is lib/codecs/seal.ts's.
 *
 * @module
 */

import { KeyError, KeyFileError } from "../errors.ts";

const KEY_BYTES = 32;
const enc = new TextEncoder();

/** A loaded master key. Holds a non-extractable WebCrypto key only; its bytes are not kept. */
export class SealKey {
  readonly #master: CryptoKey;
  /** Where the key came from, e.g. `file /etc/cryo.key` (never the key). */
  readonly source: string;

  private constructor(master: CryptoKey, source: string) {
    this.#master = master;
    this.source = source;
  }

  /**
   * Import 32 key bytes. The caller should overwrite its copy afterwards.
   *
   * @param bytes Exactly 32 bytes.
   * @param source Where they came from, for messages.
   * @returns The key.
   * @throws {RangeError} When `bytes` is not 32 bytes long.
   */
  static async fromBytes(bytes: Uint8Array, source = "bytes"): Promise<SealKey> {
    if (bytes.length !== KEY_BYTES) {
      throw new RangeError(`Cannot use a ${bytes.length}-byte key: expected ${KEY_BYTES} bytes`);
    }
    const master = await crypto.subtle.importKey("raw", new Uint8Array(bytes), "HKDF", false, [
      "deriveBits",
      "deriveKey",
    ]);
    return new SealKey(master, source);
  }

  /** @internal The HKDF master key, for {@link Sealer}. */
  get master(): CryptoKey {
    return this.#master;
  }

  /** Never shows key material. */
  toString(): string {
    return `SealKey(${this.source})`;
  }

  /** Never shows key material. */
  [Symbol.for("Deno.customInspect")](): string {
    return this.toString();
  }
}

/**
 * Parse key text or bytes: exactly 32 raw bytes, or 64 hex characters (surrounding whitespace ignored).
 *
 * @returns The 32 key bytes, or undefined when the input is neither.
 */
function parseKey(data: Uint8Array): Uint8Array | undefined {
  if (data.length === KEY_BYTES) return new Uint8Array(data);
  if (data.length > 200) return undefined;
  const text = new TextDecoder().decode(data).trim();
  if (!/^[0-9a-fA-F]{64}$/.test(text)) return undefined;
  const out = new Uint8Array(KEY_BYTES);
  for (let i = 0; i < KEY_BYTES; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Options of {@link keyFromFile}. */
export interface KeyFileOptions {
  /** Refuse a key file that group or others have any access to (default false: use it, with a warning). */
  strict?: boolean;
  /**
   * Receives the warning about a key file that group or others have access to (default `console.warn`); the
   * message names the file, its mode and the `chmod 600` that fixes it.
   */
  warn?: (message: string) => void;
}

/** Bytes read from a key file at most: a key is 32 bytes, or 64 hex characters and some whitespace. */
const KEY_FILE_MAX = 4096;

function fileKind(s: Deno.FileInfo): string {
  if (s.isDirectory) return "a directory";
  if (s.isFifo) return "a FIFO";
  if (s.isCharDevice) return "a character device";
  if (s.isBlockDevice) return "a block device";
  if (s.isSocket) return "a socket";
  return "not a regular file";
}

/**
 * Load the master key from a file holding 32 raw bytes or 64 hex characters (`--key-file`). The file must be a
 * regular file (a pipe or a device is refused, before it is opened). A file that group or others have any
 * access to (mode bits 077) is used with a warning naming the file, its mode and `chmod 600 FILE`, or refused
 * with `strict`.
 *
 * @param path The key file.
 * @param opts `strict` refuses a file group or others have access to; `warn` receives the warning otherwise.
 * @returns The key.
 * @throws {KeyFileError} When the file is not a regular file, or `strict` and its mode lets others in.
 * @throws {KeyError} When the file cannot be read or holds neither form (the message gives its size only).
 * @example
 * ```ts ignore
 * const key = await keyFromFile("/etc/cryo/app.key", { strict: true });
 * ```
 */
export async function keyFromFile(path: string, opts: KeyFileOptions = {}): Promise<SealKey> {
  const data = new Uint8Array(KEY_FILE_MAX + 1);
  let length = 0;
  try {
    // Stat first: opening a FIFO would block until a writer comes.
    const before = await Deno.stat(path);
    if (!before.isFile) throw new KeyFileError(path, `it is ${fileKind(before)}, not a regular file`);
    using file = await Deno.open(path, { read: true });
    const st = await file.stat();
    if (!st.isFile || st.ino !== before.ino || st.dev !== before.dev) {
      throw new KeyFileError(path, "it was replaced while it was opened");
    }
    const mode = (st.mode ?? 0) & 0o777;
    if ((mode & 0o077) !== 0) {
      const octal = `0${mode.toString(8).padStart(3, "0")}`;
      if (opts.strict) {
        throw new KeyFileError(path, `group or others have access to it (mode ${octal})`, mode);
      }
      (opts.warn ?? console.warn)(
        `key file ${path} is open to group or others (mode ${octal}); run \`chmod 600 ${path}\``,
      );
    }
    for (
      let n: number | null;
      length < data.length && (n = await file.read(data.subarray(length))) !== null;
    ) {
      length += n;
    }
  } catch (e) {
    data.fill(0);
    if (e instanceof KeyError) throw e;
    throw new KeyError(`Cannot load key from file ${path}: ${(e as Error).message}`, { cause: e });
  }
  const bytes = parseKey(data.subarray(0, length));
  data.fill(0);
  if (!bytes) {
    throw new KeyError(
      `Cannot load key from file ${path}: expected 32 raw bytes or 64 hex characters, found ${
        length > KEY_FILE_MAX ? `more than ${KEY_FILE_MAX}` : length
      } bytes`,
    );
  }
  try {
    return await SealKey.fromBytes(bytes, `file ${path}`);
  } finally {
    bytes.fill(0);
  }
}

/**
 * Load the master key from the environment variable the user names (`--key-env NAME`), holding 64 hex
 * characters.
 *
 * @param name The variable's name (not its value).
 * @returns The key.
 * @throws {TypeError} When `name` is not a valid variable name.
 * @throws {KeyError} When the variable is unset or does not hold 64 hex characters.
 */
export async function keyFromEnv(name: string): Promise<SealKey> {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    throw new TypeError(
      `Cannot load key from environment variable ${JSON.stringify(name)}: not a variable name`,
    );
  }
  const value = Deno.env.get(name);
  if (value === undefined) throw new KeyError(`Cannot load key from environment variable ${name}: not set`);
  const data = enc.encode(value);
  const bytes = data.length === KEY_BYTES ? undefined : parseKey(data);
  data.fill(0);
  if (!bytes) {
    throw new KeyError(
      `Cannot load key from environment variable ${name}: expected 64 hex characters, found ${value.length}`,
    );
  }
  try {
    return await SealKey.fromBytes(bytes, `environment variable ${name}`);
  } finally {
    bytes.fill(0);
  }
}

/**
 * The key the CLI options name: `--key-file PATH` or `--key-env NAME` (at most one), or none.
 *
 * @param opts `keyFile` and/or `keyEnv` as given; `strict` and `warn` for a key file ({@link keyFromFile}).
 * @returns The key, or undefined when neither option is given.
 * @throws {TypeError} When both are given.
 * @throws {KeyError} When the file or variable does not hold a key.
 */
export async function loadKey(
  opts: { keyFile?: string; keyEnv?: string } & KeyFileOptions,
): Promise<SealKey | undefined> {
  if (opts.keyFile !== undefined && opts.keyEnv !== undefined) {
    throw new TypeError("Cannot use both a key file and a key variable: give one");
  }
  if (opts.keyFile !== undefined) {
    return await keyFromFile(opts.keyFile, { strict: opts.strict, warn: opts.warn });
  }
  if (opts.keyEnv !== undefined) return await keyFromEnv(opts.keyEnv);
  return undefined;
}
