/**
 * `cryo flatten TIP -o FULL`: write an incremental image's chain as one full image.
 *
 * @module
 */

import { flattenChain } from "../../image/chain.ts";
import { onePositional, parse } from "../args.ts";
import { humanBytes, printable } from "../format.ts";
import { toJson } from "../json.ts";
import { type Command, out, UsageError } from "../main.ts";

export const flattenCommand: Command = {
  name: "flatten",
  summary: "merge an incremental image's chain into one full image",
  help: `cryo flatten TIP -o FULL [options]

Reads TIP (an image taken with checkpoint --parent) and its chain of parents down to a full image, each one
verified and checked against the content identity its child records, and writes FULL: one full image with
TIP's regions, registers and sections, and for every address the bytes of the newest image that holds it.
FULL is written like any image (an unnamed 0600 file, fsynced, then named).

options:
  -o, --output FULL   the image to write
  --no-fsync          do not fsync it
  --json              print the result as JSON

examples:
  cryo flatten app-3.cryo -o app-full.cryo`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      output: { type: "string", short: "o" },
      "no-fsync": { type: "boolean" },
      json: { type: "boolean" },
    });
    const tip = onePositional(positionals, "TIP");
    if (!values.output) throw new UsageError("-o FULL is required");
    if (values.output === "-") throw new UsageError("flatten writes a file: -o FULL");
    const result = await flattenChain(tip, values.output, { fsync: !values["no-fsync"] });
    if (values.json) {
      out(toJson(result));
      return 0;
    }
    out(
      `flattened ${printable(tip)} (a chain of ${result.chain}) -> ${printable(values.output)}\n` +
        `  data      ${humanBytes(result.dataBytes)} in ${result.records} records, holes ${
          humanBytes(result.holeBytes)
        }\n` +
        `  image     ${humanBytes(result.fileSize)}`,
    );
    return 0;
  },
};
