/**
 * The CLI options shared by commands that read or write encrypted or compressed images.
 *
 * @module
 */

import type { Codec } from "../codecs/codec.ts";
import { parseCodec } from "../codecs/select.ts";
import { loadKey, type SealKey } from "../codecs/keys.ts";
import { printable } from "./format.ts";
import { CryoError } from "../errors.ts";
import { UsageError } from "./main.ts";

/**
 * `--key-file FILE` and `--key-env NAME`: where an image's key comes from (never the command line); `--strict`
 * refuses a key file that group or others have access to (without it: a warning on stderr).
 */
export const keyOptions = {
  "key-file": { type: "string" },
  "key-env": { type: "string" },
  strict: { type: "boolean" },
} as const;

/** The key named by `--key-file`/`--key-env`, or undefined when neither is given. */
export async function keyFrom(
  values: { "key-file"?: string; "key-env"?: string; strict?: boolean },
): Promise<SealKey | undefined> {
  if (values["key-file"] !== undefined && values["key-env"] !== undefined) {
    throw new UsageError("give one of --key-file and --key-env, not both");
  }
  return await loadKey({
    keyFile: values["key-file"],
    keyEnv: values["key-env"],
    strict: values.strict,
    warn: (message) => console.error(`cryo: warning: ${printable(message)}`),
  });
}

/** Parse `--compress`, turning a bad spec into a usage error. */
export function parseCodecOption(spec: string): Codec {
  try {
    return parseCodec(spec);
  } catch (e) {
    if (e instanceof CryoError) throw e; // a codec's library that cannot be opened is not a usage error
    throw new UsageError(`--compress: ${(e as Error).message}`);
  }
}
