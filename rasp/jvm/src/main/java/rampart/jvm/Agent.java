package rampart.jvm;

import java.io.File;
import java.lang.instrument.Instrumentation;
import java.util.jar.JarFile;

/**
 * The agent entry points (Premain-Class and Agent-Class). A trampoline only: the JVM loads
 * this class through the system class loader, but the hooks must be visible to JDK classes,
 * so the jar is appended to the bootstrap search path and everything else of the probe is
 * loaded from there, by reflection. Nothing here references another probe class directly:
 * a direct reference would resolve through the system loader's delegation at link time and
 * could pick up a second copy of a class.
 */
public final class Agent {
    private Agent() {}

    private static final String PROBE = "rampart.jvm.Probe";

    /** {@code java -javaagent:rampart-jvm-agent.jar[=socket=PATH] ...}: the SDK route. */
    public static void premain(String args, Instrumentation inst) {
        try {
            run("sdk", args, inst);
        } catch (Throwable t) {
            // -javaagent: a probe that cannot start must not stop the app from starting
            System.err.println("[rampart] probe not started: " + t);
        }
    }

    /** Live attach (rasp-attach): errors propagate, so the attacher sees a non-zero reply. */
    public static void agentmain(String args, Instrumentation inst) throws Exception {
        run("attached", args, inst);
    }

    private static synchronized void run(String mode, String args, Instrumentation inst)
            throws Exception {
        Class<?> probe;
        try {
            probe = Class.forName(PROBE, true, null); // already on the bootstrap path
        } catch (ClassNotFoundException e) {
            File jar = new File(Agent.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            inst.appendToBootstrapClassLoaderSearch(new JarFile(jar));
            probe = Class.forName(PROBE, true, null);
        }
        try {
            probe.getMethod("main", String.class, String.class, Instrumentation.class)
                    .invoke(null, mode, args, inst);
        } catch (java.lang.reflect.InvocationTargetException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) throw (Exception) c;
            throw e;
        }
    }
}
