/**
 * `cryo inspect`, `cryo verify` and `cryo diff`: reading images.
 *
 * @module
 */

import { diff } from "../../ops/diff.ts";
import { checkKey, inspect, verify } from "../../ops/inspect.ts";
import { onePositional, parse } from "../args.ts";
import {
  humanBytes,
  humanDuration,
  humanRate,
  printable as p,
  table,
  tableRow,
  tableWidths,
} from "../format.ts";
import { jsonDocument, jsonDocumentPieces } from "../json.ts";
import { type Command, out, outPieces, UsageError } from "../main.ts";
import { EXIT } from "../exit.ts";
import { keyFrom, keyOptions } from "../secure.ts";
import { progressBar } from "../progress.ts";

const hex = (n: bigint) => `0x${n.toString(16)}`;

export const inspectCommand: Command = {
  name: "inspect",
  summary: "show an image's header, source, regions and totals",
  help: `cryo inspect IMAGE [--records] [--key-file FILE | --key-env NAME] [--json]

Shows the image's format, where it came from (pid, command line, kernel, boot id, time), its region table with
the data and holes of each region, its sections and totals. Data is not read: use \`cryo verify\` for that.

An encrypted image shows its sizes and layout without the key; with --key-file or --key-env the key is checked
against the image's header (the wrong key, or a key for a plaintext image, is refused: exit 8); no record is
decrypted here (\`cryo verify --key-file FILE IMAGE\` authenticates every chunk).

options:
  --records         list every index record too
  --key-file FILE   check that FILE holds the image's key (or --key-env NAME)
  --strict          refuse a key file that group or others have access to (else: a warning)
  --json            print everything as JSON (addresses as "0x…" strings, sizes as exact numbers)

examples:
  cryo inspect app.cryo
  cryo inspect app.cryo --records --json`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      records: { type: "boolean" },
      ...keyOptions,
      json: { type: "boolean" },
    });
    const path = onePositional(positionals, "IMAGE");
    const key = await keyFrom(values);
    const info = await inspect(path, { records: values.records });
    if (key) await checkKey(path, key);
    if (values.json) {
      const { sections, ...rest } = info;
      out(jsonDocument({
        ...rest,
        sections: sections.map((s) => ({ name: s.name, sizeBytes: s.bytes })),
        keyChecked: key !== undefined,
      }));
      return 0;
    }
    const t = info.totals;
    const lines = [
      `image     ${p(info.path)}: cryo format v${info.version}, ${p(info.arch)}, page ${info.pageSize}`,
      `features  required [${info.requiredFeatures.join(", ")}], optional [${
        info.optionalFeatures.join(", ")
      }]`,
      `source    pid ${info.source.pid} (${p(info.source.commandLine.join(" "))}) at ${p(info.source.time)}`,
      `          kernel ${p(info.source.kernelRelease)}, boot ${p(info.source.bootId)}`,
      `size      ${humanBytes(info.fileBytes)} (${humanBytes(info.allocatedBytes)} on disk)`,
      `data      ${humanBytes(t.dataBytes)} in ${t.dataRecords} records (stored ${
        humanBytes(t.storedBytes)
      }), ` +
      `holes ${humanBytes(t.holeBytes)} in ${t.holeRecords} records`,
      `sections  ${info.sections.map((s) => `${p(s.name)} (${humanBytes(s.bytes)})`).join(", ") || "none"}`,
      ...(info.kernel?.summary ? [`untouched a rollback leaves ${p(info.kernel.summary)}`] : []),
      ...(info.chain
        ? [
          `chain     ${info.chain.length} images, this one first:`,
          ...info.chain.map((c) =>
            `          ${p(c.path)} ${c.digest} ${humanBytes(c.dataBytes)} of data${
              c.incremental ? "" : " (full)"
            }`
          ),
        ]
        : []),
      ...(info.chainError ? [`chain     broken: ${p(info.chainError)}`] : []),
      ...(info.encrypted
        ? [
          "encrypted the records and sections are AES-256-GCM: sizes and layout are shown, contents need the key",
          ...(key ? [`key       ${p(key.source)} is the image's (checked against its header)`] : []),
        ]
        : []),
      "",
      `regions (${info.regions.length}):`,
      table([
        ["  range", "perms", "kind", "data", "holes", "path"],
        ...info.regions.map((g) => [
          `  ${g.relocatable ? `segment of ${humanBytes(g.end)}` : `${hex(g.start)}-${hex(g.end)}`}`,
          p(g.perms),
          p(g.kind),
          humanBytes(g.dataBytes),
          humanBytes(g.holeBytes),
          p(g.path),
        ]),
      ]),
    ];
    if (info.records) {
      lines.push("", `records (${info.records.length}):`);
      lines.push(table([
        ["  address", "length", "kind", "codec", "stored", "file offset"],
        ...info.records.map((r) => [
          `  ${hex(r.address)}${r.segment ? ` (segment ${r.segment})` : ""}`,
          String(r.length),
          r.kind,
          p(r.encrypted ? `${r.codec}+aes` : r.codec),
          String(r.storedLength),
          String(r.fileOffset),
        ]),
      ]));
    }
    out(lines.join("\n"));
    return 0;
  },
};

export const verifyCommand: Command = {
  name: "verify",
  summary: "check every byte of an image (exit 0 sound, 1 damaged)",
  help: `cryo verify IMAGE [--key-file FILE | --key-env NAME] [--strict] [--json]

Verifies the whole image: footer, header, bounds of every offset and length, index order and overlap, the
frames between records, and every checksum. Exit status 0 when sound, 1 when not (saying where and what),
2 on a usage error, 3 when there is no such file, 8 when the key is wrong (\`cryo --help\` lists them all).
IMAGE may be - (stdin). For an encrypted image, the checksums are checked without the key; with --key-file F
or --key-env NAME every chunk and the metadata are also authenticated.

options:
  --key-file FILE   the key of an encrypted image (or --key-env NAME): every chunk is authenticated too
  --strict          refuse a key file that group or others have access to (else: a warning)
  --json            print the result as JSON
  -q, --quiet       no progress line

examples:
  cryo verify app.cryo && echo sound
  cryo verify --key-file app.key app.cryo`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
      ...keyOptions,
    });
    const path = onePositional(positionals, "IMAGE");
    const progress = progressBar("verify", values.quiet || values.json);
    const result = await verify(path, { key: await keyFrom(values), progress });
    if (values.json) {
      const { bytes, ...rest } = result;
      out(jsonDocument({ ...rest, checkedBytes: bytes }));
    } else if (result.ok) {
      out(
        `${p(path)}: sound (${humanBytes(result.bytes)} checked in ${humanDuration(result.ms)}, ` +
          `${humanRate(result.bytes, result.ms)})` +
          (result.authenticated ? "; every chunk authenticated with the key" : ""),
      );
    } else console.error(`${p(path)}: DAMAGED: ${p(result.problem ?? "", { lines: true })}`);
    return result.ok ? EXIT.ok.exit : EXIT.no.exit;
  },
};

/** Lines of `cryo diff`'s table printed at once. */
const OUT_BLOCK = 1024;

export const diffCommand: Command = {
  name: "diff",
  summary: "show which pages differ between two images of a process",
  help: `cryo diff A B [--json] [-q]

Compares two images page by page (a hole reads as zeros). Lists runs of pages that changed, and ranges only one
image covers. Exit status, like cmp(1): 0 when they hold the same pages, 1 when they differ, 2 and up on
trouble (a usage error, a missing or damaged image: see \`cryo --help\`). Encrypted images cannot be compared
yet (their records are not decrypted here).

options:
  --json      print the result as JSON (exit status as above)
  -q, --quiet no progress line

examples:
  cryo diff before.cryo after.cryo`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (positionals.length !== 2) throw new UsageError("expected two images A and B");
    const result = await diff(positionals[0], positionals[1], {
      progress: progressBar("diff", values.quiet || values.json),
    });
    const status = result.differentPages > 0 ? EXIT.no.exit : EXIT.ok.exit;
    if (values.json) {
      outPieces(jsonDocumentPieces({ ...result, same: status === 0 })); // as many runs as pages differ
      return status;
    }
    out(
      `${result.differentPages} of ${result.comparedPages} compared pages differ between ${p(result.a)} and ${
        p(result.b)
      }`,
    );
    if (!result.runs.length) return status;
    // The table is printed as its rows are made, a block at a time: a diff of half a million runs held its
    // lines and their cells (75 MiB more than the runs for 65,536 of them).
    const what = {
      changed: "changed",
      "only-a": `only in ${p(result.a)}`,
      "only-b": `only in ${p(result.b)}`,
    };
    function* rows(): Generator<string[]> {
      yield ["  range", "pages", "what"];
      for (const r of result.runs) {
        yield [`  ${hex(r.start)}-${hex(r.end)}`, String(Number(r.end - r.start) / 4096), what[r.kind]];
      }
    }
    const widths = tableWidths(rows());
    let block: string[] = [];
    for (const r of rows()) {
      block.push(tableRow(r, widths));
      if (block.length === OUT_BLOCK) {
        out(block.join("\n"));
        block = [];
      }
    }
    if (block.length) out(block.join("\n"));
    return status;
  },
};
