/**
 * Using cryo's snapshot helper in a `deno test` suite: start the program under test once, snapshot it, and roll
 * it back before each case, so every case starts from the same state without a restart. Needs root (ptrace).
 *
 * Run: `deno test -A examples/snapshot_test.ts`
 *
 * @module
 */

import assert from "node:assert/strict";
import { LineChild } from "../lib/kernel/child.ts";
import { snapshot } from "../mod.ts";

const workload = new URL("./workload.ts", import.meta.url).pathname;

Deno.test("snapshot() rolls the program under test back before each case", async (t) => {
  await using app = LineChild.spawn(Deno.execPath(), ["run", "-A", workload]);
  const ledger = async () => Number(/ledger=(\d+)/.exec(await app.request("state", 30_000))![1]);
  assert.equal(await ledger(), 1);
  await using snap = await snapshot(app.pid);
  const rollback = () => snap.rollback();

  await t.step("a case that does 3 rounds of work", async () => {
    await app.request("work 3");
    assert.equal(await ledger(), 4);
  });
  await rollback();

  await t.step("the next case starts from the snapshot", async () => {
    assert.equal(await ledger(), 1);
    await app.request("work 5");
    assert.equal(await ledger(), 6);
  });
  await rollback();

  await t.step("and so does the one after", async () => {
    assert.equal(await ledger(), 1);
  });
});
