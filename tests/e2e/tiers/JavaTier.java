// Middle tier in Java: a thread-pool server (com.sun.net.httpserver.HttpServer with
// Executors.newFixedThreadPool(8); the pool thread that reads a request also makes its
// outbound call), outbound calls with HttpURLConnection (the JDK's keep-alive cache).
//
//   javac -d OUT JavaTier.java && java -cp OUT JavaTier IP PORT TO MODE POD
//
// Same contract as go_tier.go: GET /healthz -> "ok"; GET / -> GET http://TO/ (MODE "fwd":
// forwarding the incoming X-Virtual-Env header, "plain": not), answers
// {"tier", "got_header", "backend", "backend_got_header"} (502 + "error" on failure).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class JavaTier {
  static final Pattern POD = Pattern.compile("\"pod\":\\s*\"([^\"]*)\"");
  static final Pattern GOT = Pattern.compile("\"got_header\":\\s*(null|\"([^\"]*)\")");

  static String q(String s) {
    if (s == null) return "null";
    return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
  }

  static void reply(HttpExchange ex, int code, String body) throws IOException {
    byte[] b = body.getBytes(StandardCharsets.UTF_8);
    ex.getResponseHeaders().set("Content-Type", "application/json");
    ex.sendResponseHeaders(code, b.length);
    try (OutputStream os = ex.getResponseBody()) {
      os.write(b);
    }
  }

  public static void main(String[] a) throws Exception {
    if (a.length != 5) {
      System.err.println("usage: JavaTier IP PORT TO fwd|plain POD");
      System.exit(2);
    }
    final String to = a[2];
    final boolean fwd = a[3].equals("fwd");
    final String pod = a[4];
    HttpServer s = HttpServer.create(new InetSocketAddress(a[0], Integer.parseInt(a[1])), 256);
    s.createContext("/healthz", ex -> {
      ex.getRequestBody().readAllBytes();
      reply(ex, 200, "ok\n");
    });
    s.createContext("/", ex -> {
      ex.getRequestBody().readAllBytes();
      String in = ex.getRequestHeaders().getFirst("X-Virtual-Env");
      String head = "{\"tier\": " + q(pod) + ", \"got_header\": " + q(in);
      try {
        HttpURLConnection c = (HttpURLConnection) new URL("http://" + to + "/").openConnection();
        c.setConnectTimeout(5000);
        c.setReadTimeout(5000);
        if (fwd && in != null) c.setRequestProperty("X-Virtual-Env", in);
        String body;
        try (InputStream is = c.getInputStream()) {  // read fully and close: back to the cache
          body = new String(is.readAllBytes(), StandardCharsets.UTF_8);
        }
        Matcher m = POD.matcher(body);
        Matcher g = GOT.matcher(body);
        if (!m.find()) throw new IOException("bad answer: " + body);
        String got = g.find() ? g.group(2) : null;
        reply(ex, 200, head + ", \"backend\": " + q(m.group(1)) + ", \"backend_got_header\": "
            + q(got) + "}\n");
      } catch (IOException e) {
        reply(ex, 502, head + ", \"error\": " + q(e.toString()) + "}\n");
      }
    });
    s.setExecutor(Executors.newFixedThreadPool(8));
    s.start();
  }
}
