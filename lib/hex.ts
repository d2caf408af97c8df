/**
 * Addresses in messages: one format everywhere, in a leaf module that imports nothing (so that pure modules
 * need no native library to name an address).
 *
 * @module
 */

/**
 * Format an address as `0x…` hex.
 *
 * @param addr The address.
 * @returns `0x` and lowercase hex digits.
 */
export function hex(addr: bigint | number): string {
  return `0x${addr.toString(16)}`;
}
