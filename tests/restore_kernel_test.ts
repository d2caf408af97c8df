import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { abortAfterWriting } from "./_abort.ts";
import { Target } from "./_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { Sealer } from "../lib/codecs/seal.ts";
import { SealKey } from "../lib/codecs/keys.ts";
import { type KernelState, type OpenDescriptor, planOffsets } from "../lib/kernel/kernel_state.ts";
import { planDescriptors } from "../lib/kernel/descriptors_fix.ts";

const tids = (pid: number) => [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name));
const fdPos = (pid: number, fd: number) =>
  Number(/^pos:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd}`))![1]);

const fdOpen = (pid: number, fd: number) => {
  try {
    Deno.readLinkSync(`/proc/${pid}/fd/${fd}`);
    return true;
  } catch {
    return false;
  }
};
const fdFlags = (pid: number, fd: number) =>
  parseInt(/^flags:\s+([0-7]+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd}`))![1], 8);

async function dataFile(dir: string): Promise<string> {
  const path = `${dir}/data.bin`;
  const bytes = new Uint8Array(64 << 10);
  for (let i = 0; i < bytes.length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  await Deno.writeFile(path, bytes);
  return path;
}

/**
 * A file opened in `target` and a copy of it (`dup`) read from, checkpointed to `dir/a.cryo`, the copy read on
 * and closed since.
 *
 * @returns The descriptors and what the copy read after the checkpoint.
 */
async function copyClosedSince(
  target: Target,
  dir: string,
): Promise<{ fd: number; copy: number; next: string }> {
  const fd = Number(await target.cmd(`fopen ${await dataFile(dir)}`));
  const copy = Number(await target.cmd(`fdup ${fd}`));
  await target.cmd(`fread ${copy} 4096`);
  await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
  const next = await target.cmd(`fread ${copy} 4096`);
  await target.cmd(`fclose ${copy}`);
  return { fd, copy, next };
}

Deno.test("restore() puts back the offset of a file the target still has open (lseek), listed by a dry run", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const fd = Number(await target.cmd(`fopen ${await dataFile(dir)}`));
    await target.cmd(`fread ${fd} 4096`);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    const next = await target.cmd(`fread ${fd} 4096`); // what the program reads next after the checkpoint
    assertEquals(next.split(" ")[0], "8192");
    await target.cmd(`fread ${fd} 20000`);
    assertEquals(fdPos(target.pid, fd), 28192);
    const dry = await restore(target.pid, `${dir}/a.cryo`, { dryRun: true });
    assertEquals(dry.offsetChanges, [`fd ${fd} (${dir}/data.bin): offset 28192 -> 4096 (lseek)`]);
    assertEquals(fdPos(target.pid, fd), 28192, "a dry run changes nothing");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.offsetChanges.length, 1);
    assertEquals(fdPos(target.pid, fd), 4096);
    assertEquals(await target.cmd(`fread ${fd} 4096`), next, "it reads the same bytes again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() opens again a copy of a descriptor closed since (dup3 of the one it shared its file with), listed by a dry run", async () => {
  // Deno reads its standard input through a copy of descriptor 0 that it closes after each read: a rollback
  // caught between two reads left a thread reading a closed descriptor (EBADF).
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const { fd, copy, next } = await copyClosedSince(target, dir);
    const link = Deno.readLinkSync(`/proc/${target.pid}/fd/${fd}`);
    const dry = await restore(target.pid, `${dir}/a.cryo`, { dryRun: true });
    assertEquals(dry.descriptorChanges, [
      `fd ${copy} (${link}): closed since, opened again as a copy of fd ${fd} (dup3)`,
    ]);
    assert(!fdOpen(target.pid, copy), "a dry run changes nothing");
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.descriptorChanges.length, 1);
    assertEquals(r.offsetChanges.length, 1, "the offset is put back through the partner");
    assertEquals(Deno.readLinkSync(`/proc/${target.pid}/fd/${copy}`), link);
    assert(fdFlags(target.pid, copy) & 0o2000000, "close-on-exec, as it was");
    assertEquals(await target.cmd(`fread ${copy} 4096`), next, "the copy reads on from the same offset");
    assertEquals(fdPos(target.pid, fd), 8192, "and shares it with its partner again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() puts a copy of a descriptor back over another file that took its number since, and an abort puts that file back", async () => {
  // Deno's update check opens sockets at start-up: one that took the number of a closed copy of descriptor 0 left
  // the rolled-back reader waiting on the socket for ever.
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const { fd, copy, next } = await copyClosedSince(target, dir);
    await Deno.writeTextFile(`${dir}/other`, "other");
    assertEquals(Number(await target.cmd(`fopen ${dir}/other`)), copy, "the other file takes the number");
    const link = Deno.readLinkSync(`/proc/${target.pid}/fd/${fd}`);
    const others = () =>
      [...Deno.readDirSync(`/proc/${target.pid}/fd`)].filter((e) =>
        Deno.readLinkSync(`/proc/${target.pid}/fd/${e.name}`) === `${dir}/other`
      ).map((e) => Number(e.name));
    const dry = await restore(target.pid, `${dir}/a.cryo`, { dryRun: true });
    assertEquals(dry.descriptorChanges, [
      `fd ${copy} (${link}): ${dir}/other there now, replaced by a copy of fd ${fd} (dup3)`,
    ]);
    await assertRejects(
      () => restore(target.pid, `${dir}/a.cryo`, abortAfterWriting()),
      Error,
      "interrupted in the test",
    );
    assertEquals(
      others(),
      [copy],
      "the abort put the other file back at its number, and kept no second copy",
    );
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.descriptorChanges.length, 1);
    assertEquals(Deno.readLinkSync(`/proc/${target.pid}/fd/${copy}`), link);
    assertEquals(others(), [], "the other file is closed: nothing under the rolled-back memory names it");
    assertEquals(await target.cmd(`fread ${copy} 4096`), next, "the copy reads on from the same offset");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("planDescriptors() opens again only a copy whose partner is still the same open file", () => {
  const pipe = { target: "pipe:[7]", kind: "pipe" as const, flags: 0 };
  const recorded: KernelState = {
    descriptors: [{ fd: 0, ...pipe }, { fd: 33, ...pipe, flags: 0o2000000, shares: 0 }, { fd: 40, ...pipe }],
    children: [],
  };
  const at = (...ds: OpenDescriptor[]): KernelState => ({ descriptors: ds, children: [] });
  assertEquals(planDescriptors(recorded, at({ fd: 0, ...pipe })), [
    { fd: 33, from: 0, target: "pipe:[7]", cloexec: true },
  ]);
  assertEquals(
    planDescriptors(recorded, at({ fd: 0, ...pipe }, { fd: 33, ...pipe })),
    [],
    "open now on the same pipe: left alone",
  );
  assertEquals(
    planDescriptors(
      recorded,
      at({ fd: 0, ...pipe }, { fd: 33, target: "socket:[9]", kind: "socket", flags: 2 }),
    ),
    [{
      fd: 33,
      from: 0,
      target: "pipe:[7]",
      cloexec: true,
      displaced: { target: "socket:[9]", cloexec: false },
    }],
    "another object at its number: replaced",
  );
  assertEquals(
    planDescriptors(
      recorded,
      at({ fd: 0, ...pipe }, { fd: 33, target: "anon_inode:[userfaultfd]", kind: "other" }),
    ),
    [],
    "a userfaultfd is never replaced",
  );
  assertEquals(planDescriptors(recorded, at({ fd: 0, ...pipe, target: "pipe:[8]" })), [], "another pipe now");
  assertEquals(
    planDescriptors(recorded, at({ fd: 0, ...pipe, flags: 0o4000 })),
    [],
    "other status flags now",
  );
  assertEquals(
    planDescriptors(recorded, at({ fd: 0, ...pipe, flags: 0o2000000 })).length,
    1,
    "cloexec aside",
  );
  assertEquals(planDescriptors(recorded, at()), [], "no partner left");
  assertEquals(
    planDescriptors(
      { descriptors: [{ fd: 0, ...pipe }, { fd: 33, ...pipe }], children: [] },
      at({ fd: 0, ...pipe }),
    ),
    [],
    "the same pipe, but not a copy of the same open file",
  );
});

Deno.test("planOffsets() leaves a descriptor alone when its file or open flags changed", () => {
  const file = { fd: 3, target: "/a", kind: "file" as const, device: 1, inode: 2, flags: 0o100000 };
  const recorded: KernelState = { descriptors: [{ ...file, offset: 10 }], children: [] };
  const at = (d: Partial<typeof file>): KernelState => ({
    descriptors: [{ ...file, offset: 99, ...d }],
    children: [],
  });
  assertEquals(planOffsets(recorded, at({})), [{ fd: 3, path: "/a", from: 99, to: 10 }]);
  assertEquals(planOffsets(recorded, at({ inode: 5 })), []);
  assertEquals(planOffsets(recorded, at({ flags: 0o102000 })), []);
  assertEquals(planOffsets(recorded, at({ fd: 4 })), []);
  assertEquals(planOffsets(recorded, { descriptors: [{ ...file, offset: 10 }], children: [] }), []);
});

async function streamedRestore(pid: number, image: string): Promise<Record<string, unknown>> {
  const url = JSON.stringify(new URL("../lib/ops/restore_stream.ts", import.meta.url).href);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "--ext=ts",
      `import { restoreStream } from ${url};
       console.log(JSON.stringify(await restoreStream(Number(Deno.args[0]), "-")));`,
      String(pid),
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const w = child.stdin.getWriter();
    await w.write(await Deno.readFile(image));
    await w.close();
    const res = await child.output();
    assert(res.success, new TextDecoder().decode(res.stderr));
    return JSON.parse(new TextDecoder().decode(res.stdout));
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
  }
}

for (const mode of ["stdin", "encrypted file"] as const) {
  Deno.test(`restoreStream() (${mode}) creates ended threads again, ends born ones, fixes the layout, descriptors and offsets`, async () => {
    const dir = await Deno.makeTempDir();
    await using target = Target.start();
    try {
      const key = await SealKey.fromBytes(new Uint8Array(32).fill(7));
      const fd = Number(await target.cmd(`fopen ${await dataFile(dir)}`));
      const copy = Number(await target.cmd(`fdup ${fd}`));
      const a = await target.map(1 << 20);
      await target.fill(a, 1 << 20, "random", 3);
      const want = await target.sum(a, 1 << 20);
      const idler = Number(await target.cmd("idler"));
      const report = await target.cmd("idlerreport");
      const then = tids(target.pid).sort();
      await checkpoint(target.pid, `${dir}/a.cryo`, {
        fsync: false,
        altStacks: true,
        sealer: mode === "stdin" ? undefined : await Sealer.create(key),
      });
      await target.cmd("idlerexit");
      await target.cmd("threads 1"); // born since
      await target.cmd(`unmap 0x${a.toString(16)} ${1 << 20}`); // vanished since
      await target.cmd(`fread ${fd} 9000`);
      await target.cmd(`fclose ${copy}`); // closed since
      const r = mode === "stdin"
        ? await streamedRestore(target.pid, `${dir}/a.cryo`)
        : await restore(target.pid, `${dir}/a.cryo`, { key }) as unknown as Record<string, unknown>;
      assertEquals(r.threadsRecreated, [idler]);
      assertEquals((r.threadsEnded as number[]).length, 1);
      assert((r.layoutChanges as string[]).length > 0, JSON.stringify(r));
      assertEquals((r.offsetChanges as string[]).length, 1);
      assertEquals((r.descriptorChanges as string[]).length, 1, JSON.stringify(r));
      assert(fdOpen(target.pid, copy), "the copy is open again");
      assertEquals(tids(target.pid).sort(), then);
      assertEquals(await target.sum(a, 1 << 20), want);
      assertEquals(fdPos(target.pid, fd), 0);
      assertEquals(await target.cmd("idlerreport"), report);
      await target.cmd("idlerexit");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
