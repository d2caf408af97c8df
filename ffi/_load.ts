/**
 * Load a system library once: an override environment variable, then the system's soname; otherwise a
 * {@link LibraryNotFoundError} that lists what was tried, why each failed, and how to fix it.
 *
 * @module
 */

import { LibraryNotFoundError } from "../lib/errors.ts";

/**
 * Open `soname` (or the path in `$envVar`) with `symbols`.
 *
 * @param soname The library's soname, e.g. `libzstd.so.1`.
 * @param envVar The environment variable that overrides the path, e.g. `CRYO_LIBZSTD`.
 * @param symbols The symbol table.
 * @param hint How to install the library, for the error.
 * @returns The library's symbols.
 * @throws {LibraryNotFoundError} When no candidate loads.
 */
export function loadSystemLibrary<S extends Deno.ForeignLibraryInterface>(
  soname: string,
  envVar: string,
  symbols: S,
  hint: string,
): Deno.DynamicLibrary<S>["symbols"] {
  let override: string | undefined;
  try {
    override = Deno.env.get(envVar);
  } catch { /* no --allow-env: use the soname */ }
  const candidates = override ? [override] : [soname];
  const tried: string[] = [];
  for (const path of candidates) {
    try {
      return Deno.dlopen(path, symbols).symbols;
    } catch (e) {
      tried.push(`${path}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  throw new LibraryNotFoundError(
    `Cannot load ${soname}; tried:\n  ${tried.join("\n  ")}\n${hint}, or set ${envVar} to its path`,
  );
}

/**
 * {@link loadSystemLibrary}, on first use: the symbols of a library that opens when one is first called, so
 * that importing a module that binds it needs neither `--allow-ffi` nor the library itself.
 *
 * @param soname The library's soname.
 * @param envVar The environment variable that overrides the path.
 * @param symbols The symbol table.
 * @param hint How to install the library, for the error.
 * @returns The library's symbols (a proxy that opens it on first access).
 */
export function lazySystemLibrary<S extends Deno.ForeignLibraryInterface>(
  soname: string,
  envVar: string,
  symbols: S,
  hint: string,
): Deno.DynamicLibrary<S>["symbols"] {
  type Symbols = Deno.DynamicLibrary<S>["symbols"];
  let opened: Symbols | undefined;
  return new Proxy({} as Symbols, {
    get: (_, name) => {
      opened ??= loadSystemLibrary(soname, envVar, symbols, hint);
      return opened[name as keyof Symbols];
    },
  });
}
