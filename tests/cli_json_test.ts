import fc from "fast-check";
import { assertEquals } from "./_assert.ts";
import { jsonDocument, jsonDocumentPieces } from "../lib/cli/json.ts";

Deno.test("jsonDocumentPieces() joined is jsonDocument() of any value, odd ones included (property)", () => {
  const odd = [
    {},
    {
      a: undefined,
      b: [undefined, () => 1, 1n, null],
      start: 0x10n,
      c: { d: [], e: {}, f: [{ end: 5n, x: "\x85\n" }] },
    },
    {
      big: 2n ** 60n,
      neg: -(2n ** 60n),
      s: Symbol("x"),
      t: new Date(0),
      n: NaN,
      inf: -Infinity,
      arr: [[1, [2, []]]],
    },
    {
      runs: Array.from({ length: 5000 }, (_, i) => ({ start: BigInt(i), end: BigInt(i + 1), kind: "data" })),
    },
  ];
  for (const v of odd) assertEquals([...jsonDocumentPieces(v)].join(""), jsonDocument(v));
  const key = fc.constantFrom("start", "end", "address", "kind", "n", "\u009b");
  const leaf = fc.oneof(
    fc.string(),
    fc.double(),
    fc.bigInt(),
    fc.boolean(),
    fc.constant(null),
    fc.constant(undefined),
  );
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: "small" }, leaf, fc.array(tie("value")), fc.dictionary(key, tie("value"))),
  }));
  fc.assert(
    fc.property(fc.dictionary(key, value), (v) => {
      assertEquals([...jsonDocumentPieces(v)].join(""), jsonDocument(v));
    }),
  );
});
