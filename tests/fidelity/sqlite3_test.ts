// sqlite3: the shell with an in-memory database; fingerprint an aggregate over every row.
import { assertEquals } from "../_assert.ts";
import { fidelity, Pipe } from "./_harness.ts";

/** Run SQL in the shell; return the lines it printed. */
async function sql(p: Pipe, text: string): Promise<string[]> {
  await p.write(`${text}\n.print __END__\n`);
  const out: string[] = [];
  for (;;) {
    const line = await p.line();
    if (line === "__END__") return out;
    if (/^(Parse |Runtime )?[Ee]rror/.test(line)) throw new Error(`sqlite3: ${text} -> ${line}`);
    out.push(line);
  }
}

const FINGERPRINT =
  "select count(*), sum(a), sum(length(b)), sum(unicode(substr(b, 1 + a % 40, 1)) * a) from t;";

fidelity({
  name: "sqlite3",
  binary: "sqlite3",
  async start() {
    const p = new Pipe("sqlite3", ["-batch", "-bail", ":memory:"]);
    await sql(p, "create table t(a integer primary key, b text);");
    await sql(p, "insert into t select value, hex(randomblob(40)) from generate_series(1, 300000);");
    await sql(p, "create index tb on t(b);");
    return {
      pid: p.pid,
      fingerprint: async () => (await sql(p, FINGERPRINT)).join("\n"),
      async change(round) {
        await sql(
          p,
          `insert into t select value + 1000000, hex(randomblob(200)) from generate_series(1, 200000);`,
        );
        await sql(
          p,
          `delete from t where a % ${2 + (round % 3)} = 0; update t set b = b || 'x' where a % 7 = 1;`,
        );
        await sql(p, "create table u as select * from t; drop index tb; drop table u; vacuum;");
      },
      async use(round) {
        await sql(p, `insert into t values (-1, 'use ${round}');`);
        assertEquals(await sql(p, "select b from t where a = -1;"), [`use ${round}`]);
        await sql(p, "delete from t where a = -1;");
      },
      async exit() {
        await sql(p, "select 1;");
        await p.closeInput(); // the shell exits at the end of its input
        return (await p.status).code;
      },
      close: () => p.close(),
    };
  },
});
