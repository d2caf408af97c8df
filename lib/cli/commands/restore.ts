/**
 * `cryo restore --pid P IMAGE`.
 *
 * @module
 */

import { restore } from "../../ops/restore.ts";
import { memoryOption, onePositional, parse, parseMemory, parsePid } from "../args.ts";
import { humanBytes, humanDuration, printable } from "../format.ts";
import { jsonDocument } from "../json.ts";
import { type Command, out } from "../main.ts";
import { progressBar } from "../progress.ts";
import { keyFrom, keyOptions } from "../secure.ts";

export const restoreCommand: Command = {
  name: "restore",
  summary: "roll a live process back to an image",
  help: `cryo restore --pid PID IMAGE [options]

Verifies IMAGE completely (every record decoded), freezes PID, checks that PID is the process the image was
taken from (pid, start time, boot, executable; --force to restore into another) and that it still has every
thread of the checkpoint, makes its layout follow the image (regions that vanished are mapped again, regions
mapped since are unmapped, protections and the program break put back; a shared or device mapping that is gone
is refused, naming it), puts each thread's registers back, writes the memory back (holes become zero), ends
the threads born since the checkpoint, and thaws PID. --dry-run lists every layout change it would make.

All or nothing: while it writes, PID is held by a stop that outlives cryo, and every byte and register set
overwritten is saved for the undo: the old pages of each large private region are moved aside whole (page
tables, no copy; --journal-every-page to read and save them instead), the rest is saved in an undo journal
(an unlinked 0600 file in $CRYO_JOURNAL_DIR, else /dev/shm, then $TMPDIR or /var/tmp);
any failure, Ctrl-C or SIGTERM puts PID back exactly as it was. If cryo is killed (SIGKILL) while writing,
PID stays stopped (state T) and \`cryo restore --recover --pid PID\` (or the same restore again) finishes it
and resumes PID. A key means the image must be encrypted: a plaintext image is refused.

IMAGE may be - to read the image from stdin (e.g. piped from \`cryo checkpoint -o -\` on another host): PID
is frozen only once the image's header has arrived (a slow pipe does not keep it stopped; it says so on
stderr), the layout is checked from that header before the first chunk, and each chunk is verified (and, when encrypted,
authenticated) before it is written; a stream that turns out damaged part-way is undone from the journal.

options:
  --pid PID          the process to roll back (root or CAP_SYS_PTRACE)
  --key-file FILE    the key of an encrypted image (or --key-env NAME)
  --no-registers     restore memory only, not thread registers. Unsafe unless every thread is where it was at
                     the checkpoint (or the image holds none of their stacks): a thread resumed with today's
                     registers on a stack rolled back to then may crash
  --dry-run          verify and check, report what would be written, write nothing
  --no-track         write the whole image back even when the process holds the write tracking armed at
                     it (by default such a rollback writes back only the pages written since, and releases
                     the pages populated since: \`checkpoint --track\`)
  --journal-every-page  read every page of the target before overwriting it and save those that differ
                     (by default the old pages of regions of 1 MiB or more are moved aside whole instead,
                     which is faster unless few pages changed)
  --allow-thread-changes  go ahead although threads of the checkpoint have ended since and cannot be created
                     again (refused by default: memory rolled back would still count on them)
  --keep-born-threads  refuse threads started since the checkpoint instead of ending them (by default they
                     are ended, an injected exit on each, as the restore's last step)
  --force            restore into a process that is not the image's (e.g. a fresh process of the same
                     program): its memory and registers become the image's; its descriptors, sockets and
                     other kernel objects stay its own
  --recover          finish a restore that a killed cryo left (PID stopped); IMAGE may be omitted
  --memory SIZE      buffers cryo may hold at once, whatever the image's size: BYTES, or with K, M or G
                     (default 64M, plus one chunk per codec worker; at least 4M)
  --json             print the result as JSON
  -q, --quiet        no progress bar

examples:
  cryo restore --pid 4242 app.cryo
  cryo restore --pid 4242 --dry-run app.cryo
  cryo restore --pid 4242 --key-env APP_KEY app.cryo
  cryo restore --recover --pid 4242
  ssh host cryo checkpoint --pid 77 -o - | cryo restore --pid 4242 -`,
  async run(ctx) {
    const { values, positionals } = parse(ctx.args, {
      pid: { type: "string" },
      ...keyOptions,
      "no-registers": { type: "boolean" },
      "allow-thread-changes": { type: "boolean" },
      force: { type: "boolean" },
      "keep-born-threads": { type: "boolean" },
      recover: { type: "boolean" },
      "dry-run": { type: "boolean" },
      ...memoryOption,
      "no-track": { type: "boolean" },
      "journal-every-page": { type: "boolean" },
      json: { type: "boolean" },
      quiet: { type: "boolean", short: "q" },
    });
    const pid = parsePid(values.pid);
    const image = values.recover && positionals.length === 0 ? "" : onePositional(positionals, "IMAGE");
    if (image === "-" && !values.quiet) {
      console.error(
        `cryo restore: reading the image from stdin; pid ${pid} is frozen once its header has arrived`,
      );
    }
    const result = await restore(pid, image, {
      key: await keyFrom(values),
      registers: !values["no-registers"],
      allowThreadChanges: values["allow-thread-changes"],
      force: values.force,
      endBornThreads: !values["keep-born-threads"],
      recover: values.recover,
      dryRun: values["dry-run"],
      memoryBudget: parseMemory(values.memory),
      tracking: values["no-track"] ? false : "auto",
      moveAside: !values["journal-every-page"],
      progress: progressBar("restore", values.quiet || values.json),
      signal: ctx.signal,
    });
    if (values.json) {
      out(jsonDocument(result));
      return 0;
    }
    const verb = result.dryRun ? "would write" : "wrote";
    out(
      `${result.dryRun ? "dry run: " : ""}restore of pid ${pid} from ${result.path}` +
        (result.recovered ? " (finished an interrupted restore; the process was resumed)" : "") + "\n" +
        `  regions   ${result.regions} checked, ${
          result.layoutChanges.length
            ? `${result.layoutChanges.length} layout change(s)${result.dryRun ? " to make" : " made"}:\n` +
              result.layoutChanges.map((c) => `              ${printable(c)}\n`).join("")
            : "layout matches\n"
        }` +
        (result.identity.length ? `  identity  forced: ${printable(result.identity.join("; "))}\n` : "") +
        (result.descriptorChanges.length
          ? `  fds       ${result.descriptorChanges.length} descriptor(s)${
            result.dryRun ? " to open again" : " opened again"
          }:\n` +
            result.descriptorChanges.map((c) => `              ${printable(c)}\n`).join("")
          : "") +
        (result.offsetChanges.length
          ? `  offsets   ${result.offsetChanges.length} file offset(s)${
            result.dryRun ? " to put back" : " put back"
          }:\n` +
            result.offsetChanges.map((c) => `              ${printable(c)}\n`).join("")
          : "") +
        `  memory    ${verb} ${humanBytes(result.dataBytes)} of data, zeroed holes of ${
          humanBytes(result.holeBytes)
        }${
          result.asideBytes
            ? `; the old pages of ${humanBytes(result.asideBytes)} moved aside for the undo`
            : ""
        }\n` +
        `  threads   ${result.dryRun ? "-" : `${result.threadsRestored} registers restored`}` +
        (result.threadsGone.length ? `, ${result.threadsGone.length} recorded threads gone` : "") +
        (result.threadsBorn.length ? `, ${result.threadsBorn.length} born since` : "") +
        (result.threadsRecreated.length ? `, ${result.threadsRecreated.length} created again` : "") +
        (result.threadsEnded.length ? `, ${result.threadsEnded.length} ended` : "") + "\n" +
        `  stopped   ${humanDuration(result.stoppedMs)} (total ${humanDuration(result.totalMs)})` +
        (result.tracking?.used
          ? `\n  tracking  wrote back only what was written since: ${
            humanBytes(result.tracking.writtenBytes ?? 0)
          } written, ${humanBytes(result.tracking.releasedBytes ?? 0)} released`
          : result.tracking?.reason
          ? `\n  tracking  full rollback: ${printable(result.tracking.reason)}`
          : ""),
    );
    return 0;
  },
};
