package rampart.jvm;

import java.lang.instrument.ClassFileTransformer;
import java.security.ProtectionDomain;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

import org.objectweb.asm.ClassReader;
import org.objectweb.asm.ClassVisitor;
import org.objectweb.asm.ClassWriter;
import org.objectweb.asm.Label;
import org.objectweb.asm.MethodVisitor;
import org.objectweb.asm.Opcodes;
import org.objectweb.asm.Type;
import org.objectweb.asm.commons.AdviceAdapter;

/**
 * Adds an entry call to {@link Hooks#enter} to each hooked method, and a try/finally around
 * the JDK HTTP server's filter chain for the request context. Only code is added: no field or
 * method, so loaded classes can be retransformed, and retransforming without this
 * transformer (detach) restores the original bytecode.
 *
 * <p>Frames: the reader expands them and the writer only computes max stack/locals
 * (COMPUTE_FRAMES would need to load classes to merge types, from inside class loading).
 * The entry call adds no branch, so no frame; the catch-all handler gets one explicit frame
 * with no locals, which every point of the protected range is assignable to.
 */
final class Transformer implements ClassFileTransformer {
    private static final String HOOKS = "rampart/jvm/Hooks";
    private static final String ENTER_DESC = "(ILjava/lang/Object;[Ljava/lang/Object;)V";

    private final Map<String, List<Hooks.Spec>> byClass = new HashMap<String, List<Hooks.Spec>>();
    /** hooks whose method was found and instrumented, at least once */
    final Set<String> installed = ConcurrentHashMap.newKeySet();
    final Set<String> failedClasses = ConcurrentHashMap.newKeySet();
    /** fixed target classes the transformer has seen (loaded): their hooks are either in
     *  `installed` or missing from this JDK */
    final Set<String> seenClasses = ConcurrentHashMap.newKeySet();

    /** JDBC interfaces whose implementations are hooked, to the specs that apply. */
    private final Map<String, List<Hooks.Spec>> jdbc = new HashMap<String, List<Hooks.Spec>>();
    /**
     * Classes found to implement a JDBC interface, by internal name: a subclass loading
     * later (its superclass always loads first) is one too, even if it declares no interface.
     */
    private final Map<String, String> jdbcClasses = new ConcurrentHashMap<String, String>();

    Transformer() {
        for (Hooks.Spec s : Hooks.SPECS) {
            boolean isJdbc = s.owner.equals(Hooks.JDBC_STATEMENT) || s.owner.equals(Hooks.JDBC_CONNECTION);
            Map<String, List<Hooks.Spec>> m = isJdbc ? jdbc : byClass;
            List<Hooks.Spec> l = m.get(s.owner);
            if (l == null) m.put(s.owner, l = new ArrayList<Hooks.Spec>());
            l.add(s);
        }
    }

    boolean targets(String internalName) {
        return byClass.containsKey(internalName) || Hooks.bracketOf(internalName) != null;
    }

    /** A loaded class to retransform at attach: a fixed target, or a JDBC implementation. */
    boolean targets(Class<?> c) {
        if (targets(c.getName().replace('.', '/'))) return true;
        if (c.isInterface() || c.getClassLoader() == null) return false;
        return jdbcInterfaceOf(c) != null;
    }

    /** "java/sql/Statement" or "java/sql/Connection" when c implements one, else null. */
    private static String jdbcInterfaceOf(Class<?> c) {
        for (Class<?> k = c; k != null; k = k.getSuperclass()) {
            String found = jdbcInterfaceIn(k.getInterfaces());
            if (found != null) return found;
        }
        return null;
    }

    private static String jdbcInterfaceIn(Class<?>[] interfaces) {
        for (Class<?> i : interfaces) {
            String n = i.getName();
            if (n.equals("java.sql.Statement") || n.equals("java.sql.PreparedStatement")
                    || n.equals("java.sql.CallableStatement")) {
                return Hooks.JDBC_STATEMENT;
            }
            if (n.equals("java.sql.Connection")) return Hooks.JDBC_CONNECTION;
            String deeper = jdbcInterfaceIn(i.getInterfaces());
            if (deeper != null) return deeper;
        }
        return null;
    }

    /** From the class file alone (the class is not defined yet when it first loads). */
    private String jdbcInterfaceOf(ClassReader reader) {
        if ((reader.getAccess() & Opcodes.ACC_INTERFACE) != 0) return null;
        for (String i : reader.getInterfaces()) {
            if (i.equals("java/sql/Statement") || i.equals("java/sql/PreparedStatement")
                    || i.equals("java/sql/CallableStatement")) {
                return Hooks.JDBC_STATEMENT;
            }
            if (i.equals("java/sql/Connection")) return Hooks.JDBC_CONNECTION;
        }
        String sup = reader.getSuperName();
        return sup == null ? null : jdbcClasses.get(sup);
    }

    @Override
    public byte[] transform(ClassLoader loader, String className, Class<?> redefined,
            ProtectionDomain pd, byte[] classfile) {
        if (className == null) return null;
        // JDBC drivers are app classes: look at every class with a loader (a cheap header
        // parse); the JDK's own (bootstrap) classes are only the fixed targets.
        if (!targets(className) && (loader == null || className.startsWith("java/"))) return null;
        // The transform runs on whatever app thread loads the class: nothing the probe does
        // here (loading ASM classes, logging) may be reported or blocked.
        Hooks.markInternalTemporarily(true);
        try {
            return instrument(className, classfile, redefined);
        } catch (Throwable t) {
            failedClasses.add(className);
            Log.warn("cannot instrument " + className + ", its hooks are off: " + t);
            return null;
        } finally {
            Hooks.markInternalTemporarily(false);
        }
    }

    byte[] instrument(final String className, byte[] classfile, Class<?> redefined) {
        ClassReader reader = new ClassReader(classfile);
        List<Hooks.Spec> fixed = byClass.get(className);
        final String[] bracket = Hooks.bracketOf(className);
        if (fixed != null) seenClasses.add(className);
        final boolean isJdbc;
        if (fixed == null && bracket == null) {
            // retransforming a loaded class: its hierarchy is known; loading: its header
            String iface = redefined != null ? jdbcInterfaceOf(redefined) : jdbcInterfaceOf(reader);
            if (iface == null) return null;
            jdbcClasses.put(className, iface);
            fixed = jdbc.get(iface);
            isJdbc = true;
        } else {
            isJdbc = false;
        }
        final List<Hooks.Spec> specs = fixed;
        ClassWriter writer = new ClassWriter(reader, ClassWriter.COMPUTE_MAXS);
        final boolean[] changed = {false};
        ClassVisitor cv = new ClassVisitor(Opcodes.ASM9, writer) {
            @Override
            public MethodVisitor visitMethod(int access, String name, String desc, String sig,
                    String[] exceptions) {
                MethodVisitor mv = super.visitMethod(access, name, desc, sig, exceptions);
                if ((access & (Opcodes.ACC_ABSTRACT | Opcodes.ACC_NATIVE)) != 0) return mv;
                if (specs != null) {
                    for (Hooks.Spec s : specs) {
                        // JDBC specs give the descriptor's start: (Ljava/lang/String; + anything
                        if (s.method.equals(name) && (isJdbc ? desc.startsWith(s.desc) : s.desc.equals(desc))) {
                            changed[0] = true;
                            installed.add(s.name);
                            return new EntryHook(mv, access, name, desc, s.id);
                        }
                    }
                }
                if (bracket != null && bracket[1].equals(name) && bracket[2].equals(desc)) {
                    changed[0] = true;
                    installed.add(bracket[3]);
                    return new RequestBracket(mv, access, name, desc);
                }
                return mv;
            }
        };
        reader.accept(cv, ClassReader.EXPAND_FRAMES);
        return changed[0] ? writer.toByteArray() : null;
    }

    /** Hooks.enter(id, this|null, new Object[]{args...}) at entry (after super() in constructors). */
    private static final class EntryHook extends AdviceAdapter {
        private final int id;

        EntryHook(MethodVisitor mv, int access, String name, String desc, int id) {
            super(Opcodes.ASM9, mv, access, name, desc);
            this.id = id;
        }

        @Override
        protected void onMethodEnter() {
            push(id);
            if ((methodAccess & Opcodes.ACC_STATIC) != 0) {
                visitInsn(Opcodes.ACONST_NULL);
            } else {
                loadThis();
            }
            loadArgArray();
            visitMethodInsn(Opcodes.INVOKESTATIC, HOOKS, "enter", ENTER_DESC, false);
        }
    }

    /** Hooks.requestEnter(exchange) at entry; Hooks.requestExit() on every return and throw. */
    private static final class RequestBracket extends AdviceAdapter {
        private final Label start = new Label();
        private final Label handler = new Label();

        RequestBracket(MethodVisitor mv, int access, String name, String desc) {
            super(Opcodes.ASM9, mv, access, name, desc);
        }

        @Override
        protected void onMethodEnter() {
            loadArg(0);
            visitMethodInsn(Opcodes.INVOKESTATIC, HOOKS, "requestEnter", "(Ljava/lang/Object;)V", false);
            visitLabel(start);
        }

        @Override
        protected void onMethodExit(int opcode) {
            if (opcode != Opcodes.ATHROW) {
                visitMethodInsn(Opcodes.INVOKESTATIC, HOOKS, "requestExit", "()V", false);
            }
        }

        @Override
        public void visitMaxs(int maxStack, int maxLocals) {
            visitLabel(handler);
            visitFrame(Opcodes.F_NEW, 0, new Object[0], 1, new Object[] {"java/lang/Throwable"});
            visitMethodInsn(Opcodes.INVOKESTATIC, HOOKS, "requestExit", "()V", false);
            visitInsn(Opcodes.ATHROW);
            // Registered last, so the method's own handlers (earlier in the table) still catch
            // first; this one only sees what leaves the method.
            visitTryCatchBlock(start, handler, handler, null);
            super.visitMaxs(maxStack, maxLocals);
        }
    }

    static String typeName(String internal) {
        return Type.getObjectType(internal).getClassName();
    }
}
