package rampart.jvm;

import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * bench/jvm_overhead.py's in-process companion: what the probe's request path and sender cost,
 * the way they are now and the way they were, in thread CPU time and bytes allocated (both
 * counted for this thread only, so other work on the machine does not count). Not run in
 * production; {@code java -cp rampart-jvm-agent.jar rampart.jvm.PathCost [iterations]}.
 *
 * <ul>
 * <li>request bracket: the two nested Filter.Chain.doFilter entries and exits of a JDK
 *     HttpServer request; before, an int[] thread-local plus a request thread-local set and
 *     removed per request; now {@link Hooks#requestEnter}/{@link Hooks#requestExit}.</li>
 * <li>encoding a batch of 64 events like /read's (path, 32-frame stack, request): before,
 *     {@link Protocol#encode} per event then one buffer for the batch; now {@link FrameBuffer}.</li>
 * <li>JSON string escaping of a stack frame: per character before, in runs now.</li>
 * </ul>
 */
public final class PathCost {
    private PathCost() {}

    static Object sink;

    private static final ThreadLocal<int[]> OLD_STATE = new ThreadLocal<int[]>() {
        @Override
        protected int[] initialValue() {
            return new int[2];
        }
    };
    private static final ThreadLocal<Object> OLD_REQUEST = new ThreadLocal<Object>();

    private static void oldEnter(Object exchange) {
        int[] st = OLD_STATE.get();
        if (st[1]++ == 0) OLD_REQUEST.set(exchange);
    }

    private static void oldExit() {
        int[] st = OLD_STATE.get();
        if (st[1] > 0 && --st[1] == 0) OLD_REQUEST.remove();
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    /** Json.string as it was: one append per character. */
    private static void oldString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (Character.isSurrogate(c)) {
                        sb.append("\\ufffd");
                    } else if (c < 0x20) {
                        sb.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 15]);
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }

    static Map<String, Object> event(int i) {
        List<String> stack = new ArrayList<String>();
        for (int f = 0; f < 32; f++) {
            stack.add("sun.net.httpserver.ServerImpl$Exchange.run" + f + "(ServerImpl.java:" + (700 + f) + ")");
        }
        Map<String, Object> headers = new LinkedHashMap<String, Object>();
        headers.put("user-agent", "wrk");
        headers.put("host", "127.0.0.1:41234");
        Map<String, Object> request = new LinkedHashMap<String, Object>();
        request.put("method", "GET");
        request.put("url", "/read?path=/tmp/rampart-bench-jvm-x/data.txt");
        request.put("remote_addr", "127.0.0.1");
        request.put("params", java.util.Collections.singletonMap("path",
                (Object) Arrays.asList("/tmp/rampart-bench-jvm-x/data.txt")));
        request.put("headers", headers);
        Map<String, Object> d = new LinkedHashMap<String, Object>();
        d.put("hook", "java.io.FileInputStream.<init>");
        d.put("kind", "file");
        d.put("args", Arrays.asList("/tmp/rampart-bench-jvm-x/data" + i + ".txt"));
        d.put("stack", stack);
        d.put("blocked", false);
        d.put("request", request);
        return Protocol.envelope(Protocol.TRACE, 4242, "17.0.15", Probe.VERSION, 1764000000000L + i, d);
    }

    interface Body {
        void run(int i);
    }

    /** [ns of thread CPU, bytes allocated] per call, best of 5 rounds. */
    static double[] measure(Body body, int n) {
        java.lang.management.ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        com.sun.management.ThreadMXBean alloc = (com.sun.management.ThreadMXBean) mx;
        long tid = Thread.currentThread().getId();
        double bestNs = Double.MAX_VALUE, bytes = 0;
        for (int round = 0; round < 6; round++) { // the first is the JIT's warm-up
            long a0 = alloc.getThreadAllocatedBytes(tid);
            long t0 = mx.getCurrentThreadCpuTime();
            for (int i = 0; i < n; i++) body.run(i);
            long ns = mx.getCurrentThreadCpuTime() - t0;
            long b = alloc.getThreadAllocatedBytes(tid) - a0;
            if (round > 0 && (double) ns / n < bestNs) {
                bestNs = (double) ns / n;
                bytes = (double) b / n;
            }
        }
        return new double[] {bestNs, bytes};
    }

    static void report(String what, double[] before, double[] now) {
        System.out.printf("%-40s before %8.0f ns %8.0f B   now %8.0f ns %8.0f B%n", what,
                before[0], before[1], now[0], now[1]);
    }

    public static void main(String[] argv) {
        final int n = argv.length > 0 ? Integer.parseInt(argv[0]) : 200000;
        final Object exchange = new Object();
        report("request bracket (2 nested, per request)", measure(new Body() {
            @Override
            public void run(int i) {
                oldEnter(exchange);
                oldEnter(exchange);
                oldExit();
                oldExit();
            }
        }, n), measure(new Body() {
            @Override
            public void run(int i) {
                Hooks.requestEnter(exchange);
                Hooks.requestEnter(exchange);
                Hooks.requestExit();
                Hooks.requestExit();
            }
        }, n));

        final int batchSize = 64;
        final List<Map<String, Object>> batch = new ArrayList<Map<String, Object>>();
        for (int i = 0; i < batchSize; i++) batch.add(event(i));
        final int batches = Math.max(1, n / 200);
        double[] oldEncode = measure(new Body() {
            @Override
            public void run(int i) {
                List<byte[]> frames = new ArrayList<byte[]>(batch.size());
                int total = 0;
                for (Map<String, Object> e : batch) {
                    byte[] f = Protocol.encode(e);
                    frames.add(f);
                    total += f.length;
                }
                ByteBuffer buf = ByteBuffer.allocate(total);
                for (byte[] f : frames) buf.put(f);
                sink = buf;
            }
        }, batches);
        final FrameBuffer fb = new FrameBuffer();
        double[] newEncode = measure(new Body() {
            @Override
            public void run(int i) {
                fb.clear();
                for (Map<String, Object> e : batch) fb.add(e, Protocol.MAX_FRAME);
                sink = fb.contents();
            }
        }, batches);
        report("encode one event (batch of " + batchSize + ")", per(oldEncode, batchSize), per(newEncode, batchSize));

        final String frame = "sun.net.httpserver.ServerImpl$Exchange.run(ServerImpl.java:772)";
        final StringBuilder sb = new StringBuilder(256);
        report("JSON string of one stack frame", measure(new Body() {
            @Override
            public void run(int i) {
                sb.setLength(0);
                oldString(sb, frame);
            }
        }, n), measure(new Body() {
            @Override
            public void run(int i) {
                sb.setLength(0);
                Json.string(sb, frame);
            }
        }, n));
    }

    private static double[] per(double[] m, int k) {
        return new double[] {m[0] / k, m[1] / k};
    }
}
