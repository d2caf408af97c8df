// python3: a dict of a million entries; fingerprint a SHA-256 of its sorted items.
import { assertEquals } from "../_assert.ts";
import { fidelity, Pipe, PYTHON_REPL } from "./_harness.ts";

fidelity({
  name: "python3",
  binary: "python3",
  async start() {
    const p = new Pipe("python3", ["-u", "-c", PYTHON_REPL]);
    await p.request("d = {i: str(i) * 3 for i in range(1000000)}");
    return {
      pid: p.pid,
      fingerprint: () => p.request("_r = hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()"),
      async change(round) {
        await p.request(
          `[d.pop(i) for i in range(${
            round % 2
          }, 1000000, 2)]; big = [bytearray(1 << 20) for _ in range(64)]; ` +
            `e = {i: [i] * 5 for i in range(300000)}`,
        );
        await p.request(`del big; del e; d.update({-i: 'x' * (i % 50) for i in range(400000)})`);
      },
      async use(round) {
        assertEquals(
          await p.request(`d[-7] = ${round}; _r = (len(d), d[-7], d[999999])`),
          `(1000001, ${round}, '999999999999999999')`,
        );
        await p.request("del d[-7]");
      },
      async exit() {
        await p.write("import sys; sys.exit(0)\n");
        return (await p.status).code;
      },
      close: () => p.close(),
    };
  },
});
