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

    /** Interface families (Hooks.IMPLEMENTED) whose implementations are hooked -> specs. */
    private final Map<String, List<Hooks.Spec>> implemented = new HashMap<String, List<Hooks.Spec>>();
    /**
     * Classes found to implement such an interface, by internal name, to the family: a
     * subclass loading later (its superclass always loads first) is one too, even if it
     * declares no interface itself.
     */
    private final Map<String, String> implementors = new ConcurrentHashMap<String, String>();

    Transformer() {
        for (Hooks.Spec s : Hooks.SPECS) {
            boolean family = Hooks.IMPLEMENTED.containsValue(s.owner);
            Map<String, List<Hooks.Spec>> m = family ? implemented : byClass;
            List<Hooks.Spec> l = m.get(s.owner);
            if (l == null) m.put(s.owner, l = new ArrayList<Hooks.Spec>());
            l.add(s);
        }
    }

    boolean targets(String internalName) {
        return byClass.containsKey(internalName) || Hooks.bracketOf(internalName) != null;
    }

    /** A loaded class to retransform at attach: a fixed target, or an implementation. */
    boolean targets(Class<?> c) {
        if (targets(c.getName().replace('.', '/'))) return true;
        if (c.isInterface() || c.getClassLoader() == null) return false;
        return familyOf(c) != null;
    }

    /** The family of a loaded class, from its whole hierarchy; null when none. */
    private static String familyOf(Class<?> c) {
        for (Class<?> k = c; k != null; k = k.getSuperclass()) {
            String found = familyIn(k.getInterfaces());
            if (found != null) return found;
        }
        return null;
    }

    private static String familyIn(Class<?>[] interfaces) {
        for (Class<?> i : interfaces) {
            String f = Hooks.IMPLEMENTED.get(i.getName().replace('.', '/'));
            if (f != null) return f;
            String deeper = familyIn(i.getInterfaces());
            if (deeper != null) return deeper;
        }
        return null;
    }

    /**
     * From class files alone: when a class first loads, the transform runs *before* the JVM
     * resolves its superclass and interfaces, so the hierarchy is read from the loader's
     * class-file resources (never by loading classes from inside class loading). Results,
     * negative ones too (""), are cached per class name.
     */
    private String familyOf(ClassReader reader, ClassLoader loader) {
        if ((reader.getAccess() & Opcodes.ACC_INTERFACE) != 0) return null;
        String f = familyOfParents(reader, loader, 0);
        return f.isEmpty() ? null : f;
    }

    private static final int MAX_HIERARCHY = 24;

    private String familyOfParents(ClassReader r, ClassLoader loader, int depth) {
        for (String i : r.getInterfaces()) {
            String f = familyOfName(i, loader, depth + 1);
            if (!f.isEmpty()) return f;
        }
        String sup = r.getSuperName();
        return sup == null ? "" : familyOfName(sup, loader, depth + 1);
    }

    private String familyOfName(String internal, ClassLoader loader, int depth) {
        String f = Hooks.IMPLEMENTED.get(internal);
        if (f != null) return f;
        if (internal.equals("java/lang/Object") || depth > MAX_HIERARCHY) return "";
        String cached = implementors.get(internal);
        if (cached != null) return cached;
        String found = "";
        byte[] bytes = classFile(internal, loader);
        if (bytes != null) {
            try {
                found = familyOfParents(new ClassReader(bytes), loader, depth);
            } catch (RuntimeException malformed) {
                found = "";
            }
        }
        if (implementors.size() < MAX_CACHED) implementors.put(internal, found);
        return found;
    }

    private static final int MAX_CACHED = 200000;

    private static byte[] classFile(String internal, ClassLoader loader) {
        String name = internal + ".class";
        java.io.InputStream in = loader != null ? loader.getResourceAsStream(name)
                : ClassLoader.getSystemResourceAsStream(name);
        if (in == null) return null;
        try {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            byte[] buf = new byte[8192];
            int n;
            while ((n = in.read(buf)) > 0) out.write(buf, 0, n);
            return out.toByteArray();
        } catch (java.io.IOException e) {
            return null;
        } finally {
            try {
                in.close();
            } catch (java.io.IOException ignored) {
                // nothing to do
            }
        }
    }

    @Override
    public byte[] transform(ClassLoader loader, String className, Class<?> redefined,
            ProtectionDomain pd, byte[] classfile) {
        if (className == null) return null;
        // JDBC drivers and script engines are app classes: look at every class with a loader
        // (a cheap header parse); the JDK's own bootstrap classes are only the fixed targets.
        if (!targets(className) && (loader == null || className.startsWith("java/"))) return null;
        // The transform runs on whatever app thread loads the class: nothing the probe does
        // here (loading ASM classes, logging) may be reported or blocked.
        Hooks.markInternalTemporarily(true);
        try {
            return instrument(className, classfile, redefined, loader);
        } catch (Throwable t) {
            failedClasses.add(className);
            Log.warn("cannot instrument " + className + ", its hooks are off: " + t);
            return null;
        } finally {
            Hooks.markInternalTemporarily(false);
        }
    }

    byte[] instrument(final String className, byte[] classfile, Class<?> redefined,
            ClassLoader loader) {
        ClassReader reader = new ClassReader(classfile);
        List<Hooks.Spec> fixed = byClass.get(className);
        final String[] bracket = Hooks.bracketOf(className);
        if (fixed != null) seenClasses.add(className);
        final boolean isFamily;
        if (fixed == null && bracket == null) {
            // retransforming a loaded class: its hierarchy is known; loading: its header
            String family = redefined != null ? familyOf(redefined) : familyOf(reader, loader);
            if (family == null) return null;
            implementors.put(className, family);
            fixed = implemented.get(family);
            isFamily = true;
        } else {
            isFamily = false;
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
                        // family specs give the descriptor's start: (Ljava/lang/String; + anything
                        if (s.method.equals(name) && (isFamily ? desc.startsWith(s.desc) : s.desc.equals(desc))) {
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
