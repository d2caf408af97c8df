import fc from "fast-check";
import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { kindOf, parseMaps, parseSmaps, readRegions } from "../lib/kernel/maps.ts";
import { MapsParseError, SystemError } from "../lib/errors.ts";
import { parsePerms, permsString, type Region } from "../lib/kernel/region.ts";
import { mmap, munmap, PAGE_SIZE } from "../ffi/libc.ts";
import { MAP, PROT } from "../ffi/constants.ts";
import { Target } from "./_target.ts";

const testdata = new URL("./testdata/", import.meta.url);

function region(
  start: bigint,
  end: bigint,
  perms: string,
  offset: bigint,
  device: string,
  inode: bigint,
  path: string,
  kind: Region["kind"],
): Region {
  return { start, end, perms: parsePerms(perms), offset, device, inode, path, kind };
}

Deno.test("parseMaps() parses odd lines exactly: spaces, deleted, anon names, big device and inode, vsyscall", () => {
  const regions = parseMaps(Deno.readTextFileSync(new URL("odd.maps", testdata)), "odd.maps");
  assertEquals(regions, [
    region(0x400000n, 0x452000n, "r-xp", 0n, "08:02", 173521n, "/usr/bin/dbus-daemon", "file"),
    region(0x651000n, 0x652000n, "r--p", 0x51000n, "08:02", 173521n, "/usr/bin/dbus-daemon", "file"),
    region(0x179d000n, 0x17be000n, "rw-p", 0n, "00:00", 0n, "[heap]", "heap"),
    region(0x164400000000n, 0x164800000000n, "---p", 0n, "00:00", 0n, "", "anonymous"),
    region(0x7f0000000000n, 0x7f0000001000n, "rw-s", 0n, "00:01", 1234n, "/dev/zero", "deleted"),
    region(
      0x7f0000001000n,
      0x7f0000002000n,
      "r--p",
      0n,
      "fe:00",
      42n,
      "/home/me/My Documents/a file.bin",
      "file",
    ),
    region(0x7f0000002000n, 0x7f0000003000n, "rw-p", 0x1000n, "fe:00", 43n, "/tmp/two  spaces", "deleted"),
    region(0x7f0000003000n, 0x7f0000004000n, "rw-p", 0n, "00:00", 0n, "[anon:v8 heap space]", "named"),
    region(0x7f0000004000n, 0x7f0000005000n, "rw-s", 0n, "00:01", 7n, "[anon_shmem:ring]", "named"),
    region(0x7f0000005000n, 0x7f0000006000n, "rw-p", 0n, "00:00", 0n, "[stack:1234]", "stack"),
    region(0x7f0000006000n, 0x7f0000007000n, "rw-s", 0n, "00:01", 8n, "/memfd:cryo", "deleted"),
    region(0x7f0000008000n, 0x7f0000009000n, "r--p", 0n, "00:00", 0n, "[uprobes]", "special"),
    region(
      0x7f0000009000n,
      0x7f000000a000n,
      "r--p",
      0xbadf000n,
      "103:1a5",
      18446744073709551615n,
      "/data/big inode",
      "file",
    ),
    region(0x7f000000a000n, 0x7f000000b000n, "rw-p", 0n, "00:00", 0n, "/tmp/(deleted) not really", "file"),
    region(0x7ffd4c1a2000n, 0x7ffd4c1c3000n, "rw-p", 0n, "00:00", 0n, "[stack]", "stack"),
    region(0x7ffd4c1f8000n, 0x7ffd4c1fc000n, "r--p", 0n, "00:00", 0n, "[vvar]", "vvar"),
    region(0x7ffd4c1fc000n, 0x7ffd4c1fe000n, "r--p", 0n, "00:00", 0n, "[vvar_vclock]", "vvar"),
    region(0x7ffd4c1fe000n, 0x7ffd4c200000n, "r-xp", 0n, "00:00", 0n, "[vdso]", "vdso"),
    region(0xffffffffff600000n, 0xffffffffff601000n, "--xp", 0n, "00:00", 0n, "[vsyscall]", "vsyscall"),
  ]);
});

Deno.test("parseMaps() throws MapsParseError naming the source, line number and text", () => {
  const good = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
  const cases: [string, number, RegExp][] = [
    [good + "7f0000001000-7f0000002000 rw?p 00000000 00:00 0 \n", 2, /bad perms "rw\?p"/],
    [good + "garbage\n", 2, /not a maps line/],
    ["7f0000002000-7f0000001000 rw-p 00000000 00:00 0 \n", 1, /is not below end/],
    [
      good + "7f0000000800-7f0000002000 rw-p 00000000 00:00 0 \n",
      2,
      /overlaps the region ending at 0x7f0000001000/,
    ],
    ["10000000000000000-10000000000001000 rw-p 00000000 00:00 0 \n", 1, /not a maps line/],
  ];
  for (const [text, line, reason] of cases) {
    const e = assertThrows(() => parseMaps(text, "/proc/42/maps"), MapsParseError);
    assertEquals(e.line, line);
    assertEquals(e.source, "/proc/42/maps");
    assertEquals(e.text, text.split("\n")[line - 1]);
    assertMatch(e.message, new RegExp(`^Cannot parse /proc/42/maps line ${line}: `));
    assertMatch(e.message, reason);
  }
});

Deno.test("parseMaps() sorts regions by start", () => {
  const text = "2000-3000 rw-p 00000000 00:00 0\n1000-2000 r--p 00000000 00:00 0\n";
  assertEquals(parseMaps(text).map((r) => r.start), [0x1000n, 0x2000n]);
});

Deno.test("parseMaps() either parses any generated text or throws MapsParseError (property)", () => {
  const hex = (max: bigint) => fc.bigInt({ min: 0n, max }).map((n) => n.toString(16).padStart(8, "0"));
  const line = fc.oneof(
    fc.record({
      start: fc.bigInt({ min: 0n, max: (1n << 52n) - 1n }),
      pages: fc.bigInt({ min: 0n, max: 1n << 20n }),
      perms: fc.constantFrom("rw-p", "r--p", "---p", "r-xs", "rwxp", "rw?p", "rwx"),
      offset: hex(1n << 40n),
      device: fc.constantFrom("00:00", "fe:01", "103:1a5", "zz:00"),
      inode: fc.bigInt({ min: 0n, max: 1n << 64n }),
      path: fc.oneof(fc.constant(""), fc.string(), fc.constantFrom("[heap]", "[vdso]", "/a b (deleted)")),
    }).map((l) =>
      `${(l.start << 12n).toString(16)}-${
        ((l.start + l.pages) << 12n).toString(16)
      } ${l.perms} ${l.offset} ` +
      `${l.device} ${l.inode} ${l.path.replaceAll("\n", " ")}`
    ),
    fc.string().map((s) => s.replaceAll("\n", "")),
  );
  fc.assert(
    fc.property(fc.array(line, { maxLength: 8 }), (lines) => {
      const text = lines.map((l) => l + "\n").join("");
      try {
        const regions = parseMaps(text, "gen");
        assertEquals(regions.length, lines.length);
        for (let i = 0; i < regions.length; i++) {
          assert(regions[i].start < regions[i].end);
          if (i > 0) assert(regions[i - 1].end <= regions[i].start);
          assertEquals(kindOf(regions[i].path, regions[i].kind === "deleted"), regions[i].kind);
        }
      } catch (e) {
        if (!(e instanceof MapsParseError)) throw e;
        assert(e.line >= 1 && e.line <= lines.length, `line ${e.line} of ${lines.length}`);
        assertEquals(e.text, lines[e.line - 1]);
      }
    }),
    { numRuns: 500 },
  );
});

Deno.test("parseMaps() round-trips generated regions formatted as the kernel prints them (property)", () => {
  const arb = fc.uniqueArray(fc.bigInt({ min: 1n, max: (1n << 35n) - 2n }), { maxLength: 10 }).chain((
    starts,
  ) =>
    fc.tuple(
      fc.constant(starts.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))),
      fc.array(fc.constantFrom("rw-p", "r--s", "---p"), {
        minLength: starts.length,
        maxLength: starts.length,
      }),
      fc.array(fc.constantFrom("", "/x y", "[anon:n m]", "[heap]", "/gone (deleted)"), {
        minLength: starts.length,
        maxLength: starts.length,
      }),
    )
  );
  fc.assert(fc.property(arb, ([starts, perms, paths]) => {
    const text = starts.map((s, i) => {
      const head =
        `${(s << 12n).toString(16).padStart(8, "0")}-${((s + 1n) << 12n).toString(16).padStart(8, "0")} ` +
        `${perms[i]} 00000000 00:00 0 `;
      return paths[i] ? head.padEnd(73, " ") + paths[i] : head;
    }).join("\n");
    const regions = parseMaps(text);
    assertEquals(regions.map((r) => r.start), starts.map((s) => s << 12n));
    assertEquals(regions.map((r) => permsString(r.perms)), perms);
    assertEquals(regions.map((r) => r.path), paths.map((p) => p.replace(/ \(deleted\)$/, "")));
  }));
});

Deno.test("parseSmaps() merges VmFlags and sizes into each region", () => {
  const regions = parseSmaps(Deno.readTextFileSync(new URL("self.smaps", testdata)), "self.smaps");
  assertEquals(regions.map((r) => r.kind), ["anonymous", "heap", "vvar", "vdso"]);
  const [anon, heap, vvar] = regions;
  assertEquals(anon.vmFlags, ["rd", "wr", "mr", "mw", "me", "dc", "ac"]);
  assertEquals([anon.rss, anon.anonymous, anon.privateDirty, anon.swap], [4096, 4096, 4096, 0]);
  assertEquals([heap.rss, heap.anonymous, heap.kernelPageSize], [1668 * 1024, 1668 * 1024, 4096]);
  assertEquals(vvar.vmFlags, ["rd", "mr", "pf", "io", "de", "dd"]);
  const e = assertThrows(() => parseSmaps("Rss: 4 kB\n", "x.smaps"), MapsParseError);
  assertEquals(e.line, 1);
  assertThrows(() => parseSmaps("1000-2000 rw-p 0 00:00 0\nRss: four kB\n"), MapsParseError, "line 2");
});

Deno.test("readRegions() of self finds a mapping it just made, with smaps flags from madvise", () => {
  const len = 8n * BigInt(PAGE_SIZE);
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const view = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(addr)!, PAGE_SIZE),
    );
    view[0] = 1;
    const plain = readRegions("self").find((r) => r.start <= addr && addr < r.end);
    assert(plain && plain.kind === "anonymous" && plain.perms.write && !plain.perms.shared);
    const withSmaps = readRegions("self", { smaps: true });
    const r = withSmaps.find((r) => r.start <= addr && addr < r.end)!;
    assert(r.anonymous >= PAGE_SIZE, `anonymous ${r.anonymous}`);
    assert(r.vmFlags.includes("wr"));
    assert(withSmaps.some((r) => r.kind === "stack") && withSmaps.some((r) => r.kind === "vdso"));
  } finally {
    munmap(addr, len);
  }
});

Deno.test("readRegions() of a child finds the region the child mapped, sorted", async () => {
  await using target = Target.start();
  const addr = await target.map(1 << 20);
  const regions = readRegions(target.pid);
  for (let i = 1; i < regions.length; i++) assert(regions[i - 1].end <= regions[i].start);
  const r = regions.find((r) => r.start <= addr && addr < r.end);
  assert(r && r.end - addr >= 1n << 20n && permsString(r.perms) === "rw-p");
  assert(regions.some((r) => r.kind === "file" && r.path.endsWith("/cryo_target")));
});

Deno.test("readRegions() of a pid that does not exist throws ENOENT naming the file", () => {
  const pid = 0x3ffffff0; // above pid_max's ceiling: never a live pid
  const e = assertThrows(() => readRegions(pid), SystemError);
  assertEquals(e.code, "ENOENT");
  assertMatch(e.message, new RegExp(`^Cannot open /proc/${pid}/maps: ENOENT`));
  assertThrows(() => readRegions(-1), TypeError);
  assertThrows(() => readRegions(1.5), TypeError);
});

Deno.test("readRegions() of a process that exited (a zombie) throws ESRCH naming the pid and file", async () => {
  await using target = Target.start();
  const zombie = Number(await target.cmd("zombie")); // exited, never reaped: its maps file is empty
  assertEquals(Deno.readTextFileSync(`/proc/${zombie}/stat`).split(") ")[1][0], "Z");
  const e = assertThrows(() => readRegions(zombie), SystemError);
  assertEquals(e.code, "ESRCH");
  assertMatch(e.message, new RegExp(`^Cannot read /proc/${zombie}/maps \\(pid ${zombie} has no memory map`));
});

/** Whether user nobody can run this Deno and read lib/kernel/maps.ts (not when either lives under /root, say). */
async function nobodyCanRun(): Promise<boolean> {
  if (Deno.uid() !== 0) return false; // needs root to drop to nobody
  const maps = new URL("../lib/kernel/maps.ts", import.meta.url).pathname;
  const probe = await new Deno.Command("/bin/sh", {
    args: ["-c", 'test -x "$1" && test -r "$2"', "sh", Deno.execPath(), maps],
    uid: 65534,
    gid: 65534,
  }).output().catch(() => ({ success: false }));
  return probe.success;
}

Deno.test({
  name: "readRegions() of a pid we may not read throws EACCES naming the file",
  ignore: !(await nobodyCanRun()),
}, async () => {
  // Drop to nobody in a child and read pid 1's maps, which needs ptrace-read access to it.
  const denoDir = Deno.makeTempDirSync();
  Deno.chmodSync(denoDir, 0o777);
  try {
    const script = `import { readRegions } from ${
      JSON.stringify(new URL("../lib/kernel/maps.ts", import.meta.url).href)
    };
      try { readRegions(1); console.log("read"); } catch (e) { console.log(e.name + ": " + e.message); }`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script],
      uid: 65534,
      gid: 65534,
      env: { DENO_DIR: denoDir },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assertEquals(text, "SystemError: Cannot open /proc/1/maps: EACCES (Permission denied)");
  } finally {
    Deno.removeSync(denoDir, { recursive: true });
  }
});
