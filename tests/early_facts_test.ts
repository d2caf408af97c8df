// The policy's decisions with the smaps facts read before the freeze (lib/ops/early_facts.ts) are those of
// smaps read while frozen: for an unchanged layout, for a private file mapping first written in between (kept:
// its private pages are seen at the freeze), and for a region mapped in between (smaps read again, frozen).
import { assertEquals } from "./_assert.ts";
import { Target } from "./_target.ts";
import { freeze } from "../lib/kernel/freeze.ts";
import { regionDecisions } from "../lib/ops/checkpoint.ts";
import { decisionsWithEarlyFacts, readEarlyFacts } from "../lib/ops/early_facts.ts";
import type { Decision } from "../lib/kernel/policy.ts";
import type { Region } from "../lib/kernel/region.ts";

const view = (ds: Decision<Region>[]) =>
  ds.map((d) =>
    `${d.region.start.toString(16)}-${d.region.end.toString(16)} ${d.persist} ${d.pages} ${d.reason}`
  );

Deno.test("decisions with smaps read before the freeze equal those of smaps read frozen", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cryo-early-" });
  const t = Target.start();
  try {
    const file = `${dir}/data`;
    await Deno.writeFile(file, new Uint8Array(64 << 10).fill(7));
    const written = BigInt(await t.cmd(`mapfile ${file} ${64 << 10}`));
    await t.cmd(`poke 0x${written.toString(16)} 1`); // a private dirty page
    const clean = BigInt(await t.cmd(`mapfile ${file} ${64 << 10}`)); // none yet
    const anon = await t.map(1 << 20);
    await t.fill(anon, 1 << 20, "random");

    const compare = (early: ReturnType<typeof readEarlyFacts>, what: string) => {
      using frozen = freeze(t.pid, { registers: false });
      const got = view(decisionsWithEarlyFacts(t.pid, early, {}));
      const want = view(regionDecisions(t.pid));
      frozen.thaw();
      assertEquals(got, want, what);
      return got;
    };

    const unchanged = compare(readEarlyFacts(t.pid), "unchanged layout");
    const cleanLine = unchanged.find((l) => l.startsWith(clean.toString(16)))!;
    assertEquals(cleanLine.includes(" false "), true, cleanLine); // no private page: left out

    // First written between the early read and the freeze: its line is the same, its private page new.
    let early = readEarlyFacts(t.pid);
    await t.cmd(`poke 0x${clean.toString(16)} 2`);
    const after = compare(early, "a file mapping written in between");
    const line = after.find((l) => l.startsWith(clean.toString(16)))!;
    assertEquals(line.includes(" true "), true, line);

    // A region mapped in between: smaps is read again, frozen.
    early = readEarlyFacts(t.pid);
    await t.map(256 << 10);
    compare(early, "a region mapped in between");
  } finally {
    await t.close();
    await Deno.remove(dir, { recursive: true });
  }
});
