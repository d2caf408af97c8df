/**
 * At-rest encryption of image chunks: AES-256-GCM per chunk through WebCrypto (`crypto.subtle`).
 *
 * Keys: the user's 256-bit master key comes from a file (`keyFromFile`, `--key-file`) or from an environment
 * variable the user names (`keyFromEnv`, `--key-env NAME`), as 32 raw bytes or 64 hex characters; never from
 * argv, never logged, never written into the image. Each image gets a random 16-byte salt; HKDF-SHA256 derives
 * from (master key, salt) the image's AES-256-GCM key, its HMAC-SHA256 key and a 16-byte key check, so a wrong
 * key is recognised before any chunk is opened. The salt and the key check (the seal parameters, 32 bytes) are
 * what the image stores.
 *
 * Nonces: each sealed chunk is `nonce(12) | ciphertext | tag(16)`. A nonce is a random 64-bit prefix, drawn
 * per {@link Sealer}, then a 32-bit counter that the sealer increments per chunk and never wraps, so one sealer
 * never repeats a nonce, and since every image has its own derived key, nonces of different images never share
 * a key. The additional authenticated data ({@link chunkAad}) binds each chunk to its index and address, so a
 * chunk moved elsewhere fails to open.
 *
 * @module
 */

import { CryoError, ImageError, KeyError, KeyFileError } from "../errors.ts";

/** Bytes of the seal parameters an image stores: salt(16) | key check(16). */
export const SEAL_PARAMS_SIZE = 32;
/** Bytes of a GCM nonce. */
export const NONCE_SIZE = 12;
/** Bytes of a GCM tag. */
export const TAG_SIZE = 16;
/** Bytes a sealed chunk adds to its plaintext: nonce and tag. */
export const SEAL_OVERHEAD: number = NONCE_SIZE + TAG_SIZE;
/** Bytes of an HMAC-SHA256 tag from {@link Sealer.mac}. */
export const MAC_SIZE = 32;

const KEY_BYTES = 32;

/** A view as WebCrypto's `BufferSource` type wants it (WebCrypto copies its inputs; no copy here). */
function bytes(u: Uint8Array): Uint8Array<ArrayBuffer> {
  return u as Uint8Array<ArrayBuffer>;
}
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
 * The additional authenticated data of one chunk: binds it to its place in the image and to the image's header.
 *
 * @param index The record's ordinal among the image's data records (0-based, file order = index order).
 * @param address The record's address (or offset in its segment).
 * @param length The decoded length.
 * @param codec The codec id the plaintext is encoded with.
 * @param segment The record's segment (0 = absolute address).
 * @param header The SHA-256 of the image's header block (32 bytes), or omitted.
 * @returns `"cryochnk" | index u64 | address u64 | length u64 | segment u32 | codec u8 | 0 0 0 | header`.
 */
export function chunkAad(
  index: number,
  address: bigint,
  length: number,
  codec: number,
  segment = 0,
  header?: Uint8Array,
): Uint8Array {
  const aad = new Uint8Array(40 + (header?.length ?? 0));
  aad.set(enc.encode("cryochnk"));
  const v = new DataView(aad.buffer);
  v.setBigUint64(8, BigInt(index), true);
  v.setBigUint64(16, BigInt.asUintN(64, address), true);
  v.setBigUint64(24, BigInt(length), true);
  v.setUint32(32, segment, true);
  v.setUint8(36, codec);
  if (header) aad.set(header, 40);
  return aad;
}

async function derive(key: SealKey, salt: Uint8Array<ArrayBuffer>) {
  const hkdf = (info: string) => ({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode(info) });
  const [aes, hmac, check] = await Promise.all([
    crypto.subtle.deriveKey(
      hkdf("cryo v1 aes-256-gcm"),
      key.master,
      { name: "AES-GCM", length: 256 },
      false,
      [
        "encrypt",
        "decrypt",
      ],
    ),
    crypto.subtle.deriveKey(
      hkdf("cryo v1 hmac-sha256"),
      key.master,
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
        "verify",
      ],
    ),
    crypto.subtle.deriveBits(hkdf("cryo v1 key check"), key.master, 128),
  ]);
  return { aes, hmac, check: new Uint8Array(check) };
}

/** Seals and opens the chunks of one image under its derived key. */
export class Sealer {
  /** The seal parameters the image stores: salt(16) | key check(16). */
  readonly params: Uint8Array;
  readonly #aes: CryptoKey;
  readonly #hmac: CryptoKey;
  readonly #prefix = crypto.getRandomValues(new Uint8Array(8));
  #counter = 0;

  private constructor(params: Uint8Array, aes: CryptoKey, hmac: CryptoKey) {
    this.params = params;
    this.#aes = aes;
    this.#hmac = hmac;
  }

  /**
   * A sealer for a new image: a fresh random salt.
   *
   * @param key The master key.
   * @returns The sealer; store its {@link params} in the image.
   */
  static async create(key: SealKey): Promise<Sealer> {
    const salt = crypto.getRandomValues(new Uint8Array(16));
    const { aes, hmac, check } = await derive(key, salt);
    const params = new Uint8Array(SEAL_PARAMS_SIZE);
    params.set(salt);
    params.set(check, 16);
    return new Sealer(params, aes, hmac);
  }

  /**
   * A sealer for an existing image, after checking that `key` is the one it was sealed with.
   *
   * @param key The master key.
   * @param params The image's seal parameters (32 bytes).
   * @param path The image, for messages.
   * @returns The sealer.
   * @throws {KeyError} When the key does not match.
   * @throws {ImageError} When `params` is not 32 bytes.
   */
  static async open(key: SealKey, params: Uint8Array, path = "-"): Promise<Sealer> {
    if (params.length !== SEAL_PARAMS_SIZE) {
      throw new ImageError(
        path,
        undefined,
        `seal parameters are ${params.length} bytes, expected ${SEAL_PARAMS_SIZE}`,
      );
    }
    const { aes, hmac, check } = await derive(key, new Uint8Array(params.subarray(0, 16)));
    let diff = 0;
    for (let i = 0; i < 16; i++) diff |= check[i] ^ params[16 + i];
    if (diff !== 0) {
      throw new KeyError(
        `Cannot open image ${path}: the key (${key.source}) is not the one it was sealed with`,
      );
    }
    return new Sealer(new Uint8Array(params), aes, hmac);
  }

  /** How many chunks this sealer has sealed. */
  get sealed(): number {
    return this.#counter;
  }

  /**
   * Encrypt and authenticate one chunk.
   *
   * @param plain The chunk (encoded or raw); not modified.
   * @param aad Its additional authenticated data ({@link chunkAad}).
   * @returns `nonce(12) | ciphertext | tag(16)`.
   * @throws {CryoError} After 2^32 chunks (a nonce would repeat).
   */
  async seal(plain: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (this.#counter > 0xffffffff) throw new CryoError("Cannot seal more than 2^32 chunks with one sealer");
    const iv = new Uint8Array(NONCE_SIZE);
    iv.set(this.#prefix);
    new DataView(iv.buffer).setUint32(8, this.#counter++, false);
    const ct = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: bytes(aad), tagLength: TAG_SIZE * 8 },
      this.#aes,
      bytes(plain),
    );
    const out = new Uint8Array(NONCE_SIZE + ct.byteLength);
    out.set(iv);
    out.set(new Uint8Array(ct), NONCE_SIZE);
    return out;
  }

  /**
   * Authenticate and decrypt one chunk.
   *
   * @param sealed `nonce(12) | ciphertext | tag(16)`.
   * @param aad The additional authenticated data it must have been sealed with.
   * @param path The image, for the error.
   * @param offset Where the sealed bytes lie in the image, for the error.
   * @returns The plaintext.
   * @throws {ImageError} When the chunk was modified, moved, or belongs to another image.
   */
  async open(sealed: Uint8Array, aad: Uint8Array, path = "-", offset?: number): Promise<Uint8Array> {
    if (sealed.length < SEAL_OVERHEAD) {
      throw new ImageError(
        path,
        offset,
        `sealed chunk is ${sealed.length} bytes, shorter than ${SEAL_OVERHEAD}`,
      );
    }
    try {
      const plain = await crypto.subtle.decrypt(
        {
          name: "AES-GCM",
          iv: bytes(sealed.subarray(0, NONCE_SIZE)),
          additionalData: bytes(aad),
          tagLength: TAG_SIZE * 8,
        },
        this.#aes,
        bytes(sealed.subarray(NONCE_SIZE)),
      );
      return new Uint8Array(plain);
    } catch (e) {
      const err = new ImageError(
        path,
        offset,
        "chunk authentication failed: it was modified, moved, or belongs to another image",
      );
      Object.defineProperty(err, "cause", { value: e });
      throw err;
    }
  }

  /**
   * HMAC-SHA256 of metadata (header block, region table, index) under the image's derived key.
   *
   * @param data The bytes to authenticate.
   * @returns The 32-byte tag.
   */
  async mac(data: Uint8Array): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign("HMAC", this.#hmac, bytes(data)));
  }

  /**
   * Check an HMAC-SHA256 tag from {@link mac} (in constant time).
   *
   * @param data The bytes.
   * @param tag The tag they must have.
   * @returns Whether the tag matches.
   */
  async verifyMac(data: Uint8Array, tag: Uint8Array): Promise<boolean> {
    if (tag.length !== MAC_SIZE) return false;
    return await crypto.subtle.verify("HMAC", this.#hmac, bytes(tag), bytes(data));
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
