/**
 * The CLI options shared by commands that read or write encrypted or compressed images.
 *
 * @module
 */

import type { Codec } from "../codec.ts";
import { parseCodec } from "../codecs/select.ts";
import { loadKey, type SealKey } from "../seal.ts";
import { UsageError } from "./main.ts";

/** `--key-file FILE` and `--key-env NAME`: where an image's key comes from (never the command line). */
export const keyOptions = {
  "key-file": { type: "string" },
  "key-env": { type: "string" },
} as const;

/** The key named by `--key-file`/`--key-env`, or undefined when neither is given. */
export async function keyFrom(
  values: { "key-file"?: string; "key-env"?: string },
): Promise<SealKey | undefined> {
  if (values["key-file"] !== undefined && values["key-env"] !== undefined) {
    throw new UsageError("give one of --key-file and --key-env, not both");
  }
  return await loadKey({ keyFile: values["key-file"], keyEnv: values["key-env"] });
}

/** Parse `--compress`, turning a bad spec into a usage error. */
export function parseCodecOption(spec: string): Codec {
  try {
    return parseCodec(spec);
  } catch (e) {
    throw new UsageError(`--compress: ${(e as Error).message}`);
  }
}
