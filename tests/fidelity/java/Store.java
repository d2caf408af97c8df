// The JVM fidelity program: a HashMap of half a million entries behind a line protocol on stdin/stdout.
//   fp          "ok HEX": SHA-256 over the entries in key order
//   change R    remove every other entry, allocate and drop ~200 MiB, add 200,000 entries; "ok"
//   use R       put key -1, read it back, remove it; "ok SIZE,VALUE"
//   exit        exits 0
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.TreeMap;

public class Store {
  static HashMap<Integer, String> map = new HashMap<>();

  public static void main(String[] args) throws Exception {
    for (int i = 0; i < 500_000; i++) map.put(i, "v" + i * 7);
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
    String line;
    while ((line = in.readLine()) != null) {
      String[] w = line.trim().split(" ");
      String answer;
      switch (w[0]) {
        case "fp": {
          MessageDigest md = MessageDigest.getInstance("SHA-256");
          for (var e : new TreeMap<>(map).entrySet()) {
            md.update((e.getKey() + ":" + e.getValue() + ";").getBytes(StandardCharsets.UTF_8));
          }
          StringBuilder sb = new StringBuilder();
          for (byte b : md.digest()) sb.append(String.format("%02x", b));
          answer = "ok " + sb;
          break;
        }
        case "change": {
          int r = Integer.parseInt(w[1]);
          for (int i = r % 2; i < 500_000; i += 2) map.remove(i);
          List<byte[]> junk = new ArrayList<>();
          for (int i = 0; i < 200; i++) junk.add(new byte[1 << 20]);
          for (int i = 0; i < 200_000; i++) map.put(1_000_000 + i, "n" + i);
          answer = "ok " + junk.size();
          break;
        }
        case "use": {
          map.put(-1, w[1]);
          answer = "ok " + map.size() + "," + map.get(-1);
          map.remove(-1);
          break;
        }
        case "exit":
          System.exit(0);
        default:
          answer = "err unknown " + w[0];
      }
      System.out.println(answer);
      System.out.flush();
    }
  }
}
