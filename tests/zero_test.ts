import fc from "fast-check";
import { assertEquals, assertThrows } from "./_assert.ts";
import { findZeroPages } from "../lib/kernel/zero.ts";
import { mmap, munmap, PAGE_SIZE, ptrOf } from "../ffi/libc.ts";
import { MAP, PROT } from "../ffi/constants.ts";

function withPages(pages: number, fn: (addr: bigint, view: Uint8Array) => void): void {
  const len = BigInt(pages * PAGE_SIZE);
  const addr = mmap(0n, len, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
  try {
    fn(addr, new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptrOf(addr)!, pages * PAGE_SIZE)));
  } finally {
    munmap(addr, len);
  }
}

Deno.test("findZeroPages() finds the all-zero pages, whatever byte of a page is non-zero", () => {
  withPages(8, (addr, view) => {
    view[0 * PAGE_SIZE] = 1; // first byte
    view[2 * PAGE_SIZE + PAGE_SIZE - 1] = 0x80; // last byte
    view[3 * PAGE_SIZE + 2049] = 7; // middle, unaligned
    view.fill(0, 4 * PAGE_SIZE, 5 * PAGE_SIZE); // written with zeros: still a hole
    view[6 * PAGE_SIZE + 64] = 1; // just past the first 64-byte block
    // page 1, 5 and 7 are never touched: they read as zero
    assertEquals([...findZeroPages(addr, 8 * PAGE_SIZE, PAGE_SIZE)], [0, 1, 0, 0, 1, 1, 0, 1]);
  });
});

Deno.test("findZeroPages() agrees with a byte-by-byte scan for any placement of non-zero bytes (property)", () => {
  const pages = 32;
  withPages(pages, (addr, view) => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(pages * PAGE_SIZE - 1), fc.integer({ min: 1, max: 255 })), {
          maxLength: 40,
        }),
        (pokes) => {
          view.fill(0);
          for (const [at, v] of pokes) view[at] = v;
          const expected = Array.from(
            { length: pages },
            (_, p) => Number(pokes.every(([at]) => (at / PAGE_SIZE | 0) !== p)),
          );
          assertEquals([...findZeroPages(addr, pages * PAGE_SIZE, PAGE_SIZE)], expected);
        },
      ),
      { numRuns: 200 },
    );
  });
});

Deno.test("findZeroPages() reuses a large enough output buffer and handles zero length", () => {
  withPages(4, (addr, view) => {
    view[PAGE_SIZE] = 1;
    const out = new Uint8Array(16).fill(9);
    const r = findZeroPages(addr, 4 * PAGE_SIZE, PAGE_SIZE, out);
    assertEquals(r.buffer, out.buffer);
    assertEquals([...out], [1, 0, 1, 1, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    assertEquals(findZeroPages(addr, 4 * PAGE_SIZE, PAGE_SIZE, new Uint8Array(2)).length, 4); // too small: new
    assertEquals(findZeroPages(addr, 0, PAGE_SIZE).length, 0);
  });
});

Deno.test("findZeroPages() of a length that is not a whole number of pages throws RangeError", () => {
  assertThrows(() => findZeroPages(0x1000n, PAGE_SIZE + 1, PAGE_SIZE), RangeError, "not a multiple of");
});
