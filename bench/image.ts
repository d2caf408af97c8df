/**
 * The image format's figures, each against a plain baseline measured in the same run on the same bytes
 * (1 GiB of random data; `--quick`: 128 MiB):
 * - persist from this process (zero-copy write + XXH3 per run) vs a plain `write()` of the same memory;
 * - persist from a child pid (`process_vm_readv` + XXH3 + write) vs `process_vm_readv` + `write()`;
 * - verify (every checksum, padding and frame) in GiB/s vs a plain `pread()` of the file;
 * - eager load (verify + copy into existing memory) vs a plain `pread()` into the same memory;
 * - lazy load (map the verified image over released memory) in ms;
 * - the image's allocated size against its data size, for a sparse mapping (every 8th page resident).
 *
 * Persist figures use `fsync: false` (page cache), as does the baseline.
 *
 * @module
 */

import { Target } from "../tests/_target.ts";
import { MAP, O, PROT } from "../ffi/constants.ts";
import { close, libc, mmap, munmap, open, PAGE_SIZE, ptrOf } from "../ffi/libc.ts";
import { MemoryPersister } from "../lib/image/persister.ts";
import { MemoryLoader } from "../lib/image/loader.ts";
import { pidSource, transferRemote } from "../lib/image/sources.ts";
import { selfTarget } from "../lib/image/targets.ts";
import { releaseMemory } from "../lib/image/lazy.ts";
import type { Region } from "../lib/kernel/region.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

function region(start: bigint, len: number): Region {
  return {
    start,
    end: start + BigInt(len),
    perms: { read: true, write: true, exec: false, shared: false },
    offset: 0n,
    device: "00:00",
    inode: 0n,
    path: "",
    kind: "anonymous",
  };
}

function fill(addr: bigint, len: number, seed: number): void {
  const w = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, len));
  let s = seed;
  for (let i = 0; i < w.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    w[i] = s;
  }
}

function writeAll(fd: number, addr: bigint, len: number): void {
  for (let done = 0; done < len;) {
    const n = Number(libc.write(fd, ptrOf(addr + BigInt(done)), BigInt(len - done)));
    if (n <= 0) throw new Error(`Cannot write the baseline file: write returned ${n}`);
    done += n;
  }
}

function preadAll(fd: number, addr: bigint, len: number, offset = 0): void {
  for (let done = 0; done < len;) {
    const n = Number(libc.pread(fd, ptrOf(addr + BigInt(done)), BigInt(len - done), BigInt(offset + done)));
    if (n <= 0) throw new Error(`Cannot read the baseline file: pread returned ${n}`);
    done += n;
  }
}

/** Flush dirty pages first, so that no figure pays for the writeback of the one before it. */
async function settle(): Promise<void> {
  await new Deno.Command("sync").output();
}

async function ms(fn: () => unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

function rate(bytes: number, millis: number): number {
  return bytes / GiB / (millis / 1000);
}

/**
 * Measure the image figures.
 *
 * @param opts `quick` for 128 MiB instead of 1 GiB; `runs` repetitions.
 * @returns The rows.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const size = opts.quick ? 128 * MiB : GiB;
  const label = opts.quick ? "128 MiB" : "1 GiB";
  const group = `image ${label} random`;
  const dir = await Deno.makeTempDir({
    dir: Deno.env.get("CRYO_BENCH_DIR") ?? undefined,
    prefix: "cryo-image-",
  });
  const img = `${dir}/self.img`, plain = `${dir}/plain.bin`, pidImg = `${dir}/pid.img`;
  const addr = mmap(0n, BigInt(size), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  const bounce = new Uint8Array(16 * MiB);
  const bounceAddr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bounce)));
  const s: Record<string, number[]> = {};
  const add = (k: string, v: number) => (s[k] ??= []).push(v);
  await using target = Target.start();
  try {
    fill(addr, size, 0x9e3779b9);
    const child = await target.map(size);
    await target.fill(child, size, "random", 3);
    for (let run = 0; run < opts.runs; run++) {
      // Each figure and its baseline write a new file after a sync; odd runs measure cryo first.
      const pair = async (first: [string, () => unknown], second: [string, () => unknown]) => {
        for (const [key, fn] of run % 2 ? [second, first] : [first, second]) {
          await Deno.remove(key.endsWith("write") ? plain : key === "persist" ? img : pidImg).catch(() => {});
          await settle();
          add(key, await ms(fn));
        }
      };
      await pair(["pid.write", () => {
        const fd = open(plain, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC);
        for (let off = 0; off < size; off += bounce.length) {
          transferRemote("process_vm_readv", target.pid, bounceAddr, child + BigInt(off), bounce.length);
          writeAll(fd, bounceAddr, bounce.length);
        }
        close(fd);
      }], ["pid.persist", async () => {
        const p = await MemoryPersister.create(pidImg, {
          source: pidSource(target.pid),
          regions: [region(child, size)],
          fsync: false,
        });
        await p.store(child, size);
        await p.finalize();
      }]);
      await Deno.remove(pidImg);
      await pair(["write", () => {
        const fd = open(plain, O.WRONLY | O.CREAT | O.TRUNC | O.CLOEXEC);
        writeAll(fd, addr, size);
        close(fd);
      }], ["persist", async () => {
        const p = await MemoryPersister.create(img, { regions: [region(addr, size)], fsync: false });
        await p.store(addr, size);
        await p.finalize();
      }]);
      add(
        "pread",
        await ms(() => {
          const fd = open(plain, O.RDONLY | O.CLOEXEC);
          for (let off = 0; off < size; off += bounce.length) preadAll(fd, bounceAddr, bounce.length, off);
          close(fd);
        }),
      );
      add(
        "verify",
        await ms(async () => {
          using l = await MemoryLoader.open(img);
          await l.verify();
        }),
      );
      add(
        "pread.into",
        await ms(() => {
          const fd = open(plain, O.RDONLY | O.CLOEXEC);
          preadAll(fd, addr, size);
          close(fd);
        }),
      );
      add(
        "load",
        await ms(async () => {
          using l = await MemoryLoader.open(img);
          await l.load(selfTarget());
        }),
      );
      await Deno.remove(plain);
    }
    for (let run = 0; run < opts.runs; run++) {
      using l = await MemoryLoader.open(img);
      await l.verify();
      releaseMemory(addr, size); // release-and-reload: the memory was released after the persist
      add("lazy", await ms(() => l.load(selfTarget({ lazy: true }))));
    }
    // Sparse: every 8th page resident.
    munmap(addr, BigInt(size));
    mmap(addr, BigInt(size), PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED);
    for (let off = 0; off < size; off += 8 * PAGE_SIZE) fill(addr + BigInt(off), PAGE_SIZE, off + 1);
    const p = await MemoryPersister.create(img, { regions: [region(addr, size)], fsync: false });
    await p.store(addr, size);
    const summary = await p.finalize();
    const allocated = (await Deno.stat(img)).blocks! * 512;
    add("alloc", allocated / summary.dataBytes);
  } finally {
    munmap(addr, BigInt(size));
    await Deno.remove(dir, { recursive: true });
  }
  const m = (k: string) => median(s[k]);
  const gib = (k: string) => s[k].map((x) => rate(size, x));
  return [
    {
      group,
      name: "persist from this process",
      unit: "ms",
      samples: s.persist,
      baseline: "plain write()",
      baselineSamples: s.write,
      goal: "≥ 0.8× plain write()'s speed (ratio ≤ 1.25)",
      met: m("persist") <= 1.25 * m("write"),
    },
    {
      group,
      name: "persist from a child pid",
      unit: "ms",
      samples: s["pid.persist"],
      baseline: "process_vm_readv + write()",
      baselineSamples: s["pid.write"],
      goal: "≥ 0.8× the plain pipeline's speed (ratio ≤ 1.25)",
      met: m("pid.persist") <= 1.25 * m("pid.write"),
    },
    {
      group,
      name: "verify",
      unit: "GiB/s",
      samples: gib("verify"),
      baseline: "plain pread()",
      baselineSamples: gib("pread"),
      goal: "≥ 5 GiB/s",
      met: opts.quick ? undefined : rate(size, m("verify")) >= 5,
    },
    {
      group,
      name: "eager load (verify + copy)",
      unit: "ms",
      samples: s.load,
      baseline: "plain pread() into the memory",
      baselineSamples: s["pread.into"],
    },
    {
      group,
      name: "lazy load (verified image)",
      unit: "ms",
      samples: s.lazy,
      goal: "≤ 10 ms",
      met: opts.quick ? undefined : m("lazy") <= 10,
    },
    {
      group: `image ${label} sparse (every 8th page)`,
      name: "allocated / data bytes",
      unit: "ratio",
      samples: s.alloc,
      note: "data runs are one page each here; a frame table of up to 1024 of them costs about 1%",
    },
  ];
}
