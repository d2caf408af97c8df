import fc from "fast-check";
import { assert, assertEquals } from "./_assert.ts";
import { compareRecord, findRecord, indexProblem, recordsIn } from "../lib/image/index.ts";
import { holeRecord, type ImageRecord } from "../lib/image/format.ts";
import { decodeDirectory, encodeDirectory, type FrameInfo } from "../lib/image/frames.ts";

const rec = (address: bigint, length: number, segment = 0): ImageRecord =>
  holeRecord(address, length, segment);

const u64 = fc.bigInt({ min: 0n, max: 0xffffffffffffffffn });

Deno.test("compareRecord() sorts addresses up to 0xffffffffffffffff by sign, not by difference", () => {
  fc.assert(fc.property(fc.array(u64, { maxLength: 50 }), (addrs) => {
    const sorted = addrs.map((a) => rec(a, 1)).sort(compareRecord).map((r) => r.address);
    for (let i = 1; i < sorted.length; i++) assert(sorted[i - 1] <= sorted[i]);
    const frames = addrs.map((a, i): FrameInfo => ({
      offset: i * 64,
      isEnd: false,
      count: i,
      segment: 0,
      start: a,
      end: a,
      dataLength: 0,
      tableChecksum: 0n,
      frameChecksum: a,
    }));
    const round = decodeDirectory("t", encodeDirectory(frames), 0);
    assertEquals(round.map((f) => [f.start, f.end, f.frameChecksum]), addrs.map((a) => [a, a, a]));
  }));
  // Two addresses whose difference is not representable as a double still compare right.
  assertEquals(compareRecord(rec(0xffffffffffffffffn, 1), rec(0xfffffffffffffffen, 1)), 1);
  assertEquals(compareRecord(rec(1n << 63n, 1), rec((1n << 63n) + 1n, 1)), -1);
  assertEquals(compareRecord(rec(5n, 1, 1), rec(0n, 1, 2)), -1);
});

Deno.test("findRecord() finds every record of a sorted index by binary search, and nothing in the gaps", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(fc.bigInt({ min: 0n, max: (1n << 60n) - 1n }), { maxLength: 40 }),
      (starts) => {
        const records = starts.map((s) => rec(s * 16n, 8)).sort(compareRecord);
        assertEquals(indexProblem(records), undefined);
        for (const [i, r] of records.entries()) {
          assertEquals(findRecord(records, r.address), i);
          assertEquals(findRecord(records, r.address + 7n), i);
          assert(findRecord(records, r.address + 8n) < 0);
        }
        assertEquals(recordsIn(records, 0n, 1n << 64n).length, records.length);
      },
    ),
  );
  const top = [rec(0xfffffffffffff000n, 0x1000)];
  assertEquals(indexProblem(top), undefined);
  assertEquals(findRecord(top, 0xffffffffffffffffn), 0);
});

Deno.test("indexProblem() refuses out-of-order, overlapping, empty and wrapping records", () => {
  fc.assert(fc.property(u64, fc.integer({ min: 1, max: 1 << 20 }), (a, len) => {
    const b = a + BigInt(len) - 1n;
    if (b > 0xffffffffffffffffn) {
      assert(indexProblem([rec(a, len)])?.message.includes("wraps"));
      return;
    }
    assert(indexProblem([rec(a, len), rec(b, 1)])?.message.includes("overlaps"));
    if (a > 0n) assert(indexProblem([rec(a, 1), rec(a - 1n, 1)])?.message.includes("out of order"));
  }));
  assert(indexProblem([rec(4096n, 0)])?.message.includes("empty"));
  assertEquals(indexProblem([rec(0n, 4096), rec(4096n, 4096), rec(0n, 4096, 1)]), undefined);
});
