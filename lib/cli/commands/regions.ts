/**
 * `cryo regions --pid P`: the memory map with what a checkpoint would persist, and why not.
 *
 * @module
 */

import { regionDecisions } from "../../ops/checkpoint.ts";
import { permsString } from "../../kernel/region.ts";
import type { SmapsRegion } from "../../kernel/maps.ts";
import { parse, parsePid } from "../args.ts";
import { humanBytes, printable as p, table } from "../format.ts";
import { jsonDocument } from "../json.ts";
import { type Command, out, UsageError } from "../main.ts";
import { filterOptions, parseFilter } from "./checkpoint.ts";

const hex = (n: bigint) => `0x${n.toString(16)}`;

export const regionsCommand: Command = {
  name: "regions",
  summary: "list a process's regions: what a checkpoint persists, and why not",
  help: `cryo regions --pid PID [--include F] [--exclude F] [--shared] [--json]

Reads /proc/PID/maps and smaps and applies the persistability policy: private writable memory is persisted;
vdso, vvar, vsyscall, PROT_NONE reservations, MADV_DONTDUMP, I/O and PFN mappings never are; shared mappings
only with --shared; private file mappings only for their copied-on-write pages. Each line says why.
Filters as for checkpoint. Needs no ptrace (the process is not frozen).

examples:
  cryo regions --pid 4242
  cryo regions --pid 4242 --include kind:file --json`,
  run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      pid: { type: "string" },
      ...filterOptions,
      json: { type: "boolean" },
    });
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const pid = parsePid(values.pid);
    const decisions = regionDecisions(pid, {
      include: (values.include ?? []).map(parseFilter),
      exclude: (values.exclude ?? []).map(parseFilter),
      shared: values.shared,
    });
    if (values.json) {
      out(jsonDocument({
        pid,
        regions: decisions.map(({ region, persist, reason, pages }) => {
          const g = region as SmapsRegion; // read with smaps
          return {
            start: g.start,
            end: g.end,
            perms: permsString(g.perms),
            offset: g.offset,
            device: g.device,
            inode: g.inode,
            path: g.path,
            kind: g.kind,
            vmFlags: g.vmFlags,
            rssBytes: g.rss,
            anonymousBytes: g.anonymous,
            swapBytes: g.swap,
            anonHugePagesBytes: g.anonHugePages,
            privateDirtyBytes: g.privateDirty,
            sharedDirtyBytes: g.sharedDirty,
            kernelPageSize: g.kernelPageSize,
            persist,
            reason,
            pages,
          };
        }),
      }));
      return Promise.resolve(0);
    }
    const kept = decisions.filter((d) => d.persist);
    const size = (ds: typeof decisions) => ds.reduce((n, d) => n + Number(d.region.end - d.region.start), 0);
    out(table([
      ["range", "perms", "size", "kind", "persist", "why", "path"],
      ...decisions.map((d) => [
        `${hex(d.region.start)}-${hex(d.region.end)}`,
        permsString(d.region.perms),
        humanBytes(d.region.end - d.region.start),
        d.region.kind,
        d.persist ? (d.pages === "anon" ? "cow" : "yes") : "no",
        p(d.reason),
        p(d.region.path),
      ]),
    ]));
    out(
      `\n${kept.length} of ${decisions.length} regions persisted (${
        humanBytes(size(kept))
      } of address space)`,
    );
    return Promise.resolve(0);
  },
};
