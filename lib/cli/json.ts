/**
 * JSON output for `--json`: exact numbers, and addresses (bigint) as `0x…` strings.
 *
 * @module
 */

/**
 * Serialize `value` with bigints as hex strings, two-space indented. `JSON.stringify` escapes C0 controls and
 * lone surrogates; DEL and the C1 controls (which some terminals obey) are escaped here too, so strings from a
 * target or an image print safely.
 */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v), 2)
    .replace(/[\x7f-\x9f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
