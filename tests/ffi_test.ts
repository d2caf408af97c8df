import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { MAP, PROT } from "../ffi/constants.ts";
import { addrOf, mmap, munmap, PAGE_SIZE, processVmRead, ptrOf } from "../ffi/libc.ts";
import { helper } from "../ffi/helper.ts";
import { SystemError } from "../lib/errors.ts";
import { Target } from "./_target.ts";

const deno = Deno.execPath();

Deno.test("mmap() memory written through a pointer view is read back by a child with process_vm_readv", async () => {
  const len = 16n * BigInt(PAGE_SIZE);
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, Number(len)));
    for (let i = 0; i < view.length; i++) view[i] = (i * 7 + 3) & 0xff;
    const script = `
      import { processVmRead, mmap } from ${JSON.stringify(new URL("../ffi/libc.ts", import.meta.url).href)};
      const [pid, addr, len] = Deno.args;
      const local = new Uint8Array(Number(len));
      processVmRead(Number(pid), BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(local))), BigInt(addr), BigInt(len));
      let h = 0; for (const b of local) h = (h * 31 + b) >>> 0;
      console.log(h);`;
    const out = await new Deno.Command(deno, {
      args: ["eval", "--ext=ts", script, String(Deno.pid), String(addr), String(len)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    let h = 0;
    for (const b of view) h = (h * 31 + b) >>> 0;
    assertEquals(new TextDecoder().decode(out.stdout).trim(), String(h));
  } finally {
    munmap(addr, len);
  }
  assertEquals(addrOf(null), 0n);
});

Deno.test("processVmRead() reads a child's memory byte-exact", async () => {
  await using target = Target.start();
  const addr = await target.map(1 << 20);
  await target.fill(addr, 1 << 20, "random", 7);
  const local = new Uint8Array(1 << 20);
  processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(local)), addr, 1n << 20n);
  let h = 0xcbf29ce484222325n;
  for (const b of local) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
  assertEquals(h.toString(16).padStart(16, "0"), await target.sum(addr, 1 << 20));
});

Deno.test("munmap() of an unaligned address throws EINVAL naming the call and address", () => {
  const e = assertThrows(() => munmap(0x1001n, 4096n), SystemError);
  assertEquals(e.code, "EINVAL");
  assertEquals(e.errno, 22);
  assertEquals(e.call, "munmap");
  assertMatch(e.message, /^Cannot munmap 4096 bytes at 0x1001: EINVAL \(Invalid argument\)$/);
});

Deno.test("processVmRead() of an unmapped address throws EFAULT", async () => {
  await using target = Target.start();
  const local = new Uint8Array(4096);
  const e = assertThrows(
    () => processVmRead(target.pid, addrOf(Deno.UnsafePointer.of(local)), 0x1000n, 4096n),
    SystemError,
  );
  assertEquals(e.code, "EFAULT");
  assertMatch(e.message, new RegExp(`^Cannot process_vm_readv pid ${target.pid} at 0x1000 .*EFAULT`));
});

Deno.test("processVmRead() of a pid that does not exist throws ESRCH naming the pid", () => {
  const local = new Uint8Array(16);
  const pid = 0x3ffffff0; // above pid_max's ceiling (4194304), never a live pid
  const e = assertThrows(
    () => processVmRead(pid, addrOf(Deno.UnsafePointer.of(local)), 0x1000n, 16n),
    SystemError,
  );
  assertEquals(e.code, "ESRCH");
  assertMatch(e.message, new RegExp(`pid ${pid}`));
});

Deno.test("helper() loads the helper and futex wake on an idle word wakes nobody", () => {
  const h = helper();
  const word = new Uint32Array(1);
  assertEquals(h.cryo_futex_wake(Deno.UnsafePointer.of(word), 1), 0);
});

Deno.test("helper() with CRYO_HELPER pointing at a missing file gives the documented error", async () => {
  const script = `
    import { helper } from ${JSON.stringify(new URL("../ffi/helper.ts", import.meta.url).href)};
    try { helper(); } catch (e) { console.log(e.name); console.log(e.message); }`;
  const out = await new Deno.Command(deno, {
    args: ["eval", "--ext=ts", script],
    env: { CRYO_HELPER: "/nonexistent/libcryo_helper.so" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertMatch(text, /^HelperNotFoundError\n/);
  assertMatch(text, /Cannot load the cryo helper library; tried:\n {2}\/nonexistent\/libcryo_helper\.so: /);
  assertMatch(text, /Build it with `deno task build`.*or set CRYO_HELPER/);
});
