/**
 * Restoring an incremental image: its chain is flattened first (lib/image/chain.ts) into an unnamed scratch
 * file beside it, and the restore reads that one image, so a chain restores exactly like one image (verified
 * as a whole before anything is written, with the same layout and thread checks).
 *
 * @module
 */

import { close } from "../../ffi/libc.ts";
import type { Codec } from "../codecs/codec.ts";
import { CryoError } from "../errors.ts";
import { flattenChain, isIncremental } from "../image/chain.ts";
import { MemoryLoader } from "../image/loader.ts";
import { dirOf, scratchFile } from "../image/tempfile.ts";

/** An image ready to restore: the path itself, or its chain flattened. Dispose it when done. */
export interface OpenedChain extends Disposable {
  /** The image to read (the given path, or `/proc/self/fd/N` of the flattened chain). */
  path: string;
  /** Images in the chain (1 for a full image). */
  length: number;
}

/**
 * The image to restore for `path`: itself when it is a full image, else its chain flattened into a scratch
 * file (unnamed: gone when closed, even if this process is killed).
 *
 * @param path The image (`-` is passed through).
 * @param codecs Codecs the images may use.
 * @returns The image to read.
 * @throws {CryoError} For an encrypted incremental image (not supported).
 */
export async function openChain(path: string, codecs?: readonly Codec[]): Promise<OpenedChain> {
  if (path === "-") return { path, length: 1, [Symbol.dispose]() {} };
  {
    using loader = await MemoryLoader.open(path, { codecs });
    if (!isIncremental(loader)) return { path, length: 1, [Symbol.dispose]() {} };
    if (loader.encrypted) {
      throw new CryoError(`Cannot restore ${path}: encrypted incremental images are not supported`);
    }
  }
  const fd = scratchFile(dirOf(path));
  try {
    const flat = await flattenChain(path, { fd }, { codecs, fsync: false });
    return { path: `/proc/self/fd/${fd}`, length: flat.chain, [Symbol.dispose]: () => close(fd) };
  } catch (e) {
    close(fd);
    throw e;
  }
}
