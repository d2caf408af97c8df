/**
 * Choose a codec: from the `--compress` spelling (`zstd`, `zstd:LEVEL`, `lz4`, `lz4:LEVEL`, `raw`/`none`) when
 * writing, or from the id recorded in the image when reading.
 *
 * @module
 */

import { type Codec, raw } from "./codec.ts";
import { Lz4Codec } from "./lz4.ts";
import { ZstdCodec } from "./zstd.ts";

/**
 * The codec a `--compress` value names.
 *
 * @param spec `zstd[:level]` (default level 3), `lz4[:level]`, or `raw`/`none`.
 * @returns A new codec (zstd holds native contexts: `close()` it when done, or let it be collected).
 * @throws {TypeError} When the name is unknown or the level is not an integer.
 * @throws {RangeError} When the level is out of the codec's range.
 */
export function parseCodec(spec: string): Codec {
  const m = /^(zstd|lz4|raw|none)(?::(-?\d+))?$/.exec(spec.trim());
  if (!m) throw new TypeError(`Cannot use codec "${spec}": expected zstd[:level], lz4[:level] or raw`);
  const level = m[2] === undefined ? undefined : Number(m[2]);
  switch (m[1]) {
    case "zstd":
      return new ZstdCodec(level);
    case "lz4":
      return new Lz4Codec(level);
    default:
      if (level !== undefined) throw new TypeError(`Cannot use codec "${spec}": raw takes no level`);
      return raw;
  }
}

/**
 * The codec that decodes chunks recorded with codec id `id`.
 *
 * @param id The codec id from the image: 0 raw, 1 zstd, 2 lz4.
 * @returns The codec, or undefined when the id is unknown (the caller names the file and offset).
 */
export function codecForId(id: number): Codec | undefined {
  switch (id) {
    case 0:
      return raw;
    case 1:
      return decoders.zstd ??= new ZstdCodec(1);
    case 2:
      return decoders.lz4 ??= new Lz4Codec(1);
    default:
      return undefined;
  }
}

const decoders: { zstd?: ZstdCodec; lz4?: Lz4Codec } = {};
