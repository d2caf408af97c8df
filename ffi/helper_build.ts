/**
 * The helper library built on first use, for a copy of cryo that has no `ffi/build/` (run from a URL, from JSR,
 * or installed with `deno install`): its C source ({@link HELPER_SOURCES}, which came with the modules) is
 * compiled once with `$CC` or `cc` into a cache directory named by cryo's version and a hash of that source,
 * `$XDG_CACHE_HOME/cryo/<version>-<hash>/libcryo_helper.so` (`~/.cache` when `XDG_CACHE_HOME` is unset). The
 * build goes to a private temporary directory beside it and is renamed into place, so two cryo processes that
 * build at once never load a half-written library.
 *
 * @module
 */

import config from "../deno.json" with { type: "json" };
import { HelperNotFoundError } from "../lib/errors.ts";
import { HELPER_SOURCES } from "./helper_sources.ts";
import { xxhash } from "./xxhash.ts";

/** The library's file name, in the checkout's `ffi/build/` and in the cache directory. */
export const HELPER_FILE = "libcryo_helper.so";

/**
 * The cache directory of this version's helper: `$XDG_CACHE_HOME/cryo/<version>-<hash>` (`$HOME/.cache` when
 * `XDG_CACHE_HOME` is unset or not absolute), the hash being an XXH3-64 (16 hex digits) over the
 * source files' names and contents.
 *
 * @returns The directory (it may not exist yet).
 * @throws {HelperNotFoundError} When neither `XDG_CACHE_HOME` nor `HOME` is set, or the environment may not
 *   be read.
 */
export function helperCacheDir(): string {
  let base: string | undefined;
  try {
    const xdg = Deno.env.get("XDG_CACHE_HOME");
    const home = Deno.env.get("HOME");
    base = xdg?.startsWith("/") ? xdg : home ? `${home}/.cache` : undefined;
  } catch (e) {
    throw new HelperNotFoundError(
      `Cannot find a cache directory for the cryo helper library: reading XDG_CACHE_HOME and HOME needs ` +
        `permission (${(e as Error).message.split("\n")[0]})`,
    );
  }
  if (!base) {
    throw new HelperNotFoundError(
      "Cannot find a cache directory for the cryo helper library: neither XDG_CACHE_HOME nor HOME is set",
    );
  }
  return `${base}/cryo/${config.version}-${sourceHash()}`;
}

/**
 * The 16 hex digits of an XXH3-64 over each source file's name, a NUL, its length, a NUL and its contents, in
 * the order of their names. It names a cache directory (what is in it is checked by owner and mode, not by this
 * hash). Not a SHA-256 from `node:crypto`: loading that module alone took a fifth of a cold command's start-up.
 */
export function sourceHash(): string {
  const parts: string[] = [];
  for (
    const [name, text] of Object.entries(HELPER_SOURCES).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  ) {
    parts.push(`${name}\0${text.length}\0`, text);
  }
  const bytes = new TextEncoder().encode(parts.join(""));
  return xxhash.XXH3_64bits_buf(bytes, BigInt(bytes.length)).toString(16).padStart(16, "0");
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * The path of this version's helper in the cache, built first when it is not there yet (about a few seconds,
 * once per version).
 *
 * @param onBuild Called with the cache directory before a build starts (the CLI says so on stderr).
 * @returns The library's path.
 * @throws {HelperNotFoundError} When there is no C compiler, the compiler fails, or the cache directory
 *   cannot be written; the message says which and what to do.
 */
export function cachedHelper(onBuild?: (dir: string) => void): string {
  const dir = helperCacheDir();
  const lib = `${dir}/${HELPER_FILE}`;
  if (exists(lib)) {
    // Code that will run in this process (often as root): only from a directory and file no one else may change.
    for (const path of [dir, lib]) {
      const st = Deno.statSync(path);
      if (st.uid !== Deno.uid() || ((st.mode ?? 0) & 0o022) !== 0) {
        throw new HelperNotFoundError(
          `Cannot use the cryo helper library ${lib}: ${path} belongs to uid ${st.uid} (mode ` +
            `0${
              ((st.mode ?? 0) & 0o777).toString(8)
            }), not to this user (uid ${Deno.uid()}) alone; remove ${dir} ` +
            `to have it built again`,
        );
      }
    }
    return lib;
  }
  onBuild?.(dir);
  let work: string;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    work = Deno.makeTempDirSync({ dir, prefix: ".build-" });
  } catch (e) {
    throw new HelperNotFoundError(
      `Cannot build the cryo helper library: cannot write its cache directory ${dir}: ` +
        `${
          (e as Error).message.split("\n")[0]
        }; set XDG_CACHE_HOME to a writable directory, or CRYO_HELPER ` +
        `to a library built with \`deno task build\``,
    );
  }
  try {
    const sources: string[] = [];
    for (const [name, text] of Object.entries(HELPER_SOURCES)) {
      Deno.writeTextFileSync(`${work}/${name}`, text);
      if (name.endsWith(".c")) sources.push(`${work}/${name}`);
    }
    const cc = Deno.env.get("CC") || "cc";
    const args = ["-O2", "-g", "-Wall", "-shared", "-fPIC", "-o", `${work}/${HELPER_FILE}`, ...sources];
    let result: Deno.CommandOutput;
    try {
      result = new Deno.Command(cc, { args, stdout: "piped", stderr: "piped" }).outputSync();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new HelperNotFoundError(
          `Cannot build the cryo helper library: no C compiler (${cc} is not on PATH); install one ` +
            `(Debian/Ubuntu: apt-get install gcc; Fedora: dnf install gcc), set CC to one, or set CRYO_HELPER ` +
            `to a libcryo_helper.so built elsewhere`,
        );
      }
      throw new HelperNotFoundError(
        `Cannot build the cryo helper library: cannot run ${cc}: ${(e as Error).message.split("\n")[0]}`,
      );
    }
    if (!result.success) {
      const stderr = new TextDecoder().decode(result.stderr).trim().split("\n").slice(0, 20).join("\n  ");
      throw new HelperNotFoundError(
        `Cannot build the cryo helper library: ${cc} exited with status ${result.code}:\n  ${stderr}`,
      );
    }
    // Into place atomically: a concurrent build renames an identical library over it, which is harmless.
    Deno.renameSync(`${work}/${HELPER_FILE}`, lib);
    return lib;
  } finally {
    try {
      Deno.removeSync(work, { recursive: true });
    } catch { /* already gone */ }
  }
}
