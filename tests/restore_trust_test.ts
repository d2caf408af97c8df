import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { verify } from "../lib/ops/inspect.ts";
import { KeyError, LayoutMismatchError, SystemError } from "../lib/errors.ts";
import { checksum } from "../lib/image/checksum.ts";
import { RestoreJournal } from "../lib/kernel/journal.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { RemoteWriter } from "../lib/image/remote.ts";
import { Sealer } from "../lib/codecs/seal.ts";
import { SealKey } from "../lib/codecs/keys.ts";
import { markerDir } from "../lib/ops/recovery.ts";
import { abortAfterWriting } from "./_abort.ts";

const cli = new URL("../cli.ts", import.meta.url).pathname;
const MiB = 1 << 20;

/** The one-letter state of `pid` (R, S, T, t …). */
function state(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).match(/^State:\s+(\S)/m)?.[1] ?? "?";
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test("restore() with a key refuses a plaintext image put in place of the sealed one (no downgrade)", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const key = await SealKey.fromBytes(crypto.getRandomValues(new Uint8Array(32)));
    const a = await target.map(4 * MiB);
    await target.fill(a, 4 * MiB, "random", 1);
    await checkpoint(target.pid, `${dir}/sealed.cryo`, { fsync: false, sealer: await Sealer.create(key) });
    await target.fill(a, 4 * MiB, "random", 2);
    await checkpoint(target.pid, `${dir}/plain.cryo`, { fsync: false }); // the attacker's image
    await Deno.rename(`${dir}/plain.cryo`, `${dir}/sealed.cryo`);
    await target.fill(a, 4 * MiB, "random", 3);
    const now = await target.sum(a, 4 * MiB);
    await assertRejects(() => restore(target.pid, `${dir}/sealed.cryo`, { key }), KeyError, "not encrypted");
    await assertRejects(
      () => restore(target.pid, `${dir}/sealed.cryo`, { key, dryRun: true }),
      KeyError,
      "not encrypted",
    );
    await assertRejects(() => verify(`${dir}/sealed.cryo`, { key }), KeyError, "not encrypted");
    assertEquals(await target.sum(a, 4 * MiB), now, "nothing was written");
    assertEquals(state(target.pid) === "T" || state(target.pid) === "t", false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

for (const moveAside of [true, false]) {
  const how = moveAside ? "its old pages moved aside" : "every page journaled";
  Deno.test(`restore() that is aborted after writing puts memory and registers back exactly as they were (${how})`, async () => {
    const dir = await Deno.makeTempDir();
    await using target = Target.start();
    try {
      const a = await target.map(32 * MiB);
      await target.fill(a, 32 * MiB, "random", 1);
      await target.fill(a + BigInt(8 * MiB), 4 * MiB, "zero");
      await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
      await target.fill(a, 32 * MiB, "text", 2); // everything differs now, the zero MiBs included
      const before = await target.sum(a, 32 * MiB);
      const maps = Deno.readTextFileSync(`/proc/${target.pid}/maps`);
      await assertRejects(
        () => restore(target.pid, `${dir}/a.cryo`, { ...abortAfterWriting(), moveAside }),
        Error,
        "interrupted in the test",
      );
      assertEquals(await target.sum(a, 32 * MiB), before, "every written byte was put back");
      assertEquals(Deno.readTextFileSync(`/proc/${target.pid}/maps`), maps, "and the map is as it was");
      assertEquals(await target.cmd("pid"), String(target.pid), "registers back: it runs on");
      assertEquals(state(target.pid) === "T", false);
      const r = await restore(target.pid, `${dir}/a.cryo`, { moveAside }); // and the real restore still works
      if (moveAside) assert(r.asideBytes >= 32 * MiB && r.journalBytes < MiB, JSON.stringify(r));
      else assert(r.journalBytes >= 32 * MiB && r.asideBytes === 0, `journaled ${r.journalBytes}`);
      assertEquals(Deno.readTextFileSync(`/proc/${target.pid}/maps`), maps, "nothing left mapped aside");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("restore() ends the threads born since the checkpoint, after everything else is written", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(MiB);
    await target.fill(a, MiB, "random", 1);
    const want = await target.sum(a, MiB);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const before = new Set([...Deno.readDirSync(`/proc/${target.pid}/task`)].map((e) => Number(e.name)));
    await target.fill(a, MiB, "random", 2);
    await target.cmd("threads 2"); // born since the checkpoint
    const born = [...Deno.readDirSync(`/proc/${target.pid}/task`)].map((e) => Number(e.name)).filter((t) =>
      !before.has(t)
    );
    assertEquals(born.length, 2);
    const dry = await restore(target.pid, `${dir}/a.cryo`, { dryRun: true });
    assertEquals(dry.threadsBorn.sort(), born.sort(), "a dry run names them");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.threadsEnded.sort(), born.sort());
    assertEquals(await target.sum(a, MiB), want);
    const now = new Set([...Deno.readDirSync(`/proc/${target.pid}/task`)].map((e) => Number(e.name)));
    assert(born.every((t) => !now.has(t)), "they are gone");
    assertEquals(await target.cmd("pid"), String(target.pid), "the rest runs on");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function bounded<T>(p: Promise<T>, what: string, ms = 60_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Start `cryo restore --pid P -` with its stdin open, feed it `head` bytes, and return the running child. */
function streamRestore(pid: number): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "restore", "--pid", String(pid), "-q", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

async function halfRestore(target: Target, image: string): Promise<Deno.ChildProcess> {
  const bytes = await Deno.readFile(image);
  const child = streamRestore(target.pid);
  const w = child.stdin.getWriter();
  await w.write(bytes.subarray(0, Math.floor(bytes.length * 0.6))); // the write phase begins, then waits
  w.releaseLock();
  const marker = `${markerDir()}/restore-${target.pid}.json`;
  await until("the restore's write phase", () => {
    try {
      Deno.statSync(marker);
      return true;
    } catch {
      return false;
    }
  });
  return child;
}

Deno.test("cryo restore - interrupted by SIGTERM part-way puts the target back and thaws it", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  let child: Deno.ChildProcess | undefined;
  try {
    const a = await target.map(16 * MiB);
    await target.fill(a, 16 * MiB, "random", 1);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.fill(a, 16 * MiB, "random", 2);
    const before = await target.sum(a, 16 * MiB);
    child = await halfRestore(target, `${dir}/a.cryo`);
    Deno.kill(child.pid, "SIGTERM");
    const out = await bounded(child.output(), "cryo to exit after SIGTERM");
    assertEquals(out.code, 130, new TextDecoder().decode(out.stderr));
    assertEquals(await target.sum(a, 16 * MiB), before, "the chunks written before the signal were undone");
    assertEquals(state(target.pid) === "T", false);
  } finally {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cryo restore killed by SIGKILL part-way leaves the target stopped; the restore run again finishes it", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  let child: Deno.ChildProcess | undefined;
  try {
    const a = await target.map(16 * MiB);
    await target.fill(a, 16 * MiB, "random", 1);
    const want = await target.sum(a, 16 * MiB);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.fill(a, 16 * MiB, "random", 2);
    child = await halfRestore(target, `${dir}/a.cryo`);
    child.kill("SIGKILL");
    await child.status;
    await until("group stop", () => state(target.pid) === "T", 5000);
    const again = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "restore", "--recover", "--pid", String(target.pid), "-q", `${dir}/a.cryo`],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    // The killed restore read a stream: --recover names the image to finish it from.
    assertEquals(again.code, 11);
    assert(new TextDecoder().decode(again.stderr).includes("interrupted restore was from -"));
    const rerun = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "restore", "--pid", String(target.pid), "-q", `${dir}/a.cryo`],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(rerun.stdout) + new TextDecoder().decode(rerun.stderr);
    assertEquals(rerun.code, 0, text);
    assert(text.includes("finished an interrupted restore"), text);
    await until("the target to run again", () => state(target.pid) !== "T", 5000);
    assertEquals(await target.sum(a, 16 * MiB), want, "the restore was finished");
  } finally {
    if (child) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      await child.stdin.abort().catch(() => {});
    }
    await Deno.remove(dir, { recursive: true });
  }
});

/** Change a section's bytes of an image file in place (same length) and recompute every checksum over it. */
async function rewriteSection(path: string, name: string, edit: (bytes: Uint8Array) => void): Promise<void> {
  const b = await Deno.readFile(path);
  const v = new DataView(b.buffer);
  const f = b.length - 128;
  const tableAt = Number(v.getBigUint64(f + 72, true));
  const tableLength = Number(v.getBigUint64(f + 80, true));
  const count = v.getUint32(tableAt, true);
  let at = tableAt + 8;
  for (let i = 0; i < count; i++) {
    const offset = Number(v.getBigUint64(at, true));
    const length = Number(v.getBigUint64(at + 8, true));
    const nameLength = v.getUint32(at + 24, true);
    const n = new TextDecoder().decode(b.subarray(at + 32, at + 32 + nameLength));
    if (n === name) {
      edit(b.subarray(offset, offset + length));
      v.setBigUint64(at + 16, checksum(b.subarray(offset, offset + length)), true);
    }
    at += 32 + ((nameLength + 7) & ~7);
  }
  v.setBigUint64(f + 88, checksum(b.subarray(tableAt, tableAt + tableLength)), true);
  v.setBigUint64(f + 120, checksum(b.subarray(f, f + 120)), true);
  await Deno.writeFile(path, b);
}

Deno.test("restore() whose threads section the kernel refuses writes no memory and puts registers back", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    await target.cmd("threads 1");
    const a = await target.map(8 * MiB);
    await target.fill(a, 8 * MiB, "random", 1);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    // The last thread's cs becomes selector 0: its checksums are good, the kernel refuses it (EIO).
    await rewriteSection(`${dir}/a.cryo`, "threads", (t) => {
      const v = new DataView(t.buffer, t.byteOffset, t.byteLength);
      const count = v.getUint32(12, true);
      let at = 16;
      for (let i = 0; i < count; i++) {
        const general = v.getUint32(at + 4, true), vector = v.getUint32(at + 8, true);
        if (i === count - 1) v.setBigUint64(at + 48 + 17 * 8, 0n, true); // cs
        at += 48 + ((general + 7) & ~7) + ((vector + 7) & ~7) + (v.getUint8(at + 14) ? 64 : 0); // kernel state
      }
    });
    assert((await verify(`${dir}/a.cryo`)).ok, "the image itself is sound");
    await target.fill(a, 8 * MiB, "random", 2);
    const before = await target.sum(a, 8 * MiB);
    await assertRejects(() => restore(target.pid, `${dir}/a.cryo`), SystemError);
    assertEquals(await target.sum(a, 8 * MiB), before, "no memory was written");
    assertEquals(await target.cmd("pid"), String(target.pid), "the first thread's registers were put back");
    const later = await target.cmd("counters");
    let moved = false; // the counting thread runs on (polled, bounded: a loaded machine may not run it at once)
    for (let i = 0; i < 500 && !moved; i++) {
      await new Promise((r) => setTimeout(r, 10));
      moved = (await target.cmd("counters")) !== later;
    }
    assert(moved, "the counting thread runs on");
    assertEquals(state(target.pid) === "T", false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() into a target that keeps starting short-lived threads is whole or refused, and it lives", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(4 * MiB);
    await target.fill(a, 4 * MiB, "random", 1);
    const want = await target.sum(a, 4 * MiB);
    const ticks = BigInt(await target.cmd("spawnloop"));
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const seen = { refused: 0, restored: 0 };
    for (let round = 0; round < 8; round++) {
      await target.fill(a, 4 * MiB, "random", 2 + round);
      const now = await target.sum(a, 4 * MiB);
      try {
        await restore(target.pid, `${dir}/a.cryo`);
        // Threads born since were ended; the checkpoint's threads were all still alive: a whole rollback.
        assertEquals(await target.sum(a, 4 * MiB), want);
        seen.restored++;
      } catch (e) {
        assert(e instanceof LayoutMismatchError, String(e)); // a thread of the checkpoint ended, or its stack
        assertEquals(await target.sum(a, 4 * MiB), now, "nothing was written");
        seen.refused++;
      }
    }
    assertEquals(seen.refused + seen.restored, 8);
    const before = await target.cmd(`peek 0x${(ticks + 8n).toString(16)}`);
    await new Promise((r) => setTimeout(r, 50));
    assert(await target.cmd(`peek 0x${(ticks + 8n).toString(16)}`) !== before, "it still starts threads");
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() journals and writes only the pages that changed since the checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(8 * MiB);
    await target.fill(a, 8 * MiB, "random", 1);
    const want = await target.sum(a, 8 * MiB);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.fill(a, 8 * MiB, "stride:4", 7); // every 4th page changes: 512 pages
    assert(await target.sum(a, 8 * MiB) !== want);
    const r = await restore(target.pid, `${dir}/a.cryo`, { moveAside: false });
    assertEquals(await target.sum(a, 8 * MiB), want);
    // The changed pages, plus the few the target's own stack and stdio buffers changed while it answered.
    const extra = (n: number) => n - 512 * 4096;
    assert(extra(r.journalBytes) >= 0 && extra(r.journalBytes) < 64 * 4096, `journaled ${r.journalBytes}`);
    const again = await restore(target.pid, `${dir}/a.cryo`, { moveAside: false });
    assert(again.journalBytes < 64 * 4096, `nothing more changed, yet ${again.journalBytes} bytes journaled`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() over pages that are all zero stores nothing for them, and an abort makes them zero again", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(16 * MiB);
    await target.fill(a, 16 * MiB, "random", 1);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.fill(a, 16 * MiB, "zero"); // as after a release: every page now reads zero
    const zero = await target.sum(a, 16 * MiB);
    await assertRejects(
      () => restore(target.pid, `${dir}/a.cryo`, abortAfterWriting()),
      Error,
      "interrupted in the test",
    );
    assertEquals(await target.sum(a, 16 * MiB), zero, "the zero pages are zero again");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assert(r.journalBytes < MiB, `${r.journalBytes} bytes stored for 16 MiB of zero pages`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("RestoreJournal goes on in the next directory when the first fills up, and undoes from both", async () => {
  const small = await Deno.makeTempDir();
  const spill = await Deno.makeTempDir();
  await using target = Target.start();
  const mount = await new Deno.Command("mount", { args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small] })
    .output();
  assert(mount.success, `mount a 1 MiB tmpfs: ${new TextDecoder().decode(mount.stderr)}`);
  try {
    const a = await target.map(8 * MiB);
    await target.fill(a, 8 * MiB, "random", 1);
    const before = await target.sum(a, 8 * MiB);
    using journal = new RestoreJournal(target.pid, [small, spill]);
    using frozen = freeze(target.pid, { registers: false });
    journal.save(a, 8 * MiB); // 8 MiB: the 1 MiB tmpfs fills, the rest goes to the second directory
    assertEquals(journal.bytes, 8 * MiB);
    using remote = new RemoteWriter(target.pid);
    remote.write(a, new Uint8Array(8 * MiB).fill(0x5a));
    journal.undo((tid, regs) => frozen.setRegisters(tid, regs));
    frozen.thaw();
    assertEquals(await target.sum(a, 8 * MiB), before);
  } finally {
    await new Deno.Command("umount", { args: [small] }).output();
    await Deno.remove(small, { recursive: true });
    await Deno.remove(spill, { recursive: true });
  }
});
