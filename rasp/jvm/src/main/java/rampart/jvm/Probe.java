package rampart.jvm;

import java.io.File;
import java.lang.instrument.Instrumentation;
import java.lang.reflect.Method;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;

/**
 * One running probe: hooks installed by {@link Transformer}, events shipped by
 * {@link Transport}, tables applied by {@link Policy}. Loaded by the bootstrap loader;
 * {@link Agent} calls {@link #main} by reflection.
 *
 * <p>Agent arguments: {@code key=value} pairs separated by {@code ;}, values percent-encoded
 * ({@code %3B} for ;): {@code socket} (agent socket path, default /run/rampart/probe.sock, or
 * RAMPART_SOCKET), {@code action} ({@code attach}, the default, or {@code detach}), {@code fifo}
 * (the directory of the FIFO pair the agent made for this pid: the route on JDK 8-15).
 */
public final class Probe {
    public static final String VERSION = "0.1.0";
    static final String DEFAULT_SOCKET = "/run/rampart/probe.sock";

    private static Probe current;

    final Instrumentation inst;
    final String mode;
    final long pid;
    final String runtimeVersion = System.getProperty("java.version", "");
    final Policy policy = new Policy(Hooks.SPECS.length);
    final Transformer transformer = new Transformer();
    final Transport transport;
    private Thread shutdownHook;

    private final AtomicLong sent = new AtomicLong();
    private final AtomicLong blocked = new AtomicLong();
    /** LongAdder: app threads over a quota all count here at once; one atomic would bounce */
    private final ConcurrentHashMap<String, LongAdder> droppedBy = new ConcurrentHashMap<String, LongAdder>();
    private final AtomicInteger hellos = new AtomicInteger();
    private volatile String lastRefusal;

    private Probe(Instrumentation inst, String mode, String socket, String fifo) {
        this.inst = inst;
        this.mode = mode;
        this.pid = ownPid();
        this.transport = new Transport(this, socket, fifo);
    }

    /** Entry point from {@link Agent}: mode is "attached" (agentmain) or "sdk" (premain). */
    public static synchronized String main(String mode, String args, Instrumentation inst) {
        Map<String, String> opts = parseArgs(args);
        String action = opts.containsKey("action") ? opts.get("action") : "attach";
        if ("detach".equals(action)) {
            if (current == null) return "not running";
            current.detach("detach");
            return "detached";
        }
        if (current != null) {
            current.transport.helloAgain = true; // docs/probe-contract.md: a second start says hello again
            return "already running";
        }
        String fifo = opts.get("fifo");
        if (fifo != null && fifo.isEmpty()) fifo = null;
        if (fifo == null && !Transport.supported()) {
            throw new IllegalStateException("Java " + System.getProperty("java.version")
                    + " has no Unix-domain SocketChannel (JDK 16+) and no FIFO pair was given"
                    + " (fifo=DIR): the probe cannot reach the agent; attach with rasp-attach");
        }
        String socket = opts.get("socket");
        if (socket == null || socket.isEmpty()) socket = System.getenv("RAMPART_SOCKET");
        if (socket == null || socket.isEmpty()) socket = DEFAULT_SOCKET;
        long t0 = System.nanoTime();
        Probe p = new Probe(inst, mode, socket, fifo);
        long retransformNs = p.start();
        current = p;
        Log.info("probe " + VERSION + " started (" + mode + ") in "
                + (System.nanoTime() - t0) / 1000000 + " ms, retransform "
                + retransformNs / 1000000 + " ms");
        return "started";
    }

    /** Returns the time spent retransforming the already-loaded hooked classes, in ns. */
    private long start() {
        addReads();
        inst.addTransformer(transformer, true);
        Hooks.probe = this;
        long t0 = System.nanoTime();
        retransformTargets();
        long retransformNs = System.nanoTime() - t0;
        transport.start();
        shutdownHook = new Thread(new Runnable() {
            @Override
            public void run() {
                Hooks.markInternal();
                Hooks.probe = null;
                transport.stop("jvm shutdown");
            }
        }, "rampart-shutdown");
        Runtime.getRuntime().addShutdownHook(shutdownHook);
        return retransformNs;
    }

    /** Restores the original bytecode of every hooked class and stops reporting. */
    void detach(String reason) {
        synchronized (Probe.class) { // the lock main() holds: attach and detach never interleave
            if (current != this) return;
            current = null;
        }
        Hooks.probe = null;
        inst.removeTransformer(transformer);
        retransformTargets(); // without our transformer: the classes get their original bytes back
        try {
            Runtime.getRuntime().removeShutdownHook(shutdownHook);
        } catch (IllegalStateException ignored) {
            // already shutting down
        }
        transport.stop(reason);
        Log.info("detached (" + reason + ")");
    }

    private void retransformTargets() {
        List<Class<?>> targets = new ArrayList<Class<?>>();
        for (Class<?> c : inst.getAllLoadedClasses()) {
            if (inst.isModifiableClass(c) && transformer.targets(c)) targets.add(c);
        }
        try {
            // one call, one safepoint for all of them
            inst.retransformClasses(targets.toArray(new Class<?>[0]));
        } catch (Throwable all) {
            // one class refused fails the batch: go one by one, so only that one is left out
            for (Class<?> c : targets) {
                try {
                    inst.retransformClasses(c);
                } catch (Throwable t) {
                    Log.warn("cannot retransform " + c.getName() + ": " + t);
                }
            }
        }
    }

    /**
     * JDK 9+: instrumented classes live in named modules (java.base, java.naming,
     * jdk.httpserver), and a named module reads only what it declares; give each of them a
     * read edge to the bootstrap loader's unnamed module where Hooks lives.
     */
    private void addReads() {
        try {
            Method getModule = Class.class.getMethod("getModule");
            Object ours = getModule.invoke(Hooks.class);
            Class<?> moduleClass = Class.forName("java.lang.Module");
            Object layer = Class.forName("java.lang.ModuleLayer").getMethod("boot").invoke(null);
            Method find = layer.getClass().getMethod("findModule", String.class);
            Method redefine = Instrumentation.class.getMethod("redefineModule", moduleClass,
                    Set.class, Map.class, Map.class, Set.class, Map.class);
            for (String name : new String[] {"java.base", "java.naming", "jdk.httpserver"}) {
                Optional<?> m = (Optional<?>) find.invoke(layer, name);
                if (!m.isPresent()) continue;
                redefine.invoke(inst, m.get(), Collections.singleton(ours),
                        Collections.emptyMap(), Collections.emptyMap(),
                        Collections.emptySet(), Collections.emptyMap());
            }
        } catch (ClassNotFoundException | NoSuchMethodException e) {
            // JDK 8: no modules, nothing to do
        } catch (Throwable t) {
            Log.warn("cannot add module reads: " + t);
        }
    }

    // ------------------------------------------------------------------ the hot path

    /** a detection check threw once (reported once; the calls went through) */
    private volatile boolean detectFailed;

    /**
     * One hooked call on the app's thread. Returns the id of the policy that blocks it, or
     * null. Order (docs/probe-contract.md): build the event, block rules, quota, filter,
     * enqueue. A blocked call is always reported: the quota limits what is sent, never what
     * is refused, so flooding a hook cannot switch its blocking off.
     */
    String onCall(Hooks.Spec spec, Object self, Object[] args, Object request) {
        Set<String> off = policy.hooksDisabled;
        if (!off.isEmpty() && off.contains(spec.name)) return null;
        Policy.Table blocks = policy.blocks;
        Detect detect = policy.detect;
        long now = System.currentTimeMillis();
        boolean quotaChecked = false;
        // detection checks run only for a kind a block-mode rule looks at, inside a request
        boolean detecting = request != null && detect.covers(spec.kind);
        if (blocks.rules.isEmpty() && !detecting) {
            // nothing can be blocked: a call over its quota costs no more than this check
            if (!policy.take(spec.id, now)) {
                drop("quota");
                return null;
            }
            quotaChecked = true;
        }
        List<String> a = Args.of(spec.id, self, args);
        if (a == null) return null;
        Policy.Table filters = policy.filters;
        // the rules match on the joined text: no rules (the default), no string built
        String joined = blocks.rules.isEmpty() && filters.rules.isEmpty() ? null : join(a);
        int depth = policy.stackDepth;
        // The stack is the costly part (a Throwable's trace): taken before the quota only
        // when a block rule matches on it.
        List<String> stack = blocks.needsStack ? stack(depth) : null;
        Policy.Rule block = blocks.rules.isEmpty() ? null : blocks.first(spec, joined, stack);
        if (block != null) {
            blocked.incrementAndGet();
            if (stack == null) stack = stack(depth);
            transport.offer(trace(spec, a, stack, request, block.policyId));
            return block.policyId;
        }
        if (detecting) {
            String rule = null;
            Map<String, Object> req = null;
            try {
                req = RequestInfo.of(request);
                rule = detect.check(spec.kind, spec.name, a, req);
            } catch (Throwable t) {
                // a check that fails lets the call through (and says so once)
                if (!detectFailed) {
                    detectFailed = true;
                    Log.warn("detection check failed: " + t);
                }
            }
            if (rule != null) {
                blocked.incrementAndGet();
                if (stack == null) stack = stack(depth);
                transport.offer(trace(spec, a, stack, req, rule));
                return rule;
            }
            if (req != null) request = req; // read once: the event reuses it
        }
        if (!quotaChecked && !policy.take(spec.id, now)) {
            drop("quota");
            return null;
        }
        if (stack == null) stack = stack(depth);
        if (!filters.rules.isEmpty() && filters.first(spec, joined, stack) != null) {
            drop("filter");
            return null;
        }
        transport.offer(trace(spec, a, stack, request, null));
        return null;
    }

    private Map<String, Object> trace(Hooks.Spec spec, List<String> args, List<String> stack,
            Object request, String blockedBy) {
        Map<String, Object> d = new LinkedHashMap<String, Object>();
        d.put("hook", spec.name);
        d.put("kind", spec.kind);
        d.put("args", args);
        d.put("stack", stack);
        d.put("blocked", blockedBy != null);
        if (blockedBy != null) d.put("policy_id", blockedBy);
        if (request instanceof Map) {
            d.put("request", request); // already read (by the detection checks)
        } else if (request != null) {
            try {
                d.put("request", RequestInfo.of(request));
            } catch (Throwable t) {
                // a request object in a state we cannot read: the event goes without it
            }
        }
        return Protocol.envelope(Protocol.TRACE, pid, runtimeVersion, VERSION,
                System.currentTimeMillis(), d);
    }

    private static String join(List<String> a) {
        if (a.size() == 1) return a.get(0);
        StringBuilder sb = new StringBuilder();
        for (String s : a) {
            if (sb.length() > 0) sb.append(' ');
            sb.append(s);
        }
        return sb.toString();
    }

    /**
     * The Java stack, innermost first, without the probe's own frames. Only the backtrace is
     * taken here, on the app's thread ({@code new Throwable()}: the VM records methods and
     * bytecode indexes); turning it into text ({@code getStackTrace()}: StackTraceElement
     * objects, names, line numbers — most of an event's cost) waits until someone reads the
     * list: the sender thread as it encodes the event, or a policy rule that matches on the
     * stack.
     */
    static List<String> stack(int depth) {
        return new LazyStack(new Throwable(), depth);
    }

    static final class LazyStack extends java.util.AbstractList<String> {
        private Throwable trace;
        private final int depth;
        private List<String> frames;

        LazyStack(Throwable trace, int depth) {
            this.trace = trace;
            this.depth = depth;
        }

        // one thread at a time: the app's thread hands the event to the sender through the
        // queue (a happens-before edge), and does not touch it after
        private List<String> frames() {
            if (frames == null) {
                frames = format(trace.getStackTrace(), depth);
                trace = null;
            }
            return frames;
        }

        @Override
        public String get(int i) {
            return frames().get(i);
        }

        @Override
        public int size() {
            return frames().size();
        }
    }

    static List<String> format(StackTraceElement[] st, int depth) {
        List<String> out = new ArrayList<String>(Math.min(depth, st.length));
        for (StackTraceElement e : st) {
            if (out.size() >= depth) break;
            if (e.getClassName().startsWith("rampart.jvm.")) continue;
            // Java's own format; the hooked method's frame has no line (its pc is in the
            // code the probe added, which has no line number)
            String where = e.getFileName() == null ? "Unknown Source"
                    : e.getLineNumber() >= 0 ? e.getFileName() + ":" + e.getLineNumber() : e.getFileName();
            out.add(e.getClassName() + "." + e.getMethodName() + "(" + where + ")");
        }
        return out;
    }

    void hookFailed(Hooks.Spec spec, Throwable t) {
        drop("error");
        Log.warn("hook " + spec.name + " disabled after an internal error: " + t);
    }

    // ------------------------------------------------------------------ messages

    void onAgentMessage(Map<String, Object> message) {
        int type = (int) (long) (Long) message.get("message_type");
        if (type == Protocol.EXIT) {
            // the agent asks us to stop reporting: detach, off the reader thread
            Thread t = new Thread(new Runnable() {
                @Override
                public void run() {
                    Hooks.markInternal();
                    detach("agent asked");
                }
            }, "rampart-detach");
            t.setDaemon(true);
            t.start();
        } else if (type == Protocol.ERROR) {
            @SuppressWarnings("unchecked")
            Map<String, Object> d = (Map<String, Object>) message.get("data");
            String why = d.get("code") + ": " + d.get("reason");
            if (!why.equals(lastRefusal)) { // the probe retries with backoff: say it once
                lastRefusal = why;
                Log.warn("agent refused the probe: " + why);
            }
        } else {
            policy.apply(message, Hooks.SPECS);
        }
    }

    Map<String, Object> hello(boolean alreadyRunning) {
        hellos.incrementAndGet();
        Map<String, Object> d = new LinkedHashMap<String, Object>();
        d.put("mode", mode);
        Set<String> hooks = new LinkedHashSet<String>();
        // Installed hooks, and those waiting for their class to load (JNDI, JDBC drivers);
        // a method this JDK does not have, or a class that could not be instrumented, is
        // left out.
        for (Hooks.Spec s : Hooks.SPECS) {
            boolean waiting = !transformer.seenClasses.contains(s.owner)
                    && !transformer.failedClasses.contains(s.owner);
            if (!s.failed && (transformer.installed.contains(s.name) || waiting)) hooks.add(s.name);
        }
        for (String[] b : Hooks.REQUEST_BRACKETS) {
            if (transformer.installed.contains(b[3])) hooks.add(b[3]);
        }
        d.put("hooks", new ArrayList<Object>(hooks));
        d.put("already_running", alreadyRunning);
        d.put("protocol_version", (long) Protocol.PROTOCOL_VERSION);
        return Protocol.envelope(Protocol.HELLO, pid, runtimeVersion, VERSION,
                System.currentTimeMillis(), d);
    }

    int helloCount() {
        return hellos.get();
    }

    Map<String, Object> heartbeat() {
        Map<String, Object> d = new LinkedHashMap<String, Object>();
        long dropped = 0;
        Map<String, Object> by = new LinkedHashMap<String, Object>();
        for (Map.Entry<String, LongAdder> e : droppedBy.entrySet()) {
            long n = e.getValue().sum();
            by.put(e.getKey(), n);
            dropped += n;
        }
        d.put("sent", sent.get());
        d.put("dropped", dropped);
        d.put("blocked", blocked.get());
        d.put("dropped_by", by);
        d.put("policies", policy.uuids());
        d.put("queue", (long) transport.queue.size());
        return Protocol.envelope(Protocol.HEARTBEAT, pid, runtimeVersion, VERSION,
                System.currentTimeMillis(), d);
    }

    Map<String, Object> exit(String reason) {
        Map<String, Object> d = new LinkedHashMap<String, Object>();
        d.put("reason", reason);
        return Protocol.envelope(Protocol.EXIT, pid, runtimeVersion, VERSION,
                System.currentTimeMillis(), d);
    }

    void drop(String reason) {
        dropMany(reason, 1);
    }

    void dropMany(String reason, int n) {
        if (n <= 0) return;
        LongAdder c = droppedBy.get(reason);
        if (c == null) {
            LongAdder fresh = new LongAdder();
            c = droppedBy.putIfAbsent(reason, fresh);
            if (c == null) c = fresh;
        }
        c.add(n);
    }

    void sent(int n) {
        sent.addAndGet(n);
    }

    // ------------------------------------------------------------------ helpers

    static Map<String, String> parseArgs(String args) {
        Map<String, String> out = new LinkedHashMap<String, String>();
        if (args == null) return out;
        for (String kv : args.split(";")) {
            int eq = kv.indexOf('=');
            if (eq <= 0) continue;
            out.put(kv.substring(0, eq).trim(), percentDecode(kv.substring(eq + 1)));
        }
        return out;
    }

    /** %XX only (no '+' as space: these are paths, not form fields). */
    static String percentDecode(String s) {
        if (s.indexOf('%') < 0) return s;
        byte[] in = s.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        java.io.ByteArrayOutputStream b = new java.io.ByteArrayOutputStream(in.length);
        for (int i = 0; i < in.length; i++) {
            if (in[i] == '%' && i + 2 < in.length) {
                int hi = Character.digit(in[i + 1], 16), lo = Character.digit(in[i + 2], 16);
                if (hi >= 0 && lo >= 0) {
                    b.write(hi * 16 + lo);
                    i += 2;
                    continue;
                }
            }
            b.write(in[i]);
        }
        return new String(b.toByteArray(), java.nio.charset.StandardCharsets.UTF_8);
    }

    /** The pid as this JVM sees it (its pid namespace's): /proc/self names it on Linux. */
    static long ownPid() {
        try {
            Object handle = Class.forName("java.lang.ProcessHandle").getMethod("current").invoke(null);
            return (Long) handle.getClass().getMethod("pid").invoke(handle);
        } catch (Throwable t) {
            try {
                return Long.parseLong(new File("/proc/self").getCanonicalFile().getName());
            } catch (Exception e) {
                return 0;
            }
        }
    }
}
