import { parseArgs } from "node:util";
import { assertEquals, assertThrows } from "./_assert.ts";
import { parse, parseMemory } from "../lib/cli/args.ts";
import { UsageError } from "../lib/cli/main.ts";

const options = {
  pid: { type: "string" },
  output: { type: "string", short: "o" },
  include: { type: "string", multiple: true },
  quiet: { type: "boolean", short: "q" },
  json: { type: "boolean", short: "j" },
} as const;

Deno.test("parse() gives what node:util parseArgs gives (strict, positionals) for every form the CLI uses", () => {
  const cases = [
    ["--pid", "42", "-o", "a.cryo"],
    ["--pid=42", "--output=a.cryo", "-q"],
    ["-oa.cryo", "-qj", "x", "y"],
    ["--include", "range:1-2", "--include=kind:heap", "-o", "-"],
    ["img", "--", "--pid", "-q"],
    ["-o", "-", "-"],
    [],
  ];
  for (const args of cases) {
    const node = parseArgs({ args, options, allowPositionals: true, strict: true });
    const ours = parse(args, options);
    assertEquals({ ...ours.values }, { ...node.values }, args.join(" "));
    assertEquals(ours.positionals, node.positionals, args.join(" "));
  }
});

Deno.test("parse() refuses an unknown option, a missing value, a value for a boolean, a dash-led value", () => {
  for (
    const [args, message] of [
      [["--bogus"], "Unknown option '--bogus'"],
      [["-x"], "Unknown option '-x'"],
      [["-qx"], "Unknown option '-x' in '-qx'"],
      [["--pid"], "Option '--pid <value>' argument missing"],
      [["--quiet=yes"], "Option '--quiet' does not take an argument"],
      [["-o", "--pid"], "Option '-o' argument is ambiguous"],
    ] as const
  ) {
    assertThrows(() => parse([...args], options), UsageError, message);
    assertThrows(() => parseArgs({ args: [...args], options, allowPositionals: true, strict: true }), Error);
  }
});

Deno.test("parseMemory() reads bytes and K, M, G sizes and refuses less than 4M or a non-size", () => {
  assertEquals(parseMemory(undefined), undefined);
  assertEquals(parseMemory("64M"), 64 * 2 ** 20);
  assertEquals(parseMemory("1G"), 2 ** 30);
  assertEquals(parseMemory("8192k"), 8 * 2 ** 20);
  assertEquals(parseMemory(String(5 * 2 ** 20)), 5 * 2 ** 20);
  assertThrows(() => parseMemory("1M"), UsageError, "at least 4M");
  assertThrows(() => parseMemory("lots"), UsageError, "a size such as 64M");
});
