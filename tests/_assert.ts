/**
 * The few assertions the tests use, on top of `node:assert/strict` (JSR's @std/assert is not reachable here).
 * `assertThrows`/`assertRejects` return the error so tests can check its fields.
 *
 * @module
 */

import nodeAssert from "node:assert/strict";

/** Assert that `cond` is truthy. */
export function assert(cond: unknown, message?: string): asserts cond {
  nodeAssert.ok(cond, message);
}

/** Assert deep, strict equality. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Assert that `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, message?: string): void {
  nodeAssert.match(text, re, message);
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error> = new (...args: any[]) => E;

/** Assert that `fn` throws an instance of `cls`; returns the error. */
export function assertThrows<E extends Error>(fn: () => unknown, cls: ErrorClass<E>, includes?: string): E {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new nodeAssert.AssertionError({ message: `expected ${cls.name}, got ${e}` });
    }
    if (includes && !e.message.includes(includes)) {
      throw new nodeAssert.AssertionError({ message: `expected "${includes}" in: ${e.message}` });
    }
    return e;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${cls.name} to be thrown` });
}

/** Assert that `fn` rejects with an instance of `cls`; returns the error. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls: ErrorClass<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof cls)) {
      throw new nodeAssert.AssertionError({ message: `expected ${cls.name}, got ${e}` });
    }
    if (includes && !e.message.includes(includes)) {
      throw new nodeAssert.AssertionError({ message: `expected "${includes}" in: ${e.message}` });
    }
    return e;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${cls.name} to be rejected` });
}
