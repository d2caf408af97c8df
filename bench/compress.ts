/**
 * Compression figures (issue 8): a child with 1 GiB of text-like memory (`--quick`: 64 MiB), checkpointed
 * with zstd-1, zstd-3 and lz4 and without compression in the same run; checkpoint time, ratio (data bytes per
 * image byte) and restore (rollback) time, each compressed figure against the uncompressed one. Images go to
 * the page cache (`fsync: false`), in `$CRYO_BENCH_DIR` or the system's temporary directory.
 *
 * @module
 */

import { withStopWindow } from "./peers.ts";
import { Target } from "../tests/_target.ts";
import { checkpoint } from "../lib/ops/checkpoint.ts";
import { restore } from "../lib/ops/restore.ts";
import type { Codec } from "../lib/codecs/codec.ts";
import { ZstdCodec } from "../lib/codecs/zstd.ts";
import { Lz4Codec } from "../lib/codecs/lz4.ts";
import { median } from "./stats.ts";
import type { BenchOptions, BenchRow } from "./types.ts";

const MiB = 2 ** 20;
const GiB = 2 ** 30;

interface Config {
  name: string;
  codec?: () => Codec;
  /** Encode while the target is stopped (fastest in all) rather than after the thaw (shortest stop). */
  whileStopped?: boolean;
  /** Full-size goal: checkpoint time in ms, and the least ratio. */
  goalMs?: number;
  goalRatio?: number;
}

const CONFIGS: Config[] = [
  { name: "uncompressed" },
  { name: "zstd-1", codec: () => new ZstdCodec(1) },
  { name: "zstd-3", codec: () => new ZstdCodec(3) },
  { name: "lz4", codec: () => new Lz4Codec() },
  // The goals are for the time of the whole checkpoint: encoding while stopped is the mode for that.
  {
    name: "zstd-1 while stopped",
    codec: () => new ZstdCodec(1),
    whileStopped: true,
    goalMs: 2700,
    goalRatio: 4,
  },
  { name: "lz4 while stopped", codec: () => new Lz4Codec(), whileStopped: true, goalMs: 1200 },
];

/**
 * Measure checkpoint time, ratio and restore time per codec.
 *
 * @param opts `quick` for 64 MiB; `runs` repetitions of every figure.
 * @returns The rows of the "compress" group.
 */
export async function bench(opts: BenchOptions): Promise<BenchRow[]> {
  const bytes = opts.quick ? 64 * MiB : GiB;
  const label = bytes >= GiB ? `${bytes / GiB} GiB` : `${bytes / MiB} MiB`;
  const dir = await Deno.makeTempDir({ dir: Deno.env.get("CRYO_BENCH_DIR"), prefix: "cryo-compress-" });
  const samples = new Map<string, { ckpt: number[]; stop: number[]; ratio: number[]; restore: number[] }>();
  const target = Target.start();
  try {
    await target.cmd("heartbeat"); // its longest gap is the stop window
    const addr = await target.map(bytes);
    await target.fill(addr, bytes, "text", 1);
    const want = await target.sum(addr, bytes);
    const decoders = [new ZstdCodec(1), new Lz4Codec()];
    for (let run = 0; run < opts.runs; run++) {
      for (const c of CONFIGS) {
        const s = samples.get(c.name) ?? { ckpt: [], stop: [], ratio: [], restore: [] };
        samples.set(c.name, s);
        const path = `${dir}/${c.name}.cryo`;
        let ms = 0;
        const { value: r, stopMs } = await withStopWindow(target, async () => {
          const t0 = performance.now();
          const result = await checkpoint(target.pid, path, {
            codec: c.codec?.(),
            encodeWhileStopped: c.whileStopped,
            fsync: false,
          });
          ms = performance.now() - t0;
          return result;
        });
        s.ckpt.push(ms);
        s.stop.push(stopMs);
        s.ratio.push(r.dataBytes / r.imageBytes);
        await target.fill(addr, 4 * MiB, "zero"); // so the restore has something to put back
        const t1 = performance.now();
        // With its registers: the target may be caught outside read(), and its stack is rolled back too.
        await restore(target.pid, path, { codecs: decoders });
        s.restore.push(performance.now() - t1);
        if (await target.sum(addr, bytes) !== want) {
          throw new Error(`Cannot bench ${c.name}: restore differs`);
        }
        await Deno.remove(path);
      }
    }
  } finally {
    await target.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const group = `compress ${label} text`;
  const base = samples.get("uncompressed")!;
  const rows: BenchRow[] = [
    { group, name: "uncompressed: checkpoint time", samples: base.ckpt, unit: "ms" },
    { group, name: "uncompressed: stop window", samples: base.stop, unit: "ms" },
    { group, name: "uncompressed: restore time", samples: base.restore, unit: "ms" },
  ];
  for (const c of CONFIGS.slice(1)) {
    const s = samples.get(c.name)!;
    const ms = median(s.ckpt), ratio = median(s.ratio);
    const goal = [c.goalMs ? `≤ ${c.goalMs / 1000} s` : "", c.goalRatio ? `ratio ≥ ${c.goalRatio}` : ""]
      .filter(Boolean).join(", ");
    rows.push({
      group,
      name: `${c.name}: checkpoint time`,
      samples: s.ckpt,
      unit: "ms",
      baseline: "uncompressed",
      baselineSamples: base.ckpt,
      ...(goal && !opts.quick
        ? { goal, met: (!c.goalMs || ms <= c.goalMs) && (!c.goalRatio || ratio >= c.goalRatio) }
        : {}),
    });
    rows.push({ group, name: `${c.name}: ratio`, samples: s.ratio, unit: "ratio" });
    rows.push({
      group,
      name: `${c.name}: stop window`,
      samples: s.stop,
      unit: "ms",
      baseline: "uncompressed",
      baselineSamples: base.stop,
      note: c.whileStopped
        ? "encoded while the target is stopped: the fastest checkpoint, the longest stop"
        : "the target is stopped only while a raw image is taken; it is compressed after the thaw",
    });
    rows.push({
      group,
      name: `${c.name}: restore time`,
      samples: s.restore,
      unit: "ms",
      baseline: "uncompressed",
      baselineSamples: base.restore,
    });
  }
  return rows;
}
