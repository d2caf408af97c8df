import { assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { MAP, O, PROT } from "../ffi/constants.ts";
import { close, mmap, munmap, open, ptrOf } from "../ffi/libc.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import { readRegions } from "../lib/kernel/maps.ts";
import { Pagemap } from "../lib/kernel/pagemap.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { selfSource } from "../lib/image/sources.ts";
import { selfTarget } from "../lib/image/targets.ts";

const PAGE = 4096;
const hex = (n: bigint) => `0x${n.toString(16)}`;

async function fileOfPages(dir: string, pages: number): Promise<{ path: string; bytes: Uint8Array }> {
  const bytes = new Uint8Array(pages * PAGE).map((_, i) => (i % 251) + 1); // no zero byte anywhere
  const path = `${dir}/mapped.data`;
  await Deno.writeFile(path, bytes);
  return { path, bytes };
}

Deno.test("restore() gives a private file mapping's pages the file's contents back, not zeros", async () => {
  const dir = await Deno.makeTempDir();
  await using target = Target.start();
  try {
    const { path, bytes } = await fileOfPages(dir, 8);
    const a = BigInt(await target.cmd(`mapfile ${path} ${8 * PAGE}`));
    const page = (i: number) => hex(a + BigInt(i * PAGE));
    await target.cmd(`peek ${page(1)}`); // read from the file, never written
    await target.cmd(`poke ${page(2)} 7`); // copied on write before the checkpoint
    const before = await target.sum(a, 8 * PAGE);
    await checkpoint(target.pid, `${dir}/a.cryo`, { fsync: false });
    await target.cmd(`poke ${page(0)} 9`); // written after it: must read the file's bytes again
    await target.cmd(`poke ${page(5)} 11`);
    await target.cmd(`poke ${page(2)} 13`); // the checkpoint's copy must come back
    await restore(target.pid, `${dir}/a.cryo`);
    assertEquals(await target.sum(a, 8 * PAGE), before);
    const word = (i: number) => new DataView(bytes.buffer).getBigUint64(i * PAGE, true).toString(16);
    assertEquals(await target.cmd(`peek ${page(0)}`), word(0));
    assertEquals(await target.cmd(`peek ${page(2)}`), "7");
    assertEquals(await Deno.readFile(path), bytes, "the file itself is untouched");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MemoryLoader.load() into this process drops later copies of a private file mapping's pages", async () => {
  const dir = await Deno.makeTempDir();
  const { path, bytes } = await fileOfPages(dir, 4);
  const fd = open(path, O.RDONLY);
  const len = BigInt(4 * PAGE);
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE, fd);
  close(fd);
  try {
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, 4 * PAGE));
    view[PAGE] = 0xaa; // page 1 copied on write before the persist
    const region = readRegions("self").find((r) => r.start === addr)!;
    const runs = (() => {
      using pm = Pagemap.open(Deno.pid);
      return pm.runs(region.start, region.end, { anonOnly: true });
    })();
    await using persister = await MemoryPersister.create(`${dir}/self.cryo`, {
      source: selfSource(),
      regions: [region],
      fsync: false,
    });
    await persister.storeRuns(runs, { start: region.start, end: region.end });
    await persister.finalize();
    view[0] = 0x55; // page 0 written after the persist: must read the file again
    view[PAGE] = 0x66;
    using loader = await MemoryLoader.open(`${dir}/self.cryo`);
    await loader.load(selfTarget());
    const want = bytes.slice();
    want[PAGE] = 0xaa;
    assertEquals(view.slice(), want);
    assertEquals(await Deno.readFile(path), bytes, "the file itself is untouched");
  } finally {
    munmap(addr, len);
    await Deno.remove(dir, { recursive: true });
  }
});
