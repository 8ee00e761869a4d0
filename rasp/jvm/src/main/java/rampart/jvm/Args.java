package rampart.jvm;

import java.io.File;
import java.io.ObjectStreamClass;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Turns a hooked method's arguments into the event's {@code args} (strings, capped), or null
 * for a call that is noise by default (the JVM loading its own code: class files and jars are
 * read through the same java.io classes as the app's files).
 */
final class Args {
    private Args() {}

    static final int ARG_CAP = 4096;
    static final int ARGS_MAX = 64;

    static List<String> of(int id, Object self, Object[] a) {
        switch (id) {
            case Hooks.PROCESS: {
                String[] cmd = (String[]) a[0];
                List<String> out = new ArrayList<String>();
                if (cmd != null) for (String s : cmd) if (out.size() < ARGS_MAX) out.add(cap(s));
                return out;
            }
            case Hooks.FILE_IN:
            case Hooks.FILE_OUT:
            case Hooks.FILE_LIST:
            case Hooks.FILE_DELETE: {
                File f = (File) (id == Hooks.FILE_LIST || id == Hooks.FILE_DELETE ? self : a[0]);
                String path = f == null ? "" : f.getPath();
                if (isCode(path)) return null;
                if (id == Hooks.FILE_OUT) {
                    return list(path, Boolean.TRUE.equals(a[1]) ? "append" : "write");
                }
                return one(path);
            }
            case Hooks.RANDOM_ACCESS: {
                File f = (File) a[0];
                String path = f == null ? "" : f.getPath();
                if (isCode(path)) return null;
                return list(path, String.valueOf(a[1]));
            }
            case Hooks.FILE_RENAME: {
                File to = (File) a[0];
                return list(((File) self).getPath(), to == null ? "" : to.getPath());
            }
            case Hooks.NIO_OPEN: {
                String path = String.valueOf(a[0]);
                if (isCode(path)) return null;
                return list(path, String.valueOf(a[1]));
            }
            case Hooks.NIO_DELETE:
            case Hooks.NIO_LIST:
                return one(String.valueOf(a[0]));
            case Hooks.NIO_COPY:
            case Hooks.NIO_MOVE:
                return list(String.valueOf(a[0]), String.valueOf(a[1]));
            case Hooks.SOCKET_CONNECT:
            case Hooks.CHANNEL_CONNECT:
                return one(address(a[0]));
            case Hooks.SQL_EXECUTE:
            case Hooks.SQL_QUERY:
            case Hooks.SQL_UPDATE:
            case Hooks.SQL_LARGE_UPDATE:
            case Hooks.SQL_BATCH:
            case Hooks.SQL_PREPARE:
            case Hooks.SQL_PREPARE_CALL:
            case Hooks.SCRIPT_EVAL:
            case Hooks.DNS:
            case Hooks.JNDI:
            case Hooks.JNDI_NAME:
                return one(String.valueOf(a[0]));
            case Hooks.DESERIALIZE: {
                ObjectStreamClass desc = (ObjectStreamClass) a[0];
                return one(desc == null ? "" : desc.getName());
            }
            case Hooks.DEFINE_CLASS: {
                String loader = self == null ? "" : self.getClass().getName();
                if (isBuiltinLoader(loader)) return null;
                byte[] b = (byte[]) a[1];
                int len = a[3] instanceof Integer ? (Integer) a[3] : (b == null ? 0 : b.length);
                return list(a[0] == null ? "" : (String) a[0], loader, Integer.toString(len));
            }
            default:
                return Collections.emptyList();
        }
    }

    private static String address(Object a) {
        if (a instanceof InetSocketAddress) {
            InetSocketAddress isa = (InetSocketAddress) a;
            return isa.getHostString() + ":" + isa.getPort();
        }
        return String.valueOf(a);
    }

    private static final String JAVA_HOME = javaHome();

    private static String javaHome() {
        String h = System.getProperty("java.home", "");
        return h.isEmpty() ? null : (h.endsWith("/") ? h : h + "/");
    }

    /**
     * Class files, jars and modules the JVM reads to load code, and the JDK's own data files
     * under java.home (tzdb.dat, jndi.properties, security policy): not file events by
     * default, as the JVM reads them for itself whatever the app does.
     */
    static boolean isCode(String path) {
        return path.endsWith(".class") || path.endsWith(".jar") || path.endsWith(".jmod")
                || (JAVA_HOME != null && path.startsWith(JAVA_HOME));
    }

    /** The JDK's own loaders define the app's classes from its class path: not events. */
    static boolean isBuiltinLoader(String loader) {
        return loader.startsWith("jdk.internal.loader.") || loader.startsWith("sun.misc.Launcher$")
                || loader.startsWith("jdk.internal.reflect.") || loader.startsWith("sun.reflect.");
    }

    static String cap(String s) {
        if (s == null) return "";
        return s.length() <= ARG_CAP ? s : s.substring(0, ARG_CAP);
    }

    private static List<String> one(String a) {
        return Collections.singletonList(cap(a));
    }

    private static List<String> list(String... a) {
        List<String> out = new ArrayList<String>(a.length);
        for (String s : a) out.add(cap(s));
        return out;
    }
}
