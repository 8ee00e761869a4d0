package rampart.jvm;

/**
 * The callbacks instrumented JDK classes call, and the table of what is hooked.
 *
 * <p>This class is loaded by the bootstrap class loader (the agent jar is appended to the
 * bootstrap search path), because the instrumented classes (java.lang.ProcessImpl, java.io.*,
 * javax.naming.*) are bootstrap classes and can only link to classes their loader sees.
 *
 * <p>Every callback is wrapped so that the app's call proceeds whatever happens in the probe:
 * a callback that throws disables its hook (once, counted as {@code dropped_by.error}). The
 * only exception that leaves {@link #enter} on purpose is the {@link SecurityException} of a
 * block rule, thrown before the sink runs.
 */
public final class Hooks {
    private Hooks() {}

    /** One hooked method: where it is, its event name and kind. */
    public static final class Spec {
        public final int id;
        /** internal class name (java/lang/ProcessImpl), method name, descriptor */
        public final String owner, method, desc;
        /** the hook's name in events (docs/probe-contract.md): the runtime's own API name */
        public final String name;
        public final String kind;
        /** set when a callback of this hook threw: the hook stays off for the JVM's life */
        volatile boolean failed;

        Spec(int id, String owner, String method, String desc, String name, String kind) {
            this.id = id;
            this.owner = owner;
            this.method = method;
            this.desc = desc;
            this.name = name;
            this.kind = kind;
        }
    }

    // Hook ids index SPECS; Probe.extractArgs switches on them.
    static final int PROCESS = 0, FILE_IN = 1, FILE_OUT = 2, RANDOM_ACCESS = 3, FILE_DELETE = 4,
            FILE_RENAME = 5, FILE_LIST = 6, NIO_OPEN = 7, NIO_DELETE = 8, SOCKET_CONNECT = 9,
            CHANNEL_CONNECT = 10, DNS = 11, JNDI = 12, JNDI_NAME = 13, DESERIALIZE = 14,
            DEFINE_CLASS = 15, SQL_EXECUTE = 16, SQL_QUERY = 17, SQL_UPDATE = 18,
            SQL_LARGE_UPDATE = 19, SQL_BATCH = 20, SQL_PREPARE = 21, SQL_PREPARE_CALL = 22,
            SCRIPT_EVAL = 23, NIO_COPY = 24, NIO_MOVE = 25, NIO_LIST = 26;

    /** Owners of the specs that apply to every class implementing an interface. */
    static final String JDBC_STATEMENT = "java/sql/Statement", JDBC_CONNECTION = "java/sql/Connection",
            SCRIPT_ENGINE = "javax/script/ScriptEngine";

    /** Interface (internal name) -> the owner of the specs its implementations get. */
    static final java.util.Map<String, String> IMPLEMENTED = new java.util.HashMap<String, String>();

    static {
        IMPLEMENTED.put("java/sql/Statement", JDBC_STATEMENT);
        IMPLEMENTED.put("java/sql/PreparedStatement", JDBC_STATEMENT);
        IMPLEMENTED.put("java/sql/CallableStatement", JDBC_STATEMENT);
        IMPLEMENTED.put("java/sql/Connection", JDBC_CONNECTION);
        IMPLEMENTED.put("javax/script/ScriptEngine", SCRIPT_ENGINE);
    }

    /**
     * Why these methods: each is the one place every public API of its family funnels into on
     * JDK 8 to 25 (Runtime.exec and ProcessBuilder.start both end in ProcessImpl.start;
     * Files.newInputStream/newOutputStream/readAllBytes/write/newBufferedReader all open
     * through the provider's newByteChannel; InetAddress.getByName calls getAllByName), so one
     * hook sees them all and an app cannot step around it through another overload.
     */
    private static final Spec[] DECLARED = {
        new Spec(PROCESS, "java/lang/ProcessImpl", "start",
                "([Ljava/lang/String;Ljava/util/Map;Ljava/lang/String;[Ljava/lang/ProcessBuilder$Redirect;Z)Ljava/lang/Process;",
                "java.lang.ProcessImpl.start", "process"),
        new Spec(FILE_IN, "java/io/FileInputStream", "<init>", "(Ljava/io/File;)V",
                "java.io.FileInputStream.<init>", "file"),
        new Spec(FILE_OUT, "java/io/FileOutputStream", "<init>", "(Ljava/io/File;Z)V",
                "java.io.FileOutputStream.<init>", "file"),
        new Spec(RANDOM_ACCESS, "java/io/RandomAccessFile", "<init>", "(Ljava/io/File;Ljava/lang/String;)V",
                "java.io.RandomAccessFile.<init>", "file"),
        new Spec(FILE_DELETE, "java/io/File", "delete", "()Z", "java.io.File.delete", "file"),
        new Spec(FILE_RENAME, "java/io/File", "renameTo", "(Ljava/io/File;)Z",
                "java.io.File.renameTo", "file"),
        new Spec(FILE_LIST, "java/io/File", "list", "()[Ljava/lang/String;", "java.io.File.list", "file"),
        new Spec(NIO_OPEN, "sun/nio/fs/UnixFileSystemProvider", "newByteChannel",
                "(Ljava/nio/file/Path;Ljava/util/Set;[Ljava/nio/file/attribute/FileAttribute;)Ljava/nio/channels/SeekableByteChannel;",
                "sun.nio.fs.UnixFileSystemProvider.newByteChannel", "file"),
        new Spec(NIO_DELETE, "sun/nio/fs/UnixFileSystemProvider", "implDelete", "(Ljava/nio/file/Path;Z)Z",
                "sun.nio.fs.UnixFileSystemProvider.implDelete", "file"),
        new Spec(NIO_COPY, "sun/nio/fs/UnixFileSystemProvider", "copy",
                "(Ljava/nio/file/Path;Ljava/nio/file/Path;[Ljava/nio/file/CopyOption;)V",
                "sun.nio.fs.UnixFileSystemProvider.copy", "file"),
        new Spec(NIO_MOVE, "sun/nio/fs/UnixFileSystemProvider", "move",
                "(Ljava/nio/file/Path;Ljava/nio/file/Path;[Ljava/nio/file/CopyOption;)V",
                "sun.nio.fs.UnixFileSystemProvider.move", "file"),
        new Spec(NIO_LIST, "sun/nio/fs/UnixFileSystemProvider", "newDirectoryStream",
                "(Ljava/nio/file/Path;Ljava/nio/file/DirectoryStream$Filter;)Ljava/nio/file/DirectoryStream;",
                "sun.nio.fs.UnixFileSystemProvider.newDirectoryStream", "file"),
        new Spec(SOCKET_CONNECT, "java/net/Socket", "connect", "(Ljava/net/SocketAddress;I)V",
                "java.net.Socket.connect", "network"),
        new Spec(CHANNEL_CONNECT, "sun/nio/ch/SocketChannelImpl", "connect", "(Ljava/net/SocketAddress;)Z",
                "sun.nio.ch.SocketChannelImpl.connect", "network"),
        new Spec(DNS, "java/net/InetAddress", "getAllByName", "(Ljava/lang/String;)[Ljava/net/InetAddress;",
                "java.net.InetAddress.getAllByName", "dns"),
        new Spec(JNDI, "javax/naming/InitialContext", "lookup", "(Ljava/lang/String;)Ljava/lang/Object;",
                "javax.naming.InitialContext.lookup", "naming"),
        new Spec(JNDI_NAME, "javax/naming/InitialContext", "lookup", "(Ljavax/naming/Name;)Ljava/lang/Object;",
                "javax.naming.InitialContext.lookup", "naming"),
        new Spec(DESERIALIZE, "java/io/ObjectInputStream", "resolveClass",
                "(Ljava/io/ObjectStreamClass;)Ljava/lang/Class;",
                "java.io.ObjectInputStream.resolveClass", "deserialization"),
        new Spec(DEFINE_CLASS, "java/lang/ClassLoader", "defineClass",
                "(Ljava/lang/String;[BIILjava/security/ProtectionDomain;)Ljava/lang/Class;",
                "java.lang.ClassLoader.defineClass", "classload"),
        // JDBC: drivers implement these interfaces; every implementing class that declares the
        // method with a leading String (the SQL text) is hooked as it loads (or at attach).
        new Spec(SQL_EXECUTE, JDBC_STATEMENT, "execute", "(Ljava/lang/String;", "java.sql.Statement.execute", "sql"),
        new Spec(SQL_QUERY, JDBC_STATEMENT, "executeQuery", "(Ljava/lang/String;",
                "java.sql.Statement.executeQuery", "sql"),
        new Spec(SQL_UPDATE, JDBC_STATEMENT, "executeUpdate", "(Ljava/lang/String;",
                "java.sql.Statement.executeUpdate", "sql"),
        new Spec(SQL_LARGE_UPDATE, JDBC_STATEMENT, "executeLargeUpdate", "(Ljava/lang/String;",
                "java.sql.Statement.executeLargeUpdate", "sql"),
        new Spec(SQL_BATCH, JDBC_STATEMENT, "addBatch", "(Ljava/lang/String;", "java.sql.Statement.addBatch", "sql"),
        new Spec(SQL_PREPARE, JDBC_CONNECTION, "prepareStatement", "(Ljava/lang/String;",
                "java.sql.Connection.prepareStatement", "sql"),
        new Spec(SQL_PREPARE_CALL, JDBC_CONNECTION, "prepareCall", "(Ljava/lang/String;",
                "java.sql.Connection.prepareCall", "sql"),
        // Script engines (Nashorn, Rhino, GraalJS, Groovy's): every eval ends in the
        // (String, ScriptContext) one; AbstractScriptEngine's eval(String) delegates to it.
        new Spec(SCRIPT_EVAL, SCRIPT_ENGINE, "eval", "(Ljava/lang/String;Ljavax/script/ScriptContext;",
                "javax.script.ScriptEngine.eval", "code"),
    };

    /** Every spec, indexed by its id (the instrumented code passes the id). */
    public static final Spec[] SPECS = byId(DECLARED);

    private static Spec[] byId(Spec[] declared) {
        Spec[] out = new Spec[declared.length];
        for (Spec s : declared) {
            if (s.id < 0 || s.id >= out.length || out[s.id] != null) {
                throw new IllegalStateException("hook ids must be 0.." + (out.length - 1) + ", once each");
            }
            out[s.id] = s;
        }
        return out;
    }

    /**
     * Where a request starts and ends, per server API: [internal class, method, descriptor,
     * name in the hello]. The request object is the method's first argument.
     *
     * <p>The JDK's own HTTP server: every request passes Filter.Chain.doFilter(HttpExchange)
     * (the user filter chain, then the system chain, nested), so a depth count on entry/exit
     * brackets the whole handler, whatever executor the app configured. Servlets (javax and
     * jakarta): HttpServlet.service(HttpServletRequest, HttpServletResponse), which the public
     * service(ServletRequest, ServletResponse) of every HttpServlet calls.
     */
    static final String[][] REQUEST_BRACKETS = {
        {"com/sun/net/httpserver/Filter$Chain", "doFilter", "(Lcom/sun/net/httpserver/HttpExchange;)V",
            "com.sun.net.httpserver.Filter$Chain.doFilter"},
        {"javax/servlet/http/HttpServlet", "service",
            "(Ljavax/servlet/http/HttpServletRequest;Ljavax/servlet/http/HttpServletResponse;)V",
            "javax.servlet.http.HttpServlet.service"},
        {"jakarta/servlet/http/HttpServlet", "service",
            "(Ljakarta/servlet/http/HttpServletRequest;Ljakarta/servlet/http/HttpServletResponse;)V",
            "jakarta.servlet.http.HttpServlet.service"},
    };

    static String[] bracketOf(String internalName) {
        for (String[] b : REQUEST_BRACKETS) if (b[0].equals(internalName)) return b;
        return null;
    }

    /** The running probe; null before start and after detach (callbacks return at once). */
    static volatile Probe probe;

    /**
     * Per thread, one object found with one thread-local lookup per callback: the re-entrancy
     * depth (the probe's own work, and its threads, never report), the request nesting depth
     * and the current request object. The object stays for the thread's life and its fields
     * are overwritten: a request costs no thread-local map entry created and removed (a weak
     * reference allocated per request, and work for the collector).
     */
    static final class State {
        int internal;
        int requestDepth;
        Object request;
    }

    private static final ThreadLocal<State> STATE = new ThreadLocal<State>() {
        @Override
        protected State initialValue() {
            return new State();
        }
    };

    /** Marks the calling thread as the probe's own: nothing it does is reported. */
    static void markInternal() {
        STATE.get().internal = 1 << 20;
    }

    /** Brackets the probe's own work on an app thread (class transforms). */
    static void markInternalTemporarily(boolean on) {
        STATE.get().internal += on ? 1 : -1;
    }

    /** Called at the entry of every hooked method; args are the method's arguments. */
    public static void enter(int id, Object self, Object[] args) {
        Probe p = probe;
        if (p == null) return;
        Spec spec = SPECS[id];
        if (spec.failed) return;
        State st = STATE.get();
        if (st.internal != 0) return;
        String blockedBy = null;
        st.internal++;
        try {
            blockedBy = p.onCall(spec, self, args, st.request);
        } catch (Throwable t) {
            spec.failed = true;
            p.hookFailed(spec, t);
        } finally {
            st.internal--;
        }
        if (blockedBy != null) {
            throw new SecurityException("Rampart blocked " + spec.name + " by policy " + blockedBy);
        }
    }

    /** Entry of com.sun.net.httpserver.Filter.Chain.doFilter: the outermost call sets the request. */
    public static void requestEnter(Object exchange) {
        try {
            State st = STATE.get();
            if (st.requestDepth++ == 0) st.request = exchange;
        } catch (Throwable ignored) {
            // never break the request
        }
    }

    /** Every exit (return or throw) of the same method. */
    public static void requestExit() {
        try {
            State st = STATE.get();
            if (st.requestDepth > 0 && --st.requestDepth == 0) st.request = null;
        } catch (Throwable ignored) {
            // never break the request
        }
    }
}
