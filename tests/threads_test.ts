import { assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { ImageError } from "../lib/errors.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import {
  decodeThreads,
  encodeThreads,
  GENERAL_REGISTERS,
  register,
  setRegister,
} from "../lib/kernel/threads.ts";
import { Target } from "./_target.ts";

Deno.test("encodeThreads() output decodes to the same thread states, from a real frozen child", async () => {
  await using target = Target.start();
  await target.cmd("threads 2");
  const threads = (() => {
    using frozen = freeze(target.pid);
    return frozen.threads;
  })();
  const bytes = encodeThreads(threads);
  assertEquals(bytes.byteLength % 8, 0);
  const back = decodeThreads(bytes, "img.cryo", 4096);
  assertEquals(back, threads.map((t) => ({ ...t, general: t.general.slice(), vector: t.vector.slice() })));
  assertEquals(back.map((t) => register(t, "rip")), threads.map((t) => register(t, "rip")));
  // A thread without rseq and with FXSAVE state round-trips too.
  const plain = {
    ...threads[0],
    rseq: null,
    vectorKind: "fpregs" as const,
    vector: threads[0].vector.slice(0, 512),
  };
  assertEquals(decodeThreads(encodeThreads([plain])), [plain]);
  assertEquals(decodeThreads(encodeThreads([])), []);
});

Deno.test("decodeThreads() of a damaged section throws ImageError naming the absolute offset", async () => {
  await using target = Target.start();
  const threads = (() => {
    using frozen = freeze(target.pid);
    return frozen.threads;
  })();
  const good = encodeThreads(threads);
  const base = 8192;
  let e = assertThrows(
    () => decodeThreads(good.subarray(0, good.byteLength - 8), "img.cryo", base),
    ImageError,
  );
  assertEquals(e.path, "img.cryo");
  assertEquals(e.offset, base + 16 + 8);
  assertMatch(
    e.message,
    /^Invalid image img\.cryo at offset 8216: thread \d+: registers run past the section end$/,
  );
  const badMagic = good.slice();
  badMagic[0] ^= 1;
  e = assertThrows(() => decodeThreads(badMagic, "img.cryo", base), ImageError, `expected "CRYOTHRD"`);
  assertEquals(e.offset, base);
  const badVersion = good.slice();
  new DataView(badVersion.buffer).setUint32(8, 9, true);
  e = assertThrows(() => decodeThreads(badVersion), ImageError, "version is 9, expected 1");
  assertEquals(e.offset, 8);
  const trailing = new Uint8Array(good.byteLength + 8);
  trailing.set(good);
  assertThrows(() => decodeThreads(trailing), ImageError, "8 trailing bytes after 1 threads");
  const badLength = good.slice();
  new DataView(badLength.buffer).setUint32(16 + 4, 200, true);
  assertThrows(() => decodeThreads(badLength), ImageError, "general registers are 200 bytes, expected 216");
  assertThrows(() => decodeThreads(good.subarray(0, 10)), ImageError, "expected at least 16");
});

Deno.test("setRegister() changes exactly one general register", () => {
  const regs = { general: new Uint8Array(GENERAL_REGISTERS.length * 8) };
  setRegister(regs, "rsp", 0x7fff_0000_1000n);
  setRegister(regs, "rax", -1n);
  assertEquals(register(regs, "rsp"), 0x7fff_0000_1000n);
  assertEquals(register(regs, "rax"), 0xffff_ffff_ffff_ffffn);
  const nonzero = GENERAL_REGISTERS.filter((n) => register(regs, n) !== 0n);
  assertEquals(nonzero, ["rax", "rsp"]);
});
