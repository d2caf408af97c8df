/**
 * An image held open for many restores of one process (a snapshot's rollbacks): opened (its chain flattened),
 * verified in full once, and kept open. A later restore from it skips opening and verifying it again while the
 * file is unchanged, which is checked cheaply on the held descriptor: its `statx` stamp (device, inode, size,
 * modification and change times to the nanosecond, lib/image/file_stamp.ts). Any write to the file moves its
 * change time, so an equal stamp means the verified bytes. Restores read through the held descriptor, so a file
 * put at the same path since (renamed over it) is not used either: the path must still name the held file.
 *
 * @module
 */

import type { Codec } from "../codecs/codec.ts";
import { MemoryLoader } from "../image/loader.ts";
import { openChain, type OpenedChain } from "./chain_restore.ts";

/** An image opened and verified once, held open (see the module doc). Close it when done. */
export class HeldImage implements Disposable {
  /** The image's path, as given. */
  readonly path: string;
  /** The open, verified image (the flattened chain, for an incremental image). */
  readonly loader: MemoryLoader;
  readonly #chain: OpenedChain;
  readonly #stamp: string;
  readonly #pathStamp: string;
  #closed = false;

  private constructor(path: string, chain: OpenedChain, loader: MemoryLoader) {
    this.path = path;
    this.#chain = chain;
    this.loader = loader;
    this.#stamp = loader.stamp();
    this.#pathStamp = pathIdentity(path);
  }

  /**
   * Open `path` (an incremental image's chain flattened, lib/ops/chain_restore.ts) and verify it in full.
   *
   * @param path The image.
   * @param codecs Codecs it may use.
   * @returns The held image.
   * @throws {ImageError} When it does not verify.
   */
  static async open(path: string, codecs?: readonly Codec[]): Promise<HeldImage> {
    const chain = await openChain(path, codecs);
    let loader: MemoryLoader | undefined;
    try {
      loader = await MemoryLoader.open(chain.path, { codecs });
      await loader.verify();
      return new HeldImage(path, chain, loader);
    } catch (e) {
      loader?.close();
      chain[Symbol.dispose]();
      throw e;
    }
  }

  /**
   * Whether this is still the image at `path` as verified: open, the same path, which still names the held
   * file, and the held file's stamp unchanged.
   *
   * @param path The image a restore is asked to use.
   * @returns Whether its verification stands.
   */
  stands(path: string): boolean {
    if (this.#closed || path !== this.path) return false;
    try {
      return this.loader.stamp() === this.#stamp && pathIdentity(path) === this.#pathStamp;
    } catch {
      return false;
    }
  }

  /** Close the image (and the flattened chain's scratch file). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.loader.close();
    this.#chain[Symbol.dispose]();
  }

  /** Same as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Which file `path` names now (device and inode). */
function pathIdentity(path: string): string {
  const st = Deno.statSync(path);
  return `${st.dev}:${st.ino}`;
}
