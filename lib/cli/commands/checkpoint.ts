/**
 * `cryo checkpoint --pid P -o IMAGE`.
 *
 * @module
 */

import { checkpoint, type CheckpointOptions } from "../../ops/checkpoint.ts";
import type { IncrementalInfo } from "../../ops/incremental.ts";
import type { RegionFilter } from "../../kernel/policy.ts";
import { REGION_KINDS, type RegionKind } from "../../kernel/region.ts";
import { memoryOption, parse, parseMemory, parsePid, parseRange } from "../args.ts";
import { humanBytes, humanDuration, printable } from "../format.ts";
import { jsonDocument } from "../json.ts";
import { type Command, out, UsageError } from "../main.ts";
import { progressBar } from "../progress.ts";
import { keyFrom, keyOptions, parseCodecOption } from "../secure.ts";
import { Sealer } from "../../codecs/seal.ts";

/** Parse one `--include`/`--exclude` value: `range:START-END`, `kind:K`, `path:GLOB`, or `START-END`. */
export function parseFilter(value: string): RegionFilter {
  const [key, ...rest] = value.split(":");
  const arg = rest.join(":");
  if (key === "range") return { range: parseRange(arg) };
  if (key === "kind") {
    if (!(REGION_KINDS as readonly string[]).includes(arg)) {
      throw new UsageError(`unknown region kind "${arg}"; one of ${REGION_KINDS.join(", ")}`);
    }
    return { kind: arg as RegionKind };
  }
  if (key === "path") return { path: arg };
  if (/^(0x)?[0-9a-fA-F]+-/.test(value)) return { range: parseRange(value) };
  throw new UsageError(`a filter is range:START-END, kind:KIND or path:GLOB, got "${value}"`);
}

/** The region filter options shared by checkpoint and regions. */
export const filterOptions = {
  include: { type: "string", multiple: true },
  exclude: { type: "string", multiple: true },
  shared: { type: "boolean" },
} as const;

/** The options of every command that takes a checkpoint (checkpoint, hibernate): target, image, regions, codec, key. */
export const captureOptions = {
  pid: { type: "string" },
  output: { type: "string", short: "o" },
  ...filterOptions,
  compress: { type: "string" },
  ...keyOptions,
  ...memoryOption,
} as const;

/**
 * The checkpoint options {@link captureOptions} give (the target and the image are the command's).
 *
 * @param values The parsed flags.
 * @returns Codec, sealer, region filters and memory budget.
 * @throws {UsageError} On a malformed flag.
 */
export async function captureFrom(values: {
  include?: string[];
  exclude?: string[];
  shared?: boolean;
  compress?: string;
  "key-file"?: string;
  "key-env"?: string;
  memory?: string;
}): Promise<Pick<CheckpointOptions, "codec" | "sealer" | "include" | "exclude" | "shared" | "memoryBudget">> {
  const codec = values.compress === undefined ? undefined : parseCodecOption(values.compress);
  const key = await keyFrom(values);
  return {
    codec,
    sealer: key ? await Sealer.create(key) : undefined,
    include: (values.include ?? []).map(parseFilter),
    exclude: (values.exclude ?? []).map(parseFilter),
    shared: values.shared,
    memoryBudget: parseMemory(values.memory),
  };
}

export const checkpointCommand: Command = {
  name: "checkpoint",
  summary: "freeze a process, persist its memory into an image, thaw it",
  help: `cryo checkpoint --pid PID -o IMAGE [options]

Freezes every thread of PID (ptrace), persists every persistable region sparsely (pages never populated and
all-zero pages become holes), records each thread's registers and rseq, and thaws it. The image is written into
an unnamed file (mode 0600) in IMAGE's directory, fsynced, and only then named IMAGE: on any error, Ctrl-C or
even SIGKILL, nothing is left at IMAGE (nor a temporary file; a compressed image's raw intermediate is unnamed
too). With -o -, a failure leaves the stream on stdout incomplete, and its reader (restore -, verify -)
refuses it.

options:
  --pid PID             the process to checkpoint (root or CAP_SYS_PTRACE)
  -o, --output IMAGE    the image to write; - writes it to stdout (the summary then goes to stderr), which
                        must not be a terminal: a pipe or a file
  --include FILTER      also persist regions the policy skips: range:START-END, kind:KIND, path:GLOB
  --exclude FILTER      never persist these regions (wins over --include)
  --shared              persist shared mappings too
  --compress CODEC      compress each chunk: zstd[:LEVEL] (1-22, default 3), lz4[:LEVEL], or raw (default);
                        all cores, incompressible chunks stored raw (memory that does not compress at
                        all: the raw image is kept as it is)
  --key-file FILE       encrypt each chunk with AES-256-GCM, key from FILE (32 bytes, or 64 hex characters)
  --key-env NAME        the same, key from the environment variable NAME (never from the command line)
  --strict              refuse a key file that group or others have access to (else: a warning, and the
                        file must be a regular file either way; \`chmod 600 FILE\`)
  --encode-while-stopped  with --compress or a key: encode while the target is stopped (the fastest
                        checkpoint in all; by default a raw image is taken and encoded after the thaw, so the
                        target is stopped only to read its memory)
  --memory SIZE         buffers cryo may hold at once, whatever the process's size: BYTES, or with K, M or G
                        (default 64M, plus one chunk per codec worker; at least 4M)
  --live                stop the process only twice, briefly: to create a userfaultfd in it (its memory is
                        then write-protected while it runs), and to record its threads and layout and protect
                        again what it wrote meanwhile; then copy its memory while it runs; a page it writes
                        first is copied aside before the write goes through, so the image is still its memory
                        at the freeze (docs/LIVE.md)
  --live-neighbours N   with --live: pages copied aside per write fault (a power of two, 1-512; default 1)
  --stopped             keep the process stopped while its memory is read (the default)
  --track               arm write tracking at this checkpoint (a userfaultfd kept in PID): a later
                        \`restore --pid PID\` of this image writes back only the pages written since, and a
                        later \`checkpoint --parent\` over it reads only those
  --parent IMAGE        an incremental image: store only what changed since IMAGE (written pages, by the
                        tracking armed at IMAGE; else the pages that differ from it). It restores with its
                        chain, and \`cryo flatten\` makes it a full image again
  --no-registers        do not record thread registers
  --no-fsync            do not fsync the image (faster, not crash safe)
  --leave-stopped       leave the process stopped (SIGSTOP) afterwards; resume it with kill -CONT
  --json                print the result as JSON
  -q, --quiet           no progress bar

examples:
  cryo checkpoint --pid 4242 -o app.cryo
  cryo checkpoint --pid 4242 -o app.cryo --live
  cryo checkpoint --pid 4242 -o app.cryo --exclude path:'*.so*' --json
  cryo checkpoint --pid 4242 -o app.cryo --compress zstd:1 --key-file app.key
  cryo checkpoint --pid 4242 -o base.cryo --track
  cryo checkpoint --pid 4242 -o next.cryo --parent base.cryo --track
  cryo checkpoint --pid 4242 -o - | ssh host cryo restore --pid 99 -`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      ...captureOptions,
      "encode-while-stopped": { type: "boolean" },
      live: { type: "boolean" },
      "live-neighbours": { type: "string" },
      stopped: { type: "boolean" },
      "no-registers": { type: "boolean" },
      "no-fsync": { type: "boolean" },
      "leave-stopped": { type: "boolean" },
      track: { type: "boolean" },
      parent: { type: "string" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const pid = parsePid(values.pid);
    if (!values.output) throw new UsageError("-o IMAGE is required");
    if (values.output === "-" && Deno.stdout.isTerminal()) {
      throw new UsageError(
        "-o - writes the binary image to stdout, which is a terminal: pipe it (-o - | cryo restore --pid PID -) " +
          "or write a file (-o IMAGE)",
      );
    }
    if (values.live && values.stopped) throw new UsageError("--live and --stopped exclude each other");
    const neighbours = values["live-neighbours"] === undefined
      ? undefined
      : Number(values["live-neighbours"]);
    if (neighbours !== undefined && !(Number.isInteger(neighbours) && neighbours >= 1 && neighbours <= 512)) {
      throw new UsageError(
        `--live-neighbours takes a power of two from 1 to 512, got "${values["live-neighbours"]}"`,
      );
    }
    const capture = await captureFrom(values);
    ctx.imageOnStdout = values.output === "-";
    const result = await checkpoint(pid, values.output, {
      ...capture,
      encodeWhileStopped: values["encode-while-stopped"],
      live: values.live,
      liveNeighbours: neighbours,
      registers: !values["no-registers"],
      fsync: !values["no-fsync"],
      leaveStopped: values["leave-stopped"],
      track: values.track,
      parent: values.parent,
      progress: progressBar("checkpoint", values.quiet || values.json),
      signal: ctx.signal,
    });
    // With the image on stdout, everything else goes to stderr.
    const print = values.output === "-" ? (text: string) => console.error(text) : out;
    if (values.json) {
      print(jsonDocument(result));
      return 0;
    }
    print(
      `checkpoint of pid ${pid} -> ${printable(result.path)}\n` +
        `  regions   ${result.regions} persisted, ${result.excluded.length} excluded (\`cryo regions --pid ${pid}\` says why)\n` +
        `  threads   ${result.threads}\n` +
        `  data      ${humanBytes(result.dataBytes)} in ${result.records} records, holes ${
          humanBytes(result.holeBytes)
        }\n` +
        `  image     ${humanBytes(result.imageBytes)}` +
        (values.output === "-" ? " (streamed)\n" : ` (${humanBytes(result.allocatedBytes)} on disk)\n`) +
        `  stopped   ${humanDuration(result.stoppedMs)} (total ${humanDuration(result.totalMs)})` +
        (result.live
          ? ` (twice: ${humanDuration(result.live.armStoppedMs)} to arm, ${
            humanDuration(result.live.freezeStoppedMs)
          } at the freeze)`
          : "") +
        (result.live
          ? `\n  live      ${result.live.earlyPages} pages copied early, ${result.live.faults} write faults ` +
            `(longest ${humanDuration(result.live.maxFaultMs)})`
          : "") +
        (result.storedRaw
          ? `\n  codec     none: a sample of the memory did not compress (${values.compress} would have stored ` +
            `every chunk raw)`
          : "") +
        incrementalLines(result.incremental),
    );
    return 0;
  },
};

/** The lines that say how an incremental or tracked checkpoint found what changed (one line for a fallback). */
function incrementalLines(inc: IncrementalInfo | undefined): string {
  if (!inc) return "";
  let s = "";
  if (inc.parent) {
    s += `\n  parent    ${printable(inc.parent)} (a chain of ${(inc.chain ?? 0) + 1}); ${
      humanBytes(inc.changedBytes)
    } changed, ${inc.tracked ? "by write tracking" : "found by comparing with the parent"}`;
  }
  if (inc.reason) s += `\n  tracking  not used: ${printable(inc.reason)}`;
  else if (inc.armed) s += "\n  tracking  armed at this image";
  return s;
}
