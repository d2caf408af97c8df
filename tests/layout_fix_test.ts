import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Target } from "./_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { IdentityMismatchError } from "../lib/errors.ts";
import { describeChange, planLayout } from "../lib/kernel/layout_fix.ts";
import type { RecordedRegion } from "../lib/kernel/layout_section.ts";
import { identityDifferences, processIdentity } from "../lib/kernel/identity.ts";
import { parsePerms, type Region, type RegionKind } from "../lib/kernel/region.ts";
import type { Progress } from "../lib/ops/progress.ts";

const MiB = 1 << 20;
const hex = (n: bigint) => `0x${n.toString(16)}`;

function region(start: number, end: number, perms: string, path = "", kind?: RegionKind, offset = 0): Region {
  return {
    start: BigInt(start) << 12n,
    end: BigInt(end) << 12n,
    perms: parsePerms(perms),
    offset: BigInt(offset) << 12n,
    device: path.startsWith("/") ? "08:01" : "00:00",
    inode: path.startsWith("/") ? 77n : 0n,
    path,
    kind: kind ?? (path === "" ? "anonymous" : path.startsWith("/") ? "file" : "special"),
  };
}

const recordedOf = (rs: Region[]): RecordedRegion[] =>
  rs.map((r) => ({ start: r.start, end: r.end, perms: r.perms, kind: r.kind }));

Deno.test("planLayout() maps what vanished, unmaps what was born, puts protection and the break back", () => {
  const heapThen = region(0x100, 0x180, "rw-p", "[heap]", "heap");
  const image = [
    heapThen,
    region(0x1000, 0x1010, "rw-p"), // vanishes
    region(0x2000, 0x2010, "rw-p", "/lib/x.so", "file", 3), // vanishes: a private file mapping
    region(0x3000, 0x3010, "rw-p"), // becomes read-only
  ];
  const then = [...image, region(0x5000, 0x5004, "---p"), region(0x7ff0, 0x7ff1, "r-xp", "[vdso]", "vdso")];
  const now = [
    region(0x100, 0x140, "rw-p", "[heap]", "heap"), // trimmed
    region(0x1008, 0x1010, "rw-p"), // half left
    region(0x3000, 0x3010, "r--p"),
    region(0x4000, 0x4020, "rw-p"), // born since
    region(0x5000, 0x5004, "rw-p"), // a reservation made accessible
    region(0x6000, 0x6010, "rw-p"), // born since, but a live thread's stack
    region(0x7ff0, 0x7ff1, "r-xp", "[vdso]", "vdso"),
  ];
  const plan = planLayout(image, now, { recorded: recordedOf(then), keep: [now[5]] });
  assertEquals(plan.refusals, []);
  const lines = plan.changes.map(describeChange);
  assertEquals(lines, [
    "unmap 0x4000000-0x4020000 rw-p (mapped since the checkpoint)",
    "unmap 0x5000000-0x5004000 rw-p (a reservation made accessible since)",
    "brk 0x140000 -> 0x180000 (the heap shrank since the checkpoint)",
    "map 0x1000000-0x1008000 rw-p anonymous (vanished since the checkpoint)",
    "map 0x2000000-0x2010000 rw-p /lib/x.so at offset 0x3000 (vanished since the checkpoint)",
    "map 0x5000000-0x5004000 ---p anonymous (a reservation, fresh again)",
    "protect 0x3000000-0x3010000 r--p -> rw-p (protection changed)",
  ]);
});

Deno.test("planLayout() refuses what cannot be recreated and never unmaps the vDSO or the stack", () => {
  const image = [region(0x1000, 0x1010, "rw-s", "/dev/shm/x", "file"), region(0x2000, 0x2010, "rw-p")];
  const now = [
    region(0x2000, 0x2010, "r-xp", "[vdso]", "vdso"),
    region(0x9000, 0x9010, "rw-p", "[stack]", "stack"),
  ];
  const plan = planLayout(image, now, { recorded: recordedOf([...image]) });
  assertEquals(plan.refusals.length, 2, plan.refusals.join("\n"));
  assert(plan.refusals[0].includes("a shared mapping"), plan.refusals[0]);
  assert(plan.refusals[1].includes("[vdso], which cannot be unmapped"), plan.refusals[1]);
  assert(!plan.changes.some((c) => c.op === "unmap" && c.was.path === "[stack]"), "the stack stays");
});

Deno.test("planLayout() without a recorded map unmaps nothing it does not need to", () => {
  const image = [region(0x1000, 0x1010, "rw-p")];
  const now = [region(0x4000, 0x4020, "rw-p")];
  assertEquals(planLayout(image, now).changes.map((c) => c.op), ["map"]);
});

Deno.test("identityDifferences() names another pid, a reused pid, another boot and another executable", () => {
  const a = { pid: 5, startTicks: 100n, bootId: "b1", exePath: "/bin/a", exeDevice: 1n, exeInode: 2n };
  assertEquals(identityDifferences(a, a), []);
  assertEquals(identityDifferences(a, { ...a, pid: 6 }).length, 1);
  assert(identityDifferences(a, { ...a, startTicks: 101n })[0].includes("the pid was reused"));
  assert(identityDifferences(a, { ...a, bootId: "b2" })[0].includes("another boot"));
  assert(identityDifferences(a, { ...a, exeInode: 3n })[0].includes("the executable differs"));
  // An old image (no identity section): pid and boot only.
  const old = { pid: 5, startTicks: 0n, bootId: "b1", exePath: "", exeDevice: 0n, exeInode: 0n };
  assertEquals(identityDifferences(old, { ...a, startTicks: 9n, exeInode: 9n }), []);
});

/** The target's maps, without the regions the kernel or the process change by themselves. */
function mapsOf(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/maps`);
}

Deno.test("restore() makes the layout follow the image: vanished, born, re-protected, file-backed", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const file = `${dir}/data.bin`;
    await Deno.writeFile(file, crypto.getRandomValues(new Uint8Array(65536)).map((x) => x | 1));
    const a = await target.map(4 * MiB);
    const b = await target.map(4 * MiB);
    const c = await target.map(4 * MiB);
    const f = BigInt(await target.cmd(`mapfile ${file} ${65536}`));
    for (const [at, seed] of [[a, 1], [b, 2], [c, 3]] as const) {
      await target.fill(at, 4 * MiB, "random", seed);
    }
    await target.fill(f, 8192, "random", 4); // two pages copied on write, the rest is the file's
    const sums = [await target.sum(a, 4 * MiB), await target.sum(b, 4 * MiB), await target.sum(c, 4 * MiB)];
    const fsum = await target.sum(f, 65536);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.cmd(`unmap ${hex(b)} ${4 * MiB}`);
    await target.cmd(`unmap ${hex(f)} 65536`);
    await target.cmd(`protect ${hex(c)} ${4 * MiB} r`);
    const d = await target.map(8 * MiB);
    await target.fill(d, 8 * MiB, "random", 5);
    await target.fill(a, 4 * MiB, "text", 6);
    const dry = await restore(target.pid, `${dir}/a.cryo`, { dryRun: true });
    const plan = dry.layoutChanges.join("\n");
    assert(plan.includes(`map ${hex(b)}-${hex(b + BigInt(4 * MiB))} rw-p anonymous`), plan);
    assert(plan.includes(`map ${hex(f)}-${hex(f + 65536n)} rw-p ${file} at offset 0x0`), plan);
    assert(plan.includes(`protect ${hex(c)}-${hex(c + BigInt(4 * MiB))} r--p -> rw-p`), plan);
    // d may take part of f's freed range (then its two parts are two unmaps): every page of it is unmapped.
    const unmapped = [...plan.matchAll(/^unmap (0x[0-9a-f]+)-(0x[0-9a-f]+) /gm)].map((
      m,
    ) => [BigInt(m[1]), BigInt(m[2])]);
    for (let p = d; p < d + BigInt(8 * MiB); p += 4096n) {
      assert(
        unmapped.some(([s, e]) => s <= p && p < e),
        `${hex(p)} of the region born since is unmapped:\n${plan}`,
      );
    }
    const r = await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(r.layoutChanges, dry.layoutChanges);
    assertEquals(
      [await target.sum(a, 4 * MiB), await target.sum(b, 4 * MiB), await target.sum(c, 4 * MiB)],
      sums,
    );
    assertEquals(await target.sum(f, 65536), fsum);
    assert(!mapsOf(target.pid).includes(`${d.toString(16)}-`), "the region born since is gone");
    const lengths = mapsOf(target.pid).trim().split("\n").map((l) => {
      const [lo, hi] = l.split(" ")[0].split("-").map((x) => BigInt(`0x${x}`));
      return hi - lo;
    });
    assert(!lengths.includes(BigInt(8 * MiB)), "nor is it left anywhere else (moved aside, then unmapped)");
    await target.fill(c, 4 * MiB, "zero"); // writable again
    assertEquals(await target.cmd("pid"), String(target.pid));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() that fails after changing the layout puts the layout and memory back exactly", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const a = await target.map(4 * MiB);
    const b = await target.map(4 * MiB);
    const c = await target.map(4 * MiB);
    for (const [at, seed] of [[a, 1], [b, 2], [c, 3]] as const) {
      await target.fill(at, 4 * MiB, "random", seed);
    }
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.cmd(`unmap ${hex(b)} ${4 * MiB}`);
    await target.cmd(`protect ${hex(c)} ${4 * MiB} r`);
    const d = await target.map(8 * MiB);
    await target.fill(d, 8 * MiB, "stride:3", 5);
    await target.fill(a, 4 * MiB, "text", 6);
    const before = mapsOf(target.pid);
    const sums = [await target.sum(a, 4 * MiB), await target.sum(c, 4 * MiB), await target.sum(d, 8 * MiB)];
    const controller = new AbortController();
    const progress: Progress = {
      total() {},
      advance() {
        controller.abort(new Error("interrupted in the test")); // after the layout changed and memory was written
      },
      done() {},
    };
    await assertRejects(
      () => restore(target.pid, `${dir}/a.cryo`, { signal: controller.signal, progress }),
      Error,
      "interrupted in the test",
    );
    assertEquals(mapsOf(target.pid), before, "the layout is as it was");
    assertEquals(
      [await target.sum(a, 4 * MiB), await target.sum(c, 4 * MiB), await target.sum(d, 8 * MiB)],
      sums,
    );
    const r = await restore(target.pid, `${dir}/a.cryo`); // and the real restore still works after
    assertEquals(r.layoutChanges.length, 3, r.layoutChanges.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore() refuses another process than the image's unless forced", async () => {
  const dir = await Deno.makeTempDir();
  await using a = Target.start({ noAslr: true });
  await using b = Target.start({ noAslr: true });
  try {
    const at = await a.map(4 * MiB);
    assertEquals(await b.map(4 * MiB), at, "no address randomization: the same layout");
    await a.fill(at, 4 * MiB, "random", 1);
    await b.fill(at, 4 * MiB, "random", 2);
    await checkpoint(a.pid, `${dir}/a.cryo`, { fsync: false });
    const theirs = await b.sum(at, 4 * MiB);
    const e = await assertRejects(() => restore(b.pid, `${dir}/a.cryo`), IdentityMismatchError);
    assert(e.message.includes(`taken from pid ${a.pid}, not ${b.pid}`), e.message);
    assertEquals(await b.sum(at, 4 * MiB), theirs, "nothing was written");
    const r = await restore(b.pid, `${dir}/a.cryo`, { force: true });
    assertEquals(r.identity.length, 1);
    assertEquals(await b.sum(at, 4 * MiB), await a.sum(at, 4 * MiB));
    assertEquals(processIdentity(a.pid).exeInode, processIdentity(b.pid).exeInode);
    assertEquals(await b.cmd("pid"), String(b.pid), "it runs on, on A's memory and registers");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
