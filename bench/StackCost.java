// What the JVM probe's event costs on the app's thread for its stack, before and after the
// stack's text was deferred to the sender thread (Probe.LazyStack): capturing a backtrace
// (`new Throwable()`) vs capturing and turning it into StackTraceElements and strings
// (`getStackTrace()` + formatting, now done by the sender). Thread CPU time, not wall time,
// so other work on the machine does not count. At a stack depth like a JDK HttpServer
// handler's (~30 frames):
//
//   java bench/StackCost.java [depth] [iterations]
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.util.ArrayList;
import java.util.List;

public class StackCost {
    static Object sink;

    static Object capture(boolean format) {
        Throwable t = new Throwable();
        if (!format) return t;
        StackTraceElement[] st = t.getStackTrace();
        List<String> out = new ArrayList<>(32);
        for (StackTraceElement e : st) {
            if (out.size() >= 32) break;
            String where = e.getFileName() == null ? "Unknown Source"
                    : e.getLineNumber() >= 0 ? e.getFileName() + ":" + e.getLineNumber() : e.getFileName();
            out.add(e.getClassName() + "." + e.getMethodName() + "(" + where + ")");
        }
        return out;
    }

    static long run(int depth, boolean format, int n) {
        if (depth > 0) return run(depth - 1, format, n);
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        long t0 = mx.getCurrentThreadCpuTime();
        for (int i = 0; i < n; i++) sink = capture(format);
        return (mx.getCurrentThreadCpuTime() - t0) / n;
    }

    public static void main(String[] args) {
        int depth = args.length > 0 ? Integer.parseInt(args[0]) : 30;
        int n = args.length > 1 ? Integer.parseInt(args[1]) : 200_000;
        for (int round = 0; round < 5; round++) {
            long backtrace = run(depth, false, n);
            long full = run(depth, true, n);
            System.out.printf("depth %d: backtrace only %d ns, backtrace + getStackTrace + format %d ns%n",
                    depth, backtrace, full);
        }
    }
}
