// Unit checks of the JVM probe's policy logic (pure logic, no agent, no instrumentation):
// rule matching, table replacement, quotas, config. In the probe's package, so it reaches the
// package-private classes; run with the agent jar on the class path (not as an agent):
//
//   javac -cp rampart-jvm-agent.jar -d OUT tests/unit/jvm/PolicyCheck.java
//   java -cp rampart-jvm-agent.jar:OUT rampart.jvm.PolicyCheck
//
// Prints one line per failure and "N passed, N failed"; exits 1 on any failure.
package rampart.jvm;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;

public final class PolicyCheck {
    private static int passed, failed;

    private static void check(String name, boolean ok) {
        if (ok) {
            passed++;
        } else {
            failed++;
            System.out.println("FAIL " + name);
        }
    }

    private static Map<String, Object> frame(String json) throws Exception {
        return Protocol.decodeFromAgent(json.getBytes(StandardCharsets.UTF_8));
    }

    public static void main(String[] args) throws Exception {
        Hooks.Spec exec = Hooks.SPECS[Hooks.PROCESS];
        Hooks.Spec read = Hooks.SPECS[Hooks.FILE_IN];
        List<String> stack = Arrays.asList("java.lang.ProcessImpl.start(ProcessImpl.java)",
                "com.example.web.Views.run(Views.java:42)");
        Policy p = new Policy(Hooks.SPECS.length);

        // empty tables: nothing blocks, nothing filters
        check("empty block table", p.blocks.first(exec, "sh -c id", stack) == null);

        p.apply(frame("{\"message_type\":7,\"data\":{\"uuid\":\"b1\",\"blocks\":["
                + "{\"policy_id\":\"py-only\",\"runtime\":[\"python\"],\"kind\":\"process\"},"
                + "{\"policy_id\":\"shell\",\"runtime\":[\"python\",\"jvm\"],\"kind\":\"process\","
                + "\"match\":{\"args\":\"(^|/)(sh|bash)\\\\b\"}},"
                + "{\"policy_id\":\"views\",\"hook\":\"java.io.FileInputStream.<init>\","
                + "\"match\":{\"stack\":\"web\\\\.Views\"}}]}}"), Hooks.SPECS);
        check("block uuid echoed", "b1".equals(p.uuids().get("block")));
        check("needs stack", p.blocks.needsStack);
        Policy.Rule r = p.blocks.first(exec, "/bin/sh -c id", stack);
        check("runtime list without jvm is skipped; args regex is searched, not anchored",
                r != null && r.policyId.equals("shell"));
        check("args that do not match", p.blocks.first(exec, "echo shell", stack) == null);
        check("kind must match", p.blocks.first(read, "/bin/sh", Collections.<String>emptyList()) == null);
        Policy.Rule v = p.blocks.first(read, "/etc/passwd", stack);
        check("stack regex searched in each frame", v != null && v.policyId.equals("views"));
        check("a stack rule without a stack never matches", p.blocks.first(read, "/etc/passwd", null) == null);

        // a table replaces the whole previous table; an empty one clears it
        p.apply(frame("{\"message_type\":7,\"data\":{\"uuid\":\"\",\"blocks\":[]}}"), Hooks.SPECS);
        check("empty table clears", p.blocks.first(exec, "/bin/sh", stack) == null && !p.blocks.needsStack);

        // a regex Java refuses is left out; the rest of the table stays
        p.apply(frame("{\"message_type\":6,\"data\":{\"uuid\":\"f1\",\"filters\":["
                + "{\"policy_id\":\"bad\",\"match\":{\"args\":\"(unclosed\"}},"
                + "{\"policy_id\":\"quiet\",\"kind\":\"file\",\"match\":{\"args\":\"^/tmp/\"}}]}}"), Hooks.SPECS);
        check("bad regex dropped, good rule kept", p.filters.rules.size() == 1
                && p.filters.first(read, "/tmp/x", stack) != null
                && p.filters.first(read, "/etc/x", stack) == null);

        // quotas: default 12,000 per hook and minute; "*" and per-hook lines
        long t = 1_000_000L * 60_000L;
        int allowed = 0;
        for (int i = 0; i < 13_000; i++) if (p.take(Hooks.PROCESS, t)) allowed++;
        check("default quota", allowed == Policy.DEFAULT_QUOTA);
        check("next minute starts afresh", p.take(Hooks.PROCESS, t + 60_000L));
        p.apply(frame("{\"message_type\":8,\"data\":{\"uuid\":\"q1\",\"quotas\":["
                + "{\"hook\":\"*\",\"per_minute\":5},{\"hook\":\"java.io.FileInputStream.<init>\",\"per_minute\":2}]}}"),
                Hooks.SPECS);
        long t2 = t + 10 * 60_000L;
        int exe = 0, rd = 0;
        for (int i = 0; i < 10; i++) {
            if (p.take(Hooks.PROCESS, t2)) exe++;
            if (p.take(Hooks.FILE_IN, t2)) rd++;
        }
        check("'*' quota and a hook's own line", exe == 5 && rd == 2 && "q1".equals(p.uuids().get("quota")));

        // config: hooks_disabled and stack_depth
        p.apply(frame("{\"message_type\":3,\"data\":{\"uuid\":\"c1\",\"hooks_disabled\":[\"java.lang.ProcessImpl.start\"],"
                + "\"stack_depth\":4}}"), Hooks.SPECS);
        check("config applied", p.hooksDisabled.contains(exec.name) && p.stackDepth == 4
                && "c1".equals(p.uuids().get("config")));
        check("stack capped at depth", Probe.stack(4).size() <= 4);

        // argument extraction caps and noise rules
        StringBuilder big = new StringBuilder();
        for (int i = 0; i < 10_000; i++) big.append('x');
        check("args capped at 4 KiB", Args.cap(big.toString()).length() == Args.ARG_CAP);
        check("class files are not file events", Args.isCode("/srv/app/classes/A.class")
                && Args.isCode("/opt/app/lib/x.jar") && !Args.isCode("/etc/passwd"));
        check("JDK loaders are not classload events", Args.isBuiltinLoader("jdk.internal.loader.ClassLoaders$AppClassLoader")
                && !Args.isBuiltinLoader("org.springframework.boot.loader.LaunchedURLClassLoader"));
        check("query parsing keeps repeats and decodes",
                RequestInfo.query("a=1&a=2&b=x+y%21&c").toString().equals("{a=[1, 2], b=[x y!], c=[]}"));
        check("agent options percent-decoded", Probe.parseArgs("action=attach;socket=/run/a%3Bb/p.sock")
                .get("socket").equals("/run/a;b/p.sock"));

        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 ? 0 : 1);
    }
}
