/**
 * The per-chunk codec stage of the image write path: each data chunk is encoded on its own (compressed, or
 * stored raw when compression does not pay) and decoded straight into its destination on load.
 *
 * @module
 */

/** Chunks under this many bytes are encoded and decoded on the calling thread; larger ones on pool threads. */
export const INLINE_BYTES = 64 * 1024;

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
   * {@link encode} on the calling thread, without a promise, for a chunk under {@link INLINE_BYTES}: what the
   * writer uses for small chunks, where a promise chain per chunk cost more than the encoding (a checkpoint of
   * half a million one-page chunks). Optional: a codec without it is always awaited.
   *
   * @param src The chunk.
   * @returns The encoded chunk in the codec's own buffer, valid until its next call (the caller copies it where
   *   it is kept), or null; undefined (nothing done) when the chunk is too large for this.
   */
  encodeNow?(src: Uint8Array): Uint8Array | null | undefined;
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
  encodeNow(_src: Uint8Array): null {
    return null;
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
