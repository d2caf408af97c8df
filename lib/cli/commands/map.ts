/**
 * `cryo map`: a picture of a process's or an image's address space, as one self-contained HTML page.
 *
 * @module
 */

import { mapImage, mapProcess } from "../../ops/map.ts";
import { parse, parsePid } from "../args.ts";
import { humanBytes, printable as p } from "../format.ts";
import { jsonDocumentPieces } from "../json.ts";
import { type Command, out, outPieces, UsageError } from "../main.ts";
import { renderMapHtml } from "../map_html.ts";
import { progressBar } from "../progress.ts";
import { filterOptions, parseFilter } from "./checkpoint.ts";

export const mapCommand: Command = {
  name: "map",
  summary: "draw a process's or an image's memory as an HTML page (two images: what changed)",
  help: `cryo map (--pid PID | IMAGE | OLD.cryo NEW.cryo) [-o FILE.html] [--json]

Writes one self-contained HTML page (inline SVG, CSS and script; nothing is fetched) picturing an address
space: every region to scale on a log axis (a region of 2^k pages is k + 1 units wide), inside each persisted
region its data, its all-zero pages (a live process only) and its holes, and for every region whether a
checkpoint persists it and why not, in the policy's words (\`cryo regions\` lists the same as text).

  --pid PID        a live process, read as it runs (not frozen: needs ptrace rights to read its memory)
  IMAGE            an image: the regions it holds, and those of the process it left out (its layout)
  OLD NEW          two images of one process: NEW's map with a heat strip of the pages that differ from OLD

options:
  -o, --output FILE   where to write the page (default: cryo-map-PID.html, or IMAGE's name with .html, in
                      the current directory); - writes it to stdout
  --include, --exclude, --shared   with --pid: the filters a checkpoint would use
  --json              print the map's data as JSON instead (regions, runs, reasons, differing pages)
  -q, --quiet         no progress line (comparing two large images takes a while)

examples:
  cryo map --pid 4242 -o app.html && xdg-open app.html
  cryo map app.cryo
  cryo map before.cryo after.cryo -o changes.html`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      pid: { type: "string" },
      output: { type: "string", short: "o" },
      ...filterOptions,
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    let map;
    let name: string;
    if (values.pid !== undefined) {
      if (positionals.length) throw new UsageError(`--pid and an image: give one, got "${positionals[0]}"`);
      const pid = parsePid(values.pid);
      map = mapProcess(pid, {
        include: (values.include ?? []).map(parseFilter),
        exclude: (values.exclude ?? []).map(parseFilter),
        shared: values.shared,
      });
      name = `cryo-map-${pid}.html`;
    } else {
      if (positionals.length < 1 || positionals.length > 2) {
        throw new UsageError(
          `expected --pid PID, one IMAGE or two images OLD NEW, got ${positionals.length} arguments`,
        );
      }
      if (values.include || values.exclude || values.shared) {
        throw new UsageError(
          "--include, --exclude and --shared apply to --pid: an image was filtered when taken",
        );
      }
      const image = positionals[positionals.length - 1];
      map = await mapImage(image, {
        against: positionals.length === 2 ? positionals[0] : undefined,
        progress: progressBar("map", values.quiet || values.json || values.output === "-"),
      });
      name = `${image.replace(/^.*\//, "").replace(/\.cryo$/, "")}.html`;
    }
    if (values.json) {
      outPieces(jsonDocumentPieces(map)); // half a million runs are tens of MB of JSON: not made whole
      return 0;
    }
    const html = renderMapHtml(map);
    const path = values.output ?? name;
    if (path === "-") {
      await Deno.stdout.write(new TextEncoder().encode(html));
      return 0;
    }
    await Deno.writeTextFile(path, html);
    const t = map.totals;
    out(
      `wrote ${p(path)}: ${map.regions.length} regions, ${humanBytes(t.mappedBytes)} mapped, ${
        humanBytes(t.dataBytes)
      } of data` +
        (map.diff ? `, ${map.diff.differentPages} of ${map.diff.comparedPages} pages differ` : "") +
        "; open it with a browser",
    );
    return 0;
  },
};
