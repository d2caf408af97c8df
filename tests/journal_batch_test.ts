/**
 * The restore journal's batched path (`RestoreJournal.saveAndWrite`: one `cryo_save_write` helper call per
 * batch of writes): only the pages that change are kept and written; their old bytes stay in memory up to two
 * chunks and go to the journal file beyond; pages the helper cannot read (PROT_NONE) or write (read-only) take
 * the slow path; and an undo puts every byte back, from memory and file alike.
 */

import { assert, assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { RestoreJournal } from "../lib/kernel/journal.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { RemoteWriter } from "../lib/image/remote.ts";

const MiB = 2 ** 20;
const PAGE = 4096;

/** `len` bytes of the target at `addr`, through /proc/PID/mem (which reads PROT_NONE pages too). */
function peek(pid: number, addr: bigint, len: number): Uint8Array {
  using f = Deno.openSync(`/proc/${pid}/mem`);
  f.seekSync(addr, Deno.SeekMode.Start);
  const out = new Uint8Array(len);
  for (let done = 0; done < len;) {
    const n = f.readSync(out.subarray(done));
    if (!n) throw new Error(`short read of pid ${pid} at ${addr}`);
    done += n;
  }
  return out;
}

const at = (b: Uint8Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));

Deno.test("RestoreJournal.saveAndWrite keeps and writes only the changed pages, and an undo puts them back", async () => {
  await using target = Target.start();
  const a = await target.map(8 * MiB);
  await target.fill(a, 8 * MiB, "random", 1);
  await target.fill(a + BigInt(16 * PAGE), 16 * PAGE, "zero"); // pages 16-31 read zero
  const before = await target.sum(a, 8 * MiB);
  const fresh = peek(target.pid, a, 8 * MiB);
  for (let p = 0; p < 2048; p += 4) fresh[p * PAGE + 100] ^= 0xff; // every 4th page changes: 512 pages
  for (let p = 16; p < 32; p++) fresh[p * PAGE + 7] = 1; // and every page of the zero range: 12 more
  using frozen = freeze(target.pid, { registers: false });
  using journal = new RestoreJournal(target.pid);
  {
    using remote = new RemoteWriter(target.pid, journal);
    for (let off = 0; off < 8 * MiB; off += 64 * PAGE) { // many writes of 64 pages: batches of them
      remote.queue(a + BigInt(off), at(fresh) + BigInt(off), 64 * PAGE);
    }
    remote.flush();
  }
  assertEquals(peek(target.pid, a, 8 * MiB), fresh, "every byte written");
  // Kept: the changed pages whose old bytes were not all zero (512 - the 4 of them in the zero range).
  assertEquals(journal.bytes, 508 * PAGE);
  journal.undo((tid, regs) => frozen.setRegisters(tid, regs));
  frozen.thaw();
  assertEquals(await target.sum(a, 8 * MiB), before, "every byte put back");
});

Deno.test("RestoreJournal.saveAndWrite spills past its memory to the file, takes the slow path for protected pages, and undoes all", async () => {
  await using target = Target.start();
  const size = 40 * MiB;
  const a = await target.map(size);
  await target.fill(a, size, "random", 2);
  const before = await target.sum(a, size);
  const ro = a + BigInt(3 * MiB), none = a + BigInt(21 * MiB) + BigInt(PAGE);
  await target.cmd(`protect 0x${ro.toString(16)} ${PAGE} r`); // process_vm_writev refuses it
  await target.cmd(`protect 0x${none.toString(16)} ${2 * PAGE} -`); // process_vm_readv refuses it
  const fresh = new Uint8Array(size).fill(0x5a);
  {
    using frozen = freeze(target.pid, { registers: false });
    using journal = new RestoreJournal(target.pid);
    {
      using remote = new RemoteWriter(target.pid, journal);
      remote.queue(a, at(fresh), size); // 8 MiB windows: 32 MiB kept in memory, the rest in the file
      remote.flush();
    }
    assertEquals(peek(target.pid, a, size), fresh, "every byte written, the protected pages included");
    assert(journal.bytes >= size, `journaled ${journal.bytes} of ${size}`);
    journal.undo((tid, regs) => frozen.setRegisters(tid, regs));
    frozen.thaw();
  }
  await target.cmd(`protect 0x${ro.toString(16)} ${PAGE} rw`);
  await target.cmd(`protect 0x${none.toString(16)} ${2 * PAGE} rw`);
  assertEquals(await target.sum(a, size), before, "every byte put back");
});
