/**
 * JSON output for `--json`: exact numbers, and addresses (bigint) as `0x…` strings.
 *
 * @module
 */

/** Serialize `value` with bigints as hex strings, two-space indented. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v), 2);
}
