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
  return JSON.stringify(value, (k, v) => {
    if (typeof v !== "bigint") return v;
    if (ADDRESS_KEYS.has(k)) return `0x${v.toString(16)}`;
    return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(v)
      : String(v);
  }, 2).replace(/[\x7f-\x9f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
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
