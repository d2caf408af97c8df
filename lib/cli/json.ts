/**
 * JSON output for `--json`, one contract for every command (README "The command line for scripts"): a
 * `schema` version first; byte counts in keys ending in `Bytes`, durations in keys ending in `Ms`, both exact
 * numbers; addresses (`start`, `end`, `address`: 64-bit, beyond a double's exact range) as `"0x…"` strings;
 * every other number (an inode, a file offset) a JSON number.
 *
 * @module
 */

/**
 * The version of the JSON documents the CLI prints. Raised when a key is renamed or removed or changes meaning;
 * adding a key keeps it.
 */
export const JSON_SCHEMA = 1;

/** Keys whose bigint values are addresses, printed as `"0x…"` strings. */
const ADDRESS_KEYS = new Set(["start", "end", "address"]);

/**
 * Serialize `value`, two-space indented: bigints under an address key as hex strings, other bigints as numbers
 * (as decimal strings beyond 2^53, which no inode or offset reaches). `JSON.stringify` escapes C0 controls and
 * lone surrogates; DEL and the C1 controls (which some terminals obey) are escaped here too, so strings from a
 * target or an image print safely.
 */
export function toJson(value: unknown): string {
  return escapeC1(JSON.stringify(value, replacer, 2));
}

function replacer(k: string, v: unknown): unknown {
  if (typeof v !== "bigint") return v;
  if (ADDRESS_KEYS.has(k)) return `0x${v.toString(16)}`;
  return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : String(v);
}

function escapeC1(text: string): string {
  return text.replace(/[\x7f-\x9f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * A command's JSON document: `{"schema": N, ...fields}`.
 *
 * @param fields The result's fields.
 * @returns The text to print.
 */
export function jsonDocument(fields: object): string {
  return toJson({ schema: JSON_SCHEMA, ...fields });
}

/** Characters of text {@link jsonDocumentPieces} gathers before it yields them. */
const PIECE = 64 << 10;

/**
 * A command's JSON document as {@link jsonDocument} makes it, in pieces of about 64 KiB: a document of half a
 * million runs (`cryo map --json`) made whole was 62 MB of text, held two or three times over (the string, its
 * escaped copy, its UTF-8 bytes) on top of the values it came from.
 *
 * @param fields The result's fields.
 * @returns The text, in pieces whose concatenation is `jsonDocument(fields)`.
 */
export function* jsonDocumentPieces(fields: object): Generator<string> {
  let held: string[] = [], length = 0;
  for (const p of valuePieces("", { schema: JSON_SCHEMA, ...fields }, "")) {
    held.push(p);
    length += p.length;
    if (length >= PIECE) {
      yield escapeC1(held.join(""));
      [held, length] = [[], 0];
    }
  }
  if (held.length) yield escapeC1(held.join(""));
}

/** Whether `JSON.stringify` leaves a value out of an object (and writes `null` for it in an array). */
const omitted = (v: unknown) => v === undefined || typeof v === "function" || typeof v === "symbol";

/**
 * `JSON.stringify(value, replacer, 2)` at `indent`, in pieces: an object whose values are all primitive is
 * stringified whole (its lines indented), arrays and other objects a member at a time.
 */
function* valuePieces(key: string, value: unknown, indent: string): Generator<string> {
  const v = replacer(key, value);
  if (v === null || typeof v !== "object" || typeof (v as { toJSON?: unknown }).toJSON === "function") {
    yield JSON.stringify(v, replacer, 2).replaceAll("\n", `\n${indent}`);
    return;
  }
  const inner = `${indent}  `;
  if (Array.isArray(v)) {
    if (!v.length) return yield "[]";
    yield "[\n";
    for (let i = 0; i < v.length; i++) {
      yield inner;
      if (omitted(replacer(String(i), v[i]))) yield "null";
      else yield* valuePieces(String(i), v[i], inner);
      yield i < v.length - 1 ? ",\n" : "\n";
    }
    return yield `${indent}]`;
  }
  const entries = Object.entries(v).filter(([k, x]) => !omitted(replacer(k, x)));
  if (entries.every(([, x]) => x === null || typeof x !== "object")) {
    yield JSON.stringify(v, replacer, 2).replaceAll("\n", `\n${indent}`);
    return;
  }
  yield "{\n";
  for (let i = 0; i < entries.length; i++) {
    const [k, x] = entries[i];
    yield `${inner}${JSON.stringify(k)}: `;
    yield* valuePieces(k, x, inner);
    yield i < entries.length - 1 ? ",\n" : "\n";
  }
  yield `${indent}}`;
}
