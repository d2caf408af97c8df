/**
 * The per-chunk codec stage of the image write path: each data chunk is encoded on its own (compressed, or
 * stored raw when compression does not pay) and decoded straight into its destination on load.
 *
 * @module
 */

/** Decoded lengths below which the built-in codecs decode on the calling thread ({@link Codec.decodeNow}). */
export const DECODE_NOW_BELOW = 64 << 10;

/** One chunk codec. Ids are written into the image: 0 raw, 1 zstd, 2 lz4. */
export interface Codec {
  /** The id written into the image: 0 raw, 1 zstd, 2 lz4. */
  readonly id: number;
  /** The codec's name, e.g. `"zstd"`. */
  readonly name: string;
  /**
   * Encode one chunk; null when the encoding is not smaller (then the chunk is stored raw).
   *
   * @param src The chunk; it must not change until the promise settles.
   * @returns The encoded chunk, or null.
   */
  encode(src: Uint8Array): Promise<Uint8Array | null>;
  /**
   * Decode `src` into exactly `dst.length` bytes.
   *
   * @param src The encoded chunk.
   * @param dst Where the decoded bytes go; its length is the decoded size.
   */
  decode(src: Uint8Array, dst: Uint8Array): Promise<void> | void;
  /**
   * Decode on the calling thread, without a promise, when the chunk is small enough to (a codec without it is
   * always asked through {@link decode}).
   *
   * @param src The encoded chunk.
   * @param dst Where the decoded bytes go; its length is the decoded size.
   * @returns Whether it was decoded; false (nothing done) when it should go through {@link decode}.
   */
  decodeNow?(src: Uint8Array, dst: Uint8Array): boolean;
}

/** The raw codec: chunks are stored as they are. */
export const raw: Codec = {
  id: 0,
  name: "raw",
  encode(_src: Uint8Array): Promise<Uint8Array | null> {
    return Promise.resolve(null);
  },
  decode(src: Uint8Array, dst: Uint8Array): void {
    if (src.length !== dst.length) {
      throw new RangeError(`Cannot decode raw chunk: ${src.length} bytes, expected ${dst.length}`);
    }
    dst.set(src);
  },
  decodeNow(src: Uint8Array, dst: Uint8Array): boolean {
    raw.decode(src, dst);
    return true;
  },
};
