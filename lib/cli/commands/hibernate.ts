/**
 * `cryo hibernate --pid P -o IMAGE` and `cryo wake --pid P [--lazy] IMAGE`.
 *
 * @module
 */

import { hibernate } from "../../ops/hibernate.ts";
import type { ProcessMemory } from "../../kernel/process_status.ts";
import { wake } from "../../ops/wake.ts";
import { serve } from "../../ops/serve.ts";
import { memoryOption, onePositional, parse, parseMemory, parsePid } from "../args.ts";
import { humanBytes, humanDuration, printable } from "../format.ts";
import { jsonDocument } from "../json.ts";
import { type Command, out, UsageError } from "../main.ts";
import { progressBar } from "../progress.ts";
import { keyFrom, keyOptions } from "../secure.ts";
import { captureFrom, captureOptions } from "./checkpoint.ts";

export const hibernateCommand: Command = {
  name: "hibernate",
  summary: "free an idle process's memory into an image and leave it stopped",
  help: `cryo hibernate --pid PID -o IMAGE [options]

Freezes PID, persists its memory into IMAGE (as \`cryo checkpoint\` does), writes and fsyncs the image, and
only then releases the persisted pages inside PID (an injected madvise(MADV_DONTNEED) on every private region
the image holds). PID is left stopped (state T, by a SIGSTOP that outlives cryo) until \`cryo wake\`. Prints
the resident memory freed, measured from /proc/PID/status before and after.

A failure before the release releases nothing, removes the image and lets PID run as before. The hibernation
is recorded (pid, start time, image and its identity) in a private directory (/run/cryo for root), so that
\`cryo wake\` refuses another process with the same pid, another image, or a replaced one.

options:
  --pid PID           the process (root or CAP_SYS_PTRACE)
  -o, --output IMAGE  the image file (not -: wake reads it again)
  --compress CODEC    zstd[:LEVEL] or lz4[:LEVEL] per chunk (the target stays stopped while it is encoded)
  --key-file FILE     encrypt with AES-256-GCM (or --key-env NAME); wake needs the same key
  --include, --exclude, --shared   region filters, as for \`cryo checkpoint\`
  --memory SIZE       buffers cryo may hold at once, whatever the process's size: BYTES, or with K, M or G
                      (default 64M, plus one chunk per codec worker; at least 4M)
  --json              print the result as JSON
  -q, --quiet         no progress bar

examples:
  cryo hibernate --pid 4242 -o /var/lib/app.cryo
  cryo hibernate --pid 4242 -o /var/lib/app.cryo --compress zstd:1 --key-file app.key`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      ...captureOptions,
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const pid = parsePid(values.pid);
    if (!values.output) throw new UsageError("-o IMAGE is required");
    if (values.output === "-") throw new UsageError("-o - is not possible: wake reads the image file again");
    const r = await hibernate(pid, values.output, {
      ...await captureFrom(values),
      progress: progressBar("hibernate", values.quiet || values.json),
      signal: ctx.signal,
    });
    if (values.json) {
      out(jsonDocument({ ...r, before: memoryJson(r.before), after: memoryJson(r.after) }));
      return 0;
    }
    out(
      `hibernated pid ${pid} -> ${
        printable(r.path)
      } (stopped; \`cryo wake --pid ${pid} IMAGE\` resumes it)\n` +
        `  freed     ${humanBytes(r.freedBytes)} resident (VmRSS ${humanBytes(r.before.rss)} -> ${
          humanBytes(r.after.rss)
        }; RssAnon ${humanBytes(r.before.rssAnon)} -> ${humanBytes(r.after.rssAnon)})\n` +
        `  data      ${humanBytes(r.dataBytes)} persisted, holes ${humanBytes(r.holeBytes)}; image ${
          humanBytes(r.imageBytes)
        }\n` +
        `  released  ${r.regionsReleased} regions in ${humanDuration(r.releaseMs)}\n` +
        `  frozen    ${humanDuration(r.stoppedMs)} (total ${humanDuration(r.totalMs)})`,
    );
    return 0;
  },
};

export const wakeCommand: Command = {
  name: "wake",
  summary: "bring a hibernated process back, eagerly or on demand (--lazy)",
  help: `cryo wake --pid PID [--lazy] IMAGE [options]

Checks that PID is the process hibernated into IMAGE (same pid and start time, same image, unchanged) and is
still stopped, verifies IMAGE (every checksum and record; a key means it must be encrypted), then:

- by default writes every page back, all or nothing (as \`cryo restore\` does: journaled, held by a stop that
  outlives cryo; a failure or Ctrl-C leaves PID hibernated), and resumes PID;
- with --lazy resumes PID at once: every page it touches is served from IMAGE by a fault server (a userfaultfd
  created inside PID) while the rest is copied in the background; the command ends when every page is back.
  Ctrl-C or SIGTERM finishes the loading eagerly before cryo exits. An encrypted image is refused with --lazy
  (wake it eagerly); a compressed one is decoded into a scratch file beside it first. If cryo is killed
  (SIGKILL) during a lazy wake, a thread that touches a page not yet loaded waits (PID keeps a copy of the
  userfaultfd) until wake is run again, which loads the rest: see docs/HIBERNATE.md.

options:
  --pid PID          the hibernated process
  --lazy             resume at once, load on demand and in the background
  --key-file FILE    the key of an encrypted image (or --key-env NAME)
  --memory SIZE      eager: buffers cryo may hold at once, whatever the image's size (default 64M; as restore)
  --json             print the result as JSON
  -q, --quiet        no progress bar

examples:
  cryo wake --pid 4242 /var/lib/app.cryo
  cryo wake --pid 4242 --lazy /var/lib/app.cryo`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      pid: { type: "string" },
      lazy: { type: "boolean" },
      ...keyOptions,
      ...memoryOption,
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    const pid = parsePid(values.pid);
    const image = onePositional(positionals, "IMAGE");
    ctx.onInterrupt = values.lazy
      ? "once the process runs, the rest of its pages are loaded eagerly before cryo exits; before that it stays hibernated"
      : "anything written is undone: the process stays hibernated";
    const progress = progressBar("wake", values.quiet || values.json);
    const r = await wake(pid, image, {
      lazy: values.lazy,
      key: await keyFrom(values),
      memoryBudget: parseMemory(values.memory),
      progress,
      signal: ctx.signal,
      onResumed: values.lazy && !values.json && !values.quiet
        ? () => {
          progress.done(); // erase the line: the note gets its own, the next redraw comes below it
          console.error(`cryo wake: pid ${pid} runs again; loading the rest in the background`);
        }
        : undefined,
    });
    if (values.json) {
      out(jsonDocument({ ...r, after: memoryJson(r.after) }));
      return 0;
    }
    const first = r.firstFaultMs > 0 ? ` (first after ${humanDuration(r.firstFaultMs)})` : "";
    const lazy = r.faults
      ? `\n  lazy      ${r.faults.faults} faults served${first}, ${
        humanBytes(r.backgroundBytes)
      } loaded in the ` +
        `background${r.finishedEagerly ? " (finished eagerly after an interrupt)" : ""}${
          r.resumed ? " (continued a lazy wake whose cryo had died)" : ""
        }`
      : "";
    out(
      `woke pid ${pid} from ${printable(r.path)}${r.lazy ? " (lazily)" : ""}\n` +
        `  memory    ${humanBytes(r.dataBytes)} of data, holes ${humanBytes(r.holeBytes)}; VmRSS now ${
          humanBytes(r.after.rss)
        }\n` +
        `  stopped   ${humanDuration(r.stoppedMs)} until it ran again (total ${humanDuration(r.totalMs)})` +
        lazy,
    );
    return 0;
  },
};

export const serveCommand: Command = {
  name: "serve",
  summary: "answer hibernate, wake and status requests on a Unix socket (JSON lines)",
  help: `cryo serve --socket PATH

Listens on a Unix socket created with mode 0600 (only this user, and root, can connect: connecting needs write
permission on the socket file; its directory must belong to this user or root and not be writable by group or
others). Each request is one JSON line and gets one reply line, {"ok":true,"result":…} or
{"ok":false,"error":"…"}:

  {"op":"hibernate","pid":4242,"image":"/var/lib/app.cryo"}         optional "compress":"zstd:1", "keyFile"
  {"op":"wake","pid":4242,"image":"/var/lib/app.cryo","lazy":true}  optional "keyFile"
  {"op":"status"}  or  {"op":"status","pid":4242}

Requests run one at a time (a lazy wake replies when every page is back); status is answered at once. Ctrl-C
or SIGTERM stops accepting, lets the running request finish (a lazy wake loads the rest eagerly) and removes
the socket.

examples:
  cryo serve --socket /run/cryo/cryo.sock
  echo '{"op":"status"}' | socat - UNIX-CONNECT:/run/cryo/cryo.sock`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, { socket: { type: "string" } });
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    if (!values.socket) throw new UsageError("--socket PATH is required");
    ctx.onInterrupt = "no new requests; the running one finishes (a lazy wake loads the rest eagerly)";
    await serve({
      socket: values.socket,
      signal: ctx.signal,
      onListening: () => console.error(`cryo serve: listening on ${printable(values.socket!)}`),
      onRequest: (req, reply) =>
        console.error(
          `cryo serve: ${printable(JSON.stringify(req) ?? "?")} -> ${
            reply.ok ? "ok" : `error: ${printable(reply.error)}`
          }`,
        ),
    });
    return 0;
  },
};

/** A process's resident memory under `--json`: byte counts in keys ending in `Bytes`. */
function memoryJson(m: ProcessMemory) {
  return { rssBytes: m.rss, rssAnonBytes: m.rssAnon, rssFileBytes: m.rssFile, rssShmemBytes: m.rssShmem };
}
