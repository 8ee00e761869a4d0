package rampart.jvm;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * In-probe detection checks for block mode (docs/detection.md, "Block mode"): the rules the
 * agent pushed in the block frame's {@code detect}, checked on the app's thread before the
 * sink runs, only for events of a kind a rule looks at that happen in a request. Same
 * semantics as the agent's detectors for the input-correlated cases; tested against the shared
 * corpus rasp/protocol/vectors/detect.json ({@link DetectCheck}). Called from the generic
 * blocking path ({@link Probe#onCall}), never from a hook.
 */
final class Detect {
    static final int MIN_INPUT = 3;
    static final int MAX_INPUTS = 64;

    static final Detect EMPTY = new Detect(Collections.<Object>emptyList());

    /** rule ids in force, per event kind, in the order pushed. */
    private final Map<String, List<String>> byKind = new HashMap<String, List<String>>();
    private final Map<String, List<Exempt>> exempts = new HashMap<String, List<Exempt>>();

    @SuppressWarnings("unchecked")
    Detect(List<Object> specs) {
        for (Object o : specs) {
            Map<String, Object> s = (Map<String, Object>) o;
            String rule = (String) s.get("rule");
            String[] kinds = kinds(rule);
            if (kinds == null) continue; // no check here for it: the agent still alerts
            for (String k : kinds) {
                List<String> l = byKind.get(k);
                if (l == null) byKind.put(k, l = new ArrayList<String>());
                l.add(rule);
            }
            List<Exempt> ex = new ArrayList<Exempt>();
            Object list = s.get("exempt");
            if (list != null) for (Object e : (List<Object>) list) ex.add(new Exempt((Map<String, Object>) e));
            exempts.put(rule, ex);
        }
    }

    static String[] kinds(String rule) {
        if ("sqli.input".equals(rule) || "sqli.stacked".equals(rule)) return new String[] {"sql"};
        if ("cmdi.input".equals(rule)) return new String[] {"process"};
        if ("path.traversal".equals(rule)) return new String[] {"file"};
        if ("ssrf.internal".equals(rule)) return new String[] {"network", "dns"};
        return null;
    }

    boolean covers(String kind) {
        return byKind.containsKey(kind);
    }

    boolean isEmpty() {
        return byKind.isEmpty();
    }

    /** The rule id that blocks this event, or null. {@code request} is the event's request map. */
    @SuppressWarnings("unchecked")
    String check(String kind, String hook, List<String> args, Map<String, Object> request) {
        List<String> rules = byKind.get(kind);
        if (rules == null || args == null || args.isEmpty() || request == null) return null;
        List<String> values = new ArrayList<String>();
        Object params = request.get("params");
        if (params instanceof Map) {
            outer:
            for (Object vs : ((Map<String, Object>) params).values()) {
                if (!(vs instanceof List)) continue;
                for (Object v : (List<Object>) vs) {
                    if (v instanceof String && ((String) v).length() >= MIN_INPUT) {
                        values.add((String) v);
                        if (values.size() >= MAX_INPUTS) break outer;
                    }
                }
            }
        }
        for (String rule : rules) {
            boolean hit;
            if ("sqli.stacked".equals(rule)) {
                String q = args.get(0);
                hit = q.indexOf(';') >= 0 && STACKED.matcher(q).find();
            } else if (values.isEmpty()) {
                continue;
            } else if ("sqli.input".equals(rule)) {
                hit = sqliInput(args.get(0), values, hook);
            } else if ("cmdi.input".equals(rule)) {
                hit = cmdiInput(hook, args, values);
            } else if ("path.traversal".equals(rule)) {
                hit = pathTraversal(hook, args, values);
            } else {
                hit = ssrfInternal(args, values);
            }
            if (hit) {
                Object url = request.get("url");
                String path = urlPath(url == null ? "" : url.toString());
                boolean exempt = false;
                for (Exempt e : exempts.get(rule)) {
                    if (e.holds(args, path)) {
                        exempt = true;
                        break;
                    }
                }
                if (!exempt) return rule;
            }
        }
        return null;
    }

    // ------------------------------------------------------------------ exemptions

    static final class Exempt {
        final Pattern requestPath, args, path;

        Exempt(Map<String, Object> m) {
            requestPath = re(m.get("request_path"));
            args = re(m.get("args"));
            path = re(m.get("path"));
        }

        private static Pattern re(Object v) {
            return v instanceof String && !((String) v).isEmpty() ? Pattern.compile((String) v) : null;
        }

        boolean holds(List<String> a, String urlPath) {
            if (path != null && (a.isEmpty() || !path.matcher(a.get(0)).find())) return false;
            if (args != null && !args.matcher(join(a)).find()) return false;
            return requestPath == null || requestPath.matcher(urlPath).find();
        }
    }

    static String urlPath(String url) {
        int s = url.indexOf("://");
        String rest = s >= 0 ? url.substring(s + 3) : url;
        int i = rest.indexOf('/');
        if (i < 0) return "";
        String p = rest.substring(i);
        int q = p.indexOf('?');
        if (q >= 0) p = p.substring(0, q);
        int h = p.indexOf('#');
        return h >= 0 ? p.substring(0, h) : p;
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

    // ------------------------------------------------------------------ SQL

    private static final String COMMON = "|`(?:[^`]|``)*(?:`|\\z)"
            + "|\\$(?<tag>[A-Za-z_]\\w*)?\\$.*?(?:\\$\\k<tag>\\$|\\$\\$|\\z)"
            + "|--[^\\n]*|#[^\\n]*|/\\*.*?(?:\\*/|\\z)";
    static final Pattern LIT_MYSQL = Pattern.compile(
            "'(?:[^'\\\\]|''|\\\\.)*(?:'|\\z)|\"(?:[^\"\\\\]|\"\"|\\\\.)*(?:\"|\\z)" + COMMON, Pattern.DOTALL);
    static final Pattern LIT_STD = Pattern.compile(
            "'(?:[^']|'')*(?:'|\\z)|\"(?:[^\"]|\"\")*(?:\"|\\z)" + COMMON, Pattern.DOTALL);
    /** the agent's SQL token classes: ws, number, word, placeholder are not structure alone */
    private static final Pattern TOKENS = Pattern.compile(
            "(?<ws>\\s+)"
            + "|(?<literal>'|\"|`|--|#|/\\*|\\*/)"
            + "|(?<number>0[xX][0-9a-fA-F]+|\\d+(?:\\.\\d*)?(?:[eE][-+]?\\d+)?|\\.\\d+)"
            + "|(?<word>[A-Za-z_][\\w$]*)"
            + "|(?<param>\\?\\d*|:[A-Za-z_]\\w*|\\$\\d+|@@?\\w+)"
            + "|(?<other>.)", Pattern.DOTALL);
    static final java.util.Set<String> KEYWORDS = new java.util.HashSet<String>(java.util.Arrays.asList(
            "select", "union", "insert", "update", "delete", "drop", "create", "alter", "truncate",
            "replace", "exec", "execute", "or", "and", "not", "xor", "like", "rlike", "regexp",
            "between", "is", "null", "in", "exists", "case", "when", "then", "else", "end", "from",
            "where", "having", "group", "order", "by", "limit", "offset", "into", "outfile",
            "dumpfile", "load_file", "sleep", "benchmark", "pg_sleep", "waitfor", "delay", "if",
            "ifnull", "char", "chr", "concat", "substring", "substr", "ascii", "information_schema",
            "sqlite_master", "pg_catalog", "declare", "cast", "convert"));
    static final Pattern STACKED = Pattern.compile(
            ";\\s*(?:select|insert|update|delete|drop|create|alter|exec|declare)\\b",
            Pattern.CASE_INSENSITIVE);

    private static final Pattern[] MYSQL = {LIT_MYSQL}, STANDARD = {LIT_STD}, BOTH = {LIT_STD, LIT_MYSQL};

    private static Pattern[] scanners(String hook) {
        String h = hook.toLowerCase(Locale.ROOT);
        if (h.contains("mysql") || h.contains("mariadb")) return MYSQL;
        if (h.contains("sqlite") || h.contains("psycopg") || h.contains("postgres") || h.contains("pgx")) {
            return STANDARD;
        }
        return BOTH;
    }

    static boolean sqliInput(String query, List<String> values, String hook) {
        String lowered = null;
        int[][] regions = null; // per scanner, once per query: the one pass over the whole text
        for (String v : values) {
            int pos = query.indexOf(v);
            if (pos < 0) {
                if (lowered == null) lowered = query.toLowerCase(Locale.ROOT);
                pos = lowered.indexOf(v.toLowerCase(Locale.ROOT));
                if (pos < 0) continue;
            }
            if (regions == null) {
                Pattern[] sc = scanners(hook);
                regions = new int[sc.length][];
                for (int i = 0; i < sc.length; i++) regions[i] = regions(query, sc[i]);
            }
            for (int[] r : regions) {
                if (sqlBreaks(query, pos, pos + v.length(), r)) return true;
            }
        }
        return false;
    }

    private static int[] regions(String query, Pattern scanner) {
        int[] out = new int[16];
        int n = 0;
        Matcher m = scanner.matcher(query);
        while (m.find()) {
            if (n + 2 > out.length) out = java.util.Arrays.copyOf(out, out.length * 2);
            out[n++] = m.start();
            out[n++] = m.end();
        }
        return java.util.Arrays.copyOf(out, n);
    }

    private static boolean sqlBreaks(String query, int start, int end, int[] regions) {
        for (int i = 0; i < regions.length; i += 2) {
            int rs = regions[i], re = regions[i + 1];
            if (re <= start) continue;
            if (rs >= end) break;
            return !(rs < start && end < re); // inside one literal: data; else a crossing
        }
        Matcher t = TOKENS.matcher(query.substring(start, end));
        while (t.find()) {
            if (t.group("ws") != null || t.group("number") != null || t.group("param") != null) continue;
            String w = t.group("word");
            if (w != null) {
                if (KEYWORDS.contains(w.toLowerCase(Locale.ROOT))) return true;
            } else if (!",".equals(t.group())) {
                return true;
            }
        }
        return false;
    }

    // ------------------------------------------------------------------ shell

    static final java.util.Set<String> SHELL_HOOKS = new java.util.HashSet<String>(java.util.Arrays.asList(
            "os.system", "os.popen", "child_process.exec", "child_process.execSync", "system", "exec",
            "shell_exec", "passthru", "popen", "proc_open", "Runtime.exec"));
    static final java.util.Set<String> SHELLS = new java.util.HashSet<String>(java.util.Arrays.asList(
            "sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"));
    static final Pattern SHELL_OPS = Pattern.compile("[;&|\\n`<>]|\\$\\(|\\$\\{");
    static final Pattern QUOTED = Pattern.compile("'[^']*'|\"(?:[^\"\\\\$`]|\\\\.)*\"");

    private static String base(String p) {
        return p.substring(p.lastIndexOf('/') + 1);
    }

    static String shellScript(String hook, List<String> args) {
        if (args.isEmpty()) return null;
        if (SHELL_HOOKS.contains(hook)) return args.get(0);
        for (int i = 0; i + 2 < args.size(); i++) {
            if ("-c".equals(args.get(i + 1)) && SHELLS.contains(base(args.get(i)))) return args.get(i + 2);
        }
        String[] first = args.get(0).split(" ", 3);
        if (first.length == 3 && "-c".equals(first[1]) && SHELLS.contains(base(first[0]))) return first[2];
        return null;
    }

    static boolean cmdiInput(String hook, List<String> args, List<String> values) {
        String script = shellScript(hook, args);
        if (script == null) return false;
        String joined = null;
        List<int[]> quoted = null;
        for (String v : values) {
            int pos = script.indexOf(v);
            if (pos < 0) {
                if (joined == null) joined = join(args);
                if (joined.contains(v) && SHELL_OPS.matcher(v).find() && SHELL_OPS.matcher(script).find()) {
                    return true;
                }
                continue;
            }
            if (!SHELL_OPS.matcher(v).find()) continue;
            if (quoted == null) {
                quoted = new ArrayList<int[]>();
                Matcher m = QUOTED.matcher(script);
                while (m.find()) quoted.add(new int[] {m.start(), m.end()});
            }
            int end = pos + v.length();
            boolean inside = false;
            for (int[] q : quoted) {
                if (q[0] < pos && end < q[1]) {
                    inside = true;
                    break;
                }
            }
            if (!inside) return true;
        }
        return false;
    }

    // ------------------------------------------------------------------ path

    static final Pattern TRAVERSAL = Pattern.compile(
            "(?:^|[\\\\/])\\.\\.(?:[\\\\/]|$)|%2e%2e|\\.\\.%2f|%252e", Pattern.CASE_INSENSITIVE);
    static final Pattern SCHEME = Pattern.compile(
            "^(?:file|php|phar|zip|data|expect|glob|jar|netdoc|gopher)://", Pattern.CASE_INSENSITIVE);

    static boolean pathTraversal(String hook, List<String> args, List<String> values) {
        String path = hook.contains("rename") || hook.contains("copy") || hook.contains("move")
                ? args.get(args.size() - 1) : args.get(0);
        for (String v : values) {
            if (!path.contains(v)) continue;
            if (SCHEME.matcher(v).find()) return false; // path.scheme's case
            if (TRAVERSAL.matcher(v).find() || (v.charAt(0) == '/' && path.startsWith(v))) return true;
        }
        return false;
    }

    // ------------------------------------------------------------------ SSRF

    static final java.util.Set<String> METADATA = new java.util.HashSet<String>(java.util.Arrays.asList(
            "metadata.google.internal", "metadata", "instance-data"));
    static final java.util.Set<String> ODD_SCHEMES = new java.util.HashSet<String>(java.util.Arrays.asList(
            "file", "gopher", "dict", "ftp", "ldap", "jar", "netdoc", "tftp"));
    private static final Pattern HOSTPORT = Pattern.compile("^\\[?([^\\]\\s/]+?)\\]?(?::\\d+)?$");
    private static final Pattern URL_HOST = Pattern.compile(
            "^([A-Za-z][\\w+.-]*)://(?:[^@/?#]*@)?(\\[[^\\]]*\\]|[^:/?#]*)");

    /** {scheme, host} of a URL or host[:port] argument. */
    static String[] target(String a) {
        if (a.contains("://")) {
            Matcher m = URL_HOST.matcher(a);
            if (!m.find()) return new String[] {"", ""};
            return new String[] {m.group(1).toLowerCase(Locale.ROOT), strip(m.group(2))};
        }
        Matcher m = HOSTPORT.matcher(a);
        return new String[] {"", m.find() ? m.group(1) : ""};
    }

    private static String strip(String h) {
        return h.startsWith("[") && h.endsWith("]") ? h.substring(1, h.length() - 1) : h;
    }

    static boolean ssrfInternal(List<String> args, List<String> values) {
        String[] t = target(args.get(0));
        String scheme = t[0], host = t[1];
        if (host.isEmpty()) return false;
        for (String v : values) {
            if (!args.get(0).contains(v)) {
                String named = target(v)[1];
                if (named.isEmpty() || !named.equalsIgnoreCase(host)) continue;
            }
            if (ODD_SCHEMES.contains(scheme)) return false; // ssrf.scheme's case
            if (internal(host)) return true;
        }
        return false;
    }

    static boolean internal(String host) {
        String h = host.toLowerCase(Locale.ROOT);
        String trimmed = h.endsWith(".") ? h.substring(0, h.length() - 1) : h;
        if (METADATA.contains(trimmed) || "localhost".equals(h)) return true;
        h = strip(h);
        if (h.indexOf(':') >= 0) return internalV6(h);
        long ip = parseV4(h);
        return ip >= 0 && internalV4(ip);
    }

    /** An IPv4 address from its usual and disguised (decimal, hex, octal) spellings, or -1. */
    static long parseV4(String host) {
        String[] parts = host.split("\\.", -1);
        if (parts.length < 1 || parts.length > 4) return -1;
        long[] nums = new long[parts.length];
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            // only digits, or 0x + hex digits: a name fails here, without an exception
            int from = p.startsWith("0x") ? 2 : 0;
            if (p.length() == from) return -1;
            for (int j = from; j < p.length(); j++) {
                char ch = p.charAt(j);
                boolean ok = ch >= '0' && ch <= '9' || from == 2 && ch >= 'a' && ch <= 'f';
                if (!ok) return -1;
            }
            try {
                if (p.startsWith("0x")) nums[i] = Long.parseLong(p.substring(2), 16);
                else if (p.length() > 1 && p.charAt(0) == '0') nums[i] = Long.parseLong(p, 8);
                else nums[i] = Long.parseLong(p, 10);
            } catch (NumberFormatException e) {
                return -1;
            }
            if (nums[i] < 0 || p.startsWith("+") || p.startsWith("0x-")) return -1;
        }
        long value = 0;
        for (int i = 0; i < nums.length - 1; i++) {
            if (nums[i] > 255) return -1;
            value = value << 8 | nums[i];
        }
        int rest = 8 * (5 - nums.length);
        if (nums[nums.length - 1] >= 1L << rest) return -1;
        return value << rest | nums[nums.length - 1];
    }

    private static boolean in(long ip, long net, int bits) {
        long mask = bits == 0 ? 0 : (0xffffffffL << (32 - bits)) & 0xffffffffL;
        return (ip & mask) == net;
    }

    /** Python's ipaddress is_loopback / is_link_local / is_private / is_unspecified for IPv4. */
    static boolean internalV4(long ip) {
        return in(ip, 0x00000000L, 8) || in(ip, 0x0A000000L, 8) || in(ip, 0x7F000000L, 8)
                || in(ip, 0xA9FE0000L, 16) || in(ip, 0xAC100000L, 12) || in(ip, 0xC0000000L, 29)
                || in(ip, 0xC00000AAL, 31) || in(ip, 0xC0000200L, 24) || in(ip, 0xC0A80000L, 16)
                || in(ip, 0xC6120000L, 15) || in(ip, 0xC6336400L, 24) || in(ip, 0xCB007100L, 24)
                || in(ip, 0xF0000000L, 4) || ip == 0xFFFFFFFFL;
    }

    /** Loopback, unspecified, link-local, unique-local, IPv4-mapped and documentation IPv6. */
    static boolean internalV6(String h) {
        int pct = h.indexOf('%');
        if (pct >= 0) h = h.substring(0, pct);
        int[] g = parseV6(h);
        if (g == null) return false;
        boolean zeroHead = true;
        for (int i = 0; i < 5; i++) zeroHead &= g[i] == 0;
        if (zeroHead && g[5] == 0 && g[6] == 0 && (g[7] == 0 || g[7] == 1)) return true; // :: and ::1
        if (zeroHead && g[5] == 0xffff) return true; // ::ffff:0:0/96
        if ((g[0] & 0xffc0) == 0xfe80) return true;
        if ((g[0] & 0xfe00) == 0xfc00) return true;
        return g[0] == 0x2001 && g[1] == 0x0db8;
    }

    private static int[] parseV6(String h) {
        if (!h.matches("[0-9a-f:.]+")) return null;
        String[] halves = h.split("::", -1);
        if (halves.length > 2) return null;
        List<Integer> head = groups(halves[0]), tail = halves.length == 2 ? groups(halves[1]) : new ArrayList<Integer>();
        if (head == null || tail == null) return null;
        int missing = 8 - head.size() - tail.size();
        if (halves.length == 1 ? missing != 0 : missing < 1) return null;
        int[] g = new int[8];
        int i = 0;
        for (int x : head) g[i++] = x;
        i += halves.length == 2 ? missing : 0;
        for (int x : tail) g[i++] = x;
        return g;
    }

    private static List<Integer> groups(String s) {
        List<Integer> out = new ArrayList<Integer>();
        if (s.isEmpty()) return out;
        String[] parts = s.split(":", -1);
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            if (i == parts.length - 1 && p.indexOf('.') >= 0) {
                long v4 = dotted(p);
                if (v4 < 0) return null;
                out.add((int) (v4 >> 16));
                out.add((int) (v4 & 0xffff));
                continue;
            }
            if (p.isEmpty() || p.length() > 4) return null;
            out.add(Integer.parseInt(p, 16));
        }
        return out;
    }

    private static long dotted(String p) {
        String[] o = p.split("\\.", -1);
        if (o.length != 4) return -1;
        long v = 0;
        for (String x : o) {
            if (x.isEmpty() || x.length() > 3) return -1;
            int n = Integer.parseInt(x);
            if (n > 255) return -1;
            v = v << 8 | n;
        }
        return v;
    }
}
