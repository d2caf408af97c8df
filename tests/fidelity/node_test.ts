// node: a Map of half a million entries and an array of objects; fingerprint a SHA-256 over them.
import { assertEquals } from "../_assert.ts";
import { fidelity, Pipe } from "./_harness.ts";

const SCRIPT = `
const crypto = require("crypto");
const rl = require("readline").createInterface({ input: process.stdin });
globalThis.crypto2 = crypto;
rl.on("line", (line) => {
  try {
    const r = (0, eval)(line);
    process.stdout.write("ok " + (r === undefined ? "" : String(r)) + "\\n");
  } catch (e) {
    process.stdout.write("err " + e + "\\n");
  }
});
rl.on("close", () => process.exit(0));
`;

fidelity({
  name: "node",
  binary: "node",
  async start() {
    const p = new Pipe("node", ["-e", SCRIPT]);
    await p.request(
      "globalThis.m = new Map(); for (let i = 0; i < 500000; i++) m.set('k' + i, { i, s: 'v'.repeat(i % 30) }); m.size",
    );
    return {
      pid: p.pid,
      fingerprint: () =>
        p.request(
          "(() => { const h = crypto2.createHash('sha256'); for (const [k, v] of m) h.update(k + ':' + v.i + v.s + ';'); return h.digest('hex'); })()",
        ),
      async change(round) {
        await p.request(
          `for (let i = ${
            round % 2
          }; i < 500000; i += 2) m.delete('k' + i); globalThis.junk = Array.from({ length: 300000 }, (_, i) => ({ i, a: new Array(8).fill(i) })); 0`,
        );
        await p.request(
          "globalThis.bufs = Array.from({ length: 64 }, () => Buffer.alloc(1 << 20, 7)); for (let i = 0; i < 200000; i++) m.set('n' + i, { i, s: 'w' }); junk = null; bufs = null; 0",
        );
      },
      async use(round) {
        assertEquals(
          await p.request(`m.set('use', { i: ${round}, s: '' }); m.get('use').i + ',' + m.size`),
          `${round},500001`,
        );
        await p.request("m.delete('use')");
      },
      async exit() {
        await p.closeInput();
        return (await p.status).code;
      },
      close: () => p.close(),
    };
  },
});
