// A JVM (OpenJDK's `java`), with its default GC (G1) and with -XX:+UseSerialGC: a HashMap of half a million
// entries (tests/fidelity/java/Store.java); fingerprint a SHA-256 over its entries in key order.
//
// The JVM starts and ends threads by itself (compiler threads and GC workers are added as needed); cryo does
// not recreate or end threads yet, so the test turns that off (-XX:-UseDynamicNumberOfCompilerThreads,
// -XX:-UseDynamicNumberOfGCThreads) and lets the program reach a steady thread set before the checkpoint.
import { assertEquals } from "../_assert.ts";
import { fidelity, Pipe } from "./_harness.ts";

const source = new URL("./java/Store.java", import.meta.url).pathname;

for (const gc of [[], ["-XX:+UseSerialGC"]]) {
  fidelity({
    name: `java${gc.length ? "-serialgc" : "-g1"}`,
    binary: "java",
    async start() {
      const p = new Pipe("java", [
        "-Xmx1g",
        "-XX:-UseDynamicNumberOfCompilerThreads",
        "-XX:-UseDynamicNumberOfGCThreads",
        ...gc,
        source,
      ]);
      // Warm up: the JIT compiles the hot paths and the heap finds its size before the checkpoint.
      await p.request("fp", 300_000);
      await p.request("use 0");
      await p.request("fp");
      return {
        pid: p.pid,
        fingerprint: () => p.request("fp"),
        async change(round) {
          await p.request(`change ${round}`);
        },
        async use(round) {
          assertEquals(await p.request(`use ${round}`), `500001,${round}`);
        },
        async exit() {
          await p.write("exit\n");
          return (await p.status).code;
        },
        close: () => p.close(),
      };
    },
  });
}
