// A deliberately vulnerable web app on the JDK's own HTTP server (no dependencies), with one
// endpoint per sink the JVM probe hooks, each fed from the query string. Loopback only.
//
//   javac -d build/tests/jvm tests/apps/jvm/VulnApp.java
//   java -cp build/tests/jvm VulnApp        -> prints "ready <port>" once it listens
//
// Every endpoint answers 200 with the sink's result, 403 "blocked: <message>" when the probe
// refused the call (SecurityException), 500 "error: <exception>" otherwise: the app's own
// error path, as a real app would have one.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.io.OutputStream;
import java.io.Serializable;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.Executors;

public class VulnApp {
    /** A class an attacker would ship in a serialized payload. */
    public static class Gadget implements Serializable {
        private static final long serialVersionUID = 1L;
        public String command = "id";
    }

    /** A script engine as a library would ship one (the JDK has none since 15): it "runs"
     *  a script by echoing it. What matters is that it is a javax.script.ScriptEngine. */
    public static class EchoEngine extends javax.script.AbstractScriptEngine {
        @Override
        public Object eval(String script, javax.script.ScriptContext context) {
            return "evaluated: " + script;
        }

        @Override
        public Object eval(java.io.Reader reader, javax.script.ScriptContext context) {
            return "evaluated a reader";
        }

        @Override
        public javax.script.Bindings createBindings() {
            return new javax.script.SimpleBindings();
        }

        @Override
        public javax.script.ScriptEngineFactory getFactory() {
            return null;
        }
    }

    /** A loader that defines classes from bytes: how memory-resident webshells get in. */
    static class ByteLoader extends ClassLoader {
        ByteLoader() {
            super(null);
        }

        Class<?> define(String name, byte[] b) {
            return defineClass(name, b, 0, b.length);
        }
    }

    interface Sink {
        String call(Map<String, String> q) throws Exception;
    }

    public static void main(String[] args) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 64);
        route(server, "/ok", q -> "ok");
        route(server, "/exec", q -> {
            Process p = new ProcessBuilder(Arrays.asList(q.get("cmd").split(" ")))
                    .redirectErrorStream(true).start();
            byte[] out = readAll(p.getInputStream());
            p.waitFor();
            return new String(out, StandardCharsets.UTF_8);
        });
        route(server, "/read", q -> {
            try (InputStream in = new FileInputStream(q.get("path"))) {
                return new String(readAll(in), StandardCharsets.UTF_8);
            }
        });
        route(server, "/write", q -> {
            try (OutputStream out = new FileOutputStream(q.get("path"))) {
                out.write(q.getOrDefault("data", "").getBytes(StandardCharsets.UTF_8));
            }
            return "written";
        });
        route(server, "/nio", q -> new String(Files.readAllBytes(Paths.get(q.get("path"))), StandardCharsets.UTF_8));
        route(server, "/delete", q -> String.valueOf(new File(q.get("path")).delete()));
        route(server, "/copy", q -> String.valueOf(Files.copy(Paths.get(q.get("from")), Paths.get(q.get("to")))));
        route(server, "/move", q -> String.valueOf(Files.move(Paths.get(q.get("from")), Paths.get(q.get("to")))));
        route(server, "/list", q -> {
            try (java.util.stream.Stream<java.nio.file.Path> s = Files.list(Paths.get(q.get("path")))) {
                return String.valueOf(s.count());
            }
        });
        route(server, "/connect", q -> {
            try (Socket s = new Socket()) {
                s.connect(new InetSocketAddress(q.getOrDefault("host", "127.0.0.1"), Integer.parseInt(q.get("port"))), 2000);
                return "connected";
            }
        });
        route(server, "/dns", q -> Arrays.toString(InetAddress.getAllByName(q.get("host"))));
        route(server, "/jndi", q -> {
            try {
                return String.valueOf(new javax.naming.InitialContext().lookup(q.get("name")));
            } catch (javax.naming.NamingException e) {
                return "naming error: " + e.getClass().getSimpleName();
            }
        });
        route(server, "/deser", q -> {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            try (ObjectOutputStream out = new ObjectOutputStream(buf)) {
                out.writeObject("gadget".equals(q.get("what")) ? new Gadget() : new ArrayList<>(Arrays.asList("a", "b")));
            }
            try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(buf.toByteArray()))) {
                return in.readObject().getClass().getName();
            }
        });
        route(server, "/define", q -> {
            byte[] b;
            try (InputStream in = VulnApp.class.getResourceAsStream("VulnApp$Gadget.class")) {
                b = readAll(in);
            }
            return new ByteLoader().define("VulnApp$Gadget", b).getName();
        });
        // SQL through whatever JDBC driver is on the class path (the tests put H2 there); the
        // connection and its first statement exist before any attach, as in a running app
        final java.sql.Connection db = openDatabase();
        route(server, "/sql", q -> {
            // string concatenation: the injectable kind the sql hooks must see whole
            try (java.sql.Statement st = db.createStatement();
                 java.sql.ResultSet rs = st.executeQuery("SELECT name FROM users WHERE name = '" + q.get("name") + "'")) {
                return rs.next() ? rs.getString(1) : "none";
            }
        });
        route(server, "/sqlp", q -> {
            try (java.sql.PreparedStatement st = db.prepareStatement("SELECT name FROM users WHERE name = ?")) {
                st.setString(1, q.get("name"));
                try (java.sql.ResultSet rs = st.executeQuery()) {
                    return rs.next() ? rs.getString(1) : "none";
                }
            }
        });
        route(server, "/eval", q -> String.valueOf(new EchoEngine().eval(q.get("code"))));
        // for bench/jvm_overhead.py: n file opens in a loop, answering ns per open
        route(server, "/repeat", q -> {
            int n = Integer.parseInt(q.getOrDefault("n", "1000"));
            long t0 = System.nanoTime();
            for (int i = 0; i < n; i++) new FileInputStream(q.get("path")).close();
            return Long.toString((System.nanoTime() - t0) / n);
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("ready " + server.getAddress().getPort());
        System.out.flush();
    }

    static java.sql.Connection openDatabase() {
        try {
            java.sql.Connection c = java.sql.DriverManager.getConnection("jdbc:h2:mem:vulnapp");
            try (java.sql.Statement st = c.createStatement()) {
                st.execute("CREATE TABLE users (name VARCHAR(64))");
                st.execute("INSERT INTO users VALUES ('alice'), ('bob')");
            }
            return c;
        } catch (java.sql.SQLException e) {
            return null; // no driver on the class path: /sql answers 500
        }
    }

    static void route(HttpServer server, String path, Sink sink) {
        server.createContext(path, ex -> {
            int code;
            String body;
            try {
                body = sink.call(query(ex));
                code = 200;
            } catch (SecurityException e) {
                code = 403;
                body = "blocked: " + e.getMessage();
            } catch (Exception e) {
                code = 500;
                body = "error: " + e;
            }
            byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(code, bytes.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(bytes);
            }
        });
    }

    static Map<String, String> query(HttpExchange ex) throws Exception {
        Map<String, String> q = new HashMap<>();
        String raw = ex.getRequestURI().getRawQuery();
        if (raw == null) return q;
        for (String pair : raw.split("&")) {
            int eq = pair.indexOf('=');
            if (eq > 0) {
                q.put(URLDecoder.decode(pair.substring(0, eq), "UTF-8"), URLDecoder.decode(pair.substring(eq + 1), "UTF-8"));
            }
        }
        return q;
    }

    static byte[] readAll(InputStream in) throws Exception {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        int n;
        while ((n = in.read(buf)) > 0) b.write(buf, 0, n);
        return b.toByteArray();
    }
}
