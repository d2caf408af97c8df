import { assert, assertEquals } from "./_assert.ts";
import { tempDir } from "./_image.ts";
import { close, libc } from "../ffi/libc.ts";
import { O } from "../ffi/constants.ts";
import { linkUnnamed, openUnnamed, scratchFile, sweepStale, tempName } from "../lib/image/tempfile.ts";
import { MemoryPersister } from "../lib/image/persister.ts";

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

function write(fd: number, text: string): void {
  const b = new TextEncoder().encode(text);
  assertEquals(Number(libc.write(fd, Deno.UnsafePointer.of(b), BigInt(b.length))), b.length);
}

Deno.test("linkUnnamed() names an unnamed file (mode 0600) atomically, and replaces an image already there", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.cryo`;
  const first = openUnnamed(dir.path, O.WRONLY)!;
  assert(first !== undefined, "this file system has O_TMPFILE");
  write(first, "one");
  assertEquals(names(dir.path), [], "nothing named while it is written");
  linkUnnamed(first, path);
  close(first);
  assertEquals(Deno.readTextFileSync(path), "one");
  assertEquals(Deno.statSync(path).mode! & 0o777, 0o600);
  const second = openUnnamed(dir.path, O.WRONLY)!;
  write(second, "two");
  linkUnnamed(second, path);
  close(second);
  assertEquals(Deno.readTextFileSync(path), "two");
  assertEquals(names(dir.path), ["a.cryo"], "no temporary name is left after the replace");
});

Deno.test("scratchFile() is readable through /proc/self/fd and leaves nothing in its directory", async () => {
  await using dir = await tempDir();
  const fd = scratchFile(dir.path);
  try {
    write(fd, "raw image");
    assertEquals(names(dir.path), []);
    assertEquals(Deno.readTextFileSync(`/proc/self/fd/${fd}`), "raw image");
  } finally {
    close(fd);
  }
  assertEquals(names(dir.path), []);
});

Deno.test("sweepStale() removes the temporary files of dead writers only", async () => {
  await using dir = await tempDir();
  const mine = tempName(`${dir.path}/a.cryo`).slice(dir.path.length + 1);
  const m = /^(\.a\.cryo\.cryo-[0-9a-f]+-\d+)-(\d+)-(\d+)-([0-9a-f]{8})\.tmp$/.exec(mine);
  assert(m, mine);
  assertEquals(Number(m[2]), Deno.pid);
  // A pid that no longer runs: a child spawned here and reaped.
  const gone = new Deno.Command("true").spawn();
  await gone.status;
  const dead = `${m[1]}-${gone.pid}-${m[3]}-${m[4]}.tmp`;
  const reused = `${m[1]}-${Deno.pid}-1-${m[4]}.tmp`; // this pid, started at another time
  const elsewhere = mine.replace(/\.cryo-[0-9a-f]+-/, ".cryo-00000000-"); // another boot or machine
  const other = ".a.cryo.1234.abcdef12.tmp";
  for (const n of [mine, dead, reused, elsewhere, other, "a.cryo"]) {
    Deno.writeTextFileSync(`${dir.path}/${n}`, "");
  }
  assertEquals(sweepStale(dir.path).sort(), [dead, reused].sort());
  assertEquals(names(dir.path), [mine, elsewhere, other, "a.cryo"].sort());
  // MemoryPersister.create() sweeps the directory it writes to.
  Deno.writeTextFileSync(`${dir.path}/${dead}`, "");
  const p = await MemoryPersister.create(`${dir.path}/b.cryo`, { fsync: false });
  await p.abort();
  assert(!names(dir.path).includes(dead), "swept by the next writer");
});
