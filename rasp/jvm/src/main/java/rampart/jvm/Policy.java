package rampart.jvm;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.regex.Pattern;

/**
 * The tables the agent pushes (filter 6, block 7, quota 8, config 3), applied on the app's
 * thread. Each table is replaced whole by a volatile write, so a hook reads one consistent
 * table without locking.
 */
public final class Policy {
    public static final int DEFAULT_QUOTA = 12000;
    public static final int DEFAULT_STACK_DEPTH = 32;

    /** One compiled rule of a filter or block table. */
    public static final class Rule {
        final String policyId;
        final boolean jvm; // the rule's runtime list is absent or names "jvm"
        final String kind, hook;
        final Pattern args, stack;

        Rule(Map<String, Object> r) {
            policyId = (String) r.get("policy_id");
            Object rt = r.get("runtime");
            jvm = rt == null || ((List<?>) rt).contains("jvm");
            kind = (String) r.get("kind");
            hook = (String) r.get("hook");
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) r.get("match");
            args = compile((String) m.get("args"));
            stack = compile((String) m.get("stack"));
        }

        private static Pattern compile(String re) {
            return re == null ? null : Pattern.compile(re);
        }

        boolean matches(Hooks.Spec spec, String joinedArgs, List<String> frames) {
            if (!jvm) return false;
            if (kind != null && !kind.equals(spec.kind)) return false;
            if (hook != null && !hook.equals(spec.name)) return false;
            if (args != null && !args.matcher(joinedArgs).find()) return false;
            if (stack != null) {
                if (frames == null) return false; // callers pass the stack when a rule needs it
                boolean any = false;
                for (String f : frames) {
                    if (stack.matcher(f).find()) {
                        any = true;
                        break;
                    }
                }
                if (!any) return false;
            }
            return true;
        }

        boolean needsStack() {
            return stack != null;
        }
    }

    static final class Table {
        final String uuid;
        final List<Rule> rules;
        final boolean needsStack;

        Table(String uuid, List<Rule> rules) {
            this.uuid = uuid;
            this.rules = rules;
            boolean s = false;
            for (Rule r : rules) s |= r.needsStack();
            this.needsStack = s;
        }

        Rule first(Hooks.Spec spec, String joinedArgs, List<String> frames) {
            for (Rule r : rules) if (r.matches(spec, joinedArgs, frames)) return r;
            return null;
        }
    }

    static final Table EMPTY = new Table("", Collections.<Rule>emptyList());

    volatile Table blocks = EMPTY;
    /** detection rules in block mode, pushed with the block table */
    volatile Detect detect = Detect.EMPTY;
    volatile Table filters = EMPTY;
    volatile String quotaUuid = "";
    volatile String configUuid = "";
    volatile int stackDepth = DEFAULT_STACK_DEPTH;
    volatile Set<String> hooksDisabled = Collections.emptySet();

    /** per hook id: calls allowed per minute, calls seen in the current minute, the minute. */
    private final int[] perMinute;
    private final AtomicIntegerArray used;
    private final AtomicLongArray minute;

    Policy(int hooks) {
        perMinute = new int[hooks];
        java.util.Arrays.fill(perMinute, DEFAULT_QUOTA);
        used = new AtomicIntegerArray(hooks);
        minute = new AtomicLongArray(hooks);
    }

    /** Consumes one unit of the hook's quota for this minute; false when spent. */
    boolean take(int id, long nowMs) {
        long m = nowMs / 60000L;
        if (minute.get(id) != m) {
            minute.set(id, m);
            used.set(id, 0);
        }
        // spent: read, do not count further (an atomic increment per call would bounce the
        // counter's cache line between the cores of every thread calling this sink)
        if (used.get(id) >= perMinute[id]) return false;
        return used.incrementAndGet(id) <= perMinute[id];
    }

    @SuppressWarnings("unchecked")
    void apply(Map<String, Object> message, Hooks.Spec[] specs) {
        int type = (int) (long) (Long) message.get("message_type");
        Map<String, Object> d = (Map<String, Object>) message.get("data");
        switch (type) {
            case Protocol.BLOCK:
                blocks = table((String) d.get("uuid"), (List<Object>) d.get("blocks"));
                try {
                    detect = d.get("detect") == null ? Detect.EMPTY : new Detect((List<Object>) d.get("detect"));
                } catch (RuntimeException e) {
                    // an exemption Java cannot compile: no block mode rather than too much
                    detect = Detect.EMPTY;
                    Log.warn("detection rules refused: " + e);
                }
                break;
            case Protocol.FILTER:
                filters = table((String) d.get("uuid"), (List<Object>) d.get("filters"));
                break;
            case Protocol.QUOTA: {
                Map<String, Long> byHook = new HashMap<String, Long>();
                for (Object q : (List<Object>) d.get("quotas")) {
                    Map<String, Object> qm = (Map<String, Object>) q;
                    byHook.put((String) qm.get("hook"), (Long) qm.get("per_minute"));
                }
                Long dflt = byHook.containsKey("*") ? byHook.get("*") : (long) DEFAULT_QUOTA;
                for (Hooks.Spec s : specs) {
                    Long v = byHook.containsKey(s.name) ? byHook.get(s.name) : dflt;
                    perMinute[s.id] = (int) Math.min(Integer.MAX_VALUE, v);
                }
                quotaUuid = (String) d.get("uuid");
                break;
            }
            case Protocol.CONFIG: {
                Set<String> off = new HashSet<String>();
                for (Object h : (List<Object>) d.get("hooks_disabled")) off.add((String) h);
                hooksDisabled = off;
                Object depth = d.get("stack_depth");
                stackDepth = depth == null ? DEFAULT_STACK_DEPTH : (int) (long) (Long) depth;
                configUuid = (String) d.get("uuid");
                break;
            }
            default:
                break;
        }
    }

    @SuppressWarnings("unchecked")
    private static Table table(String uuid, List<Object> rules) {
        List<Rule> out = new ArrayList<Rule>();
        for (Object r : rules) {
            try {
                out.add(new Rule((Map<String, Object>) r));
            } catch (RuntimeException e) {
                // a regex Java cannot compile: that rule is left out, the rest stay in force
                Log.warn("policy rule refused: " + e);
            }
        }
        return new Table(uuid, out);
    }

    Map<String, Object> uuids() {
        Map<String, Object> m = new java.util.LinkedHashMap<String, Object>();
        m.put("config", configUuid);
        m.put("filter", filters.uuid);
        m.put("block", blocks.uuid);
        m.put("quota", quotaUuid);
        return m;
    }
}
