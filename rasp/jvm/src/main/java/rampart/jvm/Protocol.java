package rampart.jvm;

import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The wire protocol (docs/protocol.md) as the JVM probe speaks it: 4-byte big-endian length +
 * UTF-8 JSON; probe frames carry the envelope, agent frames are checked against the schema
 * (rasp/protocol/schema.py) before the probe acts on them. Tested against the shared vectors
 * rasp/protocol/vectors/frames.json by {@link VectorCheck}.
 */
public final class Protocol {
    private Protocol() {}

    public static final int PROTOCOL_VERSION = 1;
    public static final int MAX_FRAME = 1 << 20;

    public static final int EXIT = 0, HEARTBEAT = 1, TRACE = 2, CONFIG = 3, FILTER = 6,
            BLOCK = 7, QUOTA = 8, ERROR = 99, HELLO = 100, CONTROL_REPLY = 201;

    static final Set<String> RUNTIMES =
            new HashSet<String>(Arrays.asList("python", "jvm", "golang", "nodejs", "php"));
    static final Set<String> KINDS = new HashSet<String>(Arrays.asList("process", "file",
            "network", "dns", "sql", "code", "deserialization", "naming", "classload", "library"));

    /** A frame that cannot be decoded; {@code code} is one of the protocol's error codes. */
    public static final class DecodeError extends Exception {
        public final String code;

        public DecodeError(String code, String reason) {
            super(code + ": " + reason);
            this.code = code;
        }
    }

    // ------------------------------------------------------------------ encoding

    public static byte[] frame(byte[] body) {
        byte[] out = new byte[4 + body.length];
        int n = body.length;
        out[0] = (byte) (n >>> 24);
        out[1] = (byte) (n >>> 16);
        out[2] = (byte) (n >>> 8);
        out[3] = (byte) n;
        System.arraycopy(body, 0, out, 4, n);
        return out;
    }

    /** A probe -> agent envelope; {@code data} may be null (heartbeat, exit without reason). */
    public static Map<String, Object> envelope(int type, long pid, String runtimeVersion,
            String probeVersion, long timeMs, Map<String, Object> data) {
        Map<String, Object> m = new LinkedHashMap<String, Object>();
        m.put("message_type", (long) type);
        m.put("pid", pid);
        m.put("runtime", "jvm");
        if (runtimeVersion != null && !runtimeVersion.isEmpty()) m.put("runtime_version", runtimeVersion);
        if (probeVersion != null && !probeVersion.isEmpty()) m.put("probe_version", probeVersion);
        m.put("time", timeMs);
        if (data != null) m.put("data", data);
        return m;
    }

    public static byte[] encode(Map<String, Object> message) {
        return frame(Json.writeBytes(message));
    }

    // ------------------------------------------------------------------ framing

    /**
     * Reads one frame body. Returns null on a clean end of stream between frames; throws
     * DecodeError("truncated") inside a frame, ("too_large") on a prefix over the limit,
     * checked before any body byte is read.
     */
    public static byte[] readFrame(InputStream in, int maxFrame) throws IOException, DecodeError {
        byte[] prefix = new byte[4];
        int got = readFully(in, prefix);
        if (got == 0) return null;
        if (got < 4) throw new DecodeError("truncated", "length prefix cut short");
        long n = ((prefix[0] & 0xffL) << 24) | ((prefix[1] & 0xff) << 16)
                | ((prefix[2] & 0xff) << 8) | (prefix[3] & 0xff);
        if (n > maxFrame) throw new DecodeError("too_large", "frame of " + n + " bytes");
        byte[] body = new byte[(int) n];
        if (readFully(in, body) < n) throw new DecodeError("truncated", "body cut short");
        return body;
    }

    private static int readFully(InputStream in, byte[] buf) throws IOException {
        int off = 0;
        while (off < buf.length) {
            int r;
            try {
                r = in.read(buf, off, buf.length - off);
            } catch (EOFException e) {
                r = -1;
            }
            if (r < 0) break;
            off += r;
        }
        return off;
    }

    /** JSON object of one frame body; bad_json / not_object otherwise. */
    @SuppressWarnings("unchecked")
    public static Map<String, Object> parseObject(byte[] body) throws DecodeError {
        if (body.length == 0) throw new DecodeError("bad_json", "empty payload");
        Object v;
        try {
            v = Json.parse(body);
        } catch (Json.ParseError e) {
            throw new DecodeError("bad_json", e.getMessage());
        }
        if (!(v instanceof Map)) throw new DecodeError("not_object", "payload is not an object");
        return (Map<String, Object>) v;
    }

    // ------------------------------------------------------------------ agent -> probe

    /**
     * Decodes and validates an agent -> probe frame body, returning the message with every
     * known field present (defaults filled in) and unknown fields dropped.
     */
    public static Map<String, Object> decodeFromAgent(byte[] body) throws DecodeError {
        Map<String, Object> raw = parseObject(body);
        if (!raw.containsKey("message_type")) throw schema("missing message_type");
        Object t = raw.get("message_type");
        if (!(t instanceof Long)) throw schema("message_type must be an integer");
        int type = (int) (long) (Long) t;
        long lt = (Long) t;
        if (lt != type) throw new DecodeError("unknown_type", "message_type " + lt);
        Map<String, Object> out = new LinkedHashMap<String, Object>();
        out.put("message_type", lt);
        Object data = raw.get("data");
        switch (type) {
            case EXIT: {
                Map<String, Object> d = data == null && !raw.containsKey("data") ? new LinkedHashMap<String, Object>() : obj(data, "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("reason", str(d, "reason", "", -1, false));
                out.put("data", o);
                break;
            }
            case CONFIG: {
                Map<String, Object> d = obj(required(raw, "data"), "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("uuid", uuid(d));
                o.put("hooks_disabled", strList(d, "hooks_disabled", -1));
                Object depth = d.get("stack_depth");
                if (depth != null) {
                    long v = integer(depth, "stack_depth");
                    if (v < 0 || v > 256) throw schema("stack_depth out of range");
                }
                o.put("stack_depth", depth);
                Object settings = d.containsKey("settings") ? obj(d.get("settings"), "settings")
                        : new LinkedHashMap<String, Object>();
                o.put("settings", settings);
                out.put("data", o);
                break;
            }
            case FILTER:
            case BLOCK: {
                String key = type == FILTER ? "filters" : "blocks";
                Map<String, Object> d = obj(required(raw, "data"), "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("uuid", uuid(d));
                List<Object> rules = new ArrayList<Object>();
                for (Object r : list(d, key)) rules.add(rule(obj(r, "rule")));
                o.put(key, rules);
                if (type == BLOCK && d.get("detect") != null) {
                    // detection rules in block mode (docs/detection.md, "Block mode")
                    List<Object> detect = new ArrayList<Object>();
                    for (Object r : list(d, "detect")) detect.add(detectRule(obj(r, "detect rule")));
                    o.put("detect", detect);
                }
                out.put("data", o);
                break;
            }
            case QUOTA: {
                Map<String, Object> d = obj(required(raw, "data"), "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("uuid", uuid(d));
                List<Object> quotas = new ArrayList<Object>();
                for (Object q : list(d, "quotas")) {
                    Map<String, Object> qm = obj(q, "quota");
                    Map<String, Object> qo = new LinkedHashMap<String, Object>();
                    String hook = str(qm, "hook", null, 256, true);
                    if (hook.isEmpty()) throw schema("quota hook empty");
                    qo.put("hook", hook);
                    long pm = integer(required(qm, "per_minute"), "per_minute");
                    if (pm < 0) throw schema("per_minute negative");
                    qo.put("per_minute", pm);
                    quotas.add(qo);
                }
                o.put("quotas", quotas);
                out.put("data", o);
                break;
            }
            case ERROR: {
                Map<String, Object> d = obj(required(raw, "data"), "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("code", str(d, "code", null, -1, true));
                o.put("reason", str(d, "reason", null, -1, true));
                out.put("data", o);
                break;
            }
            case CONTROL_REPLY: {
                Map<String, Object> d = obj(required(raw, "data"), "data");
                Map<String, Object> o = new LinkedHashMap<String, Object>();
                o.put("id", integer(required(d, "id"), "id"));
                Object ok = required(d, "ok");
                if (!(ok instanceof Boolean)) throw schema("ok must be a boolean");
                o.put("ok", ok);
                o.put("result", d.get("result"));
                o.put("error", d.get("error") == null ? null : str(d, "error", null, -1, true));
                out.put("data", o);
                break;
            }
            default:
                throw new DecodeError("unknown_type", "message_type " + type + " from the agent");
        }
        return out;
    }

    private static Map<String, Object> rule(Map<String, Object> r) throws DecodeError {
        Map<String, Object> o = new LinkedHashMap<String, Object>();
        String id = str(r, "policy_id", null, 256, true);
        if (id.isEmpty()) throw schema("policy_id empty");
        o.put("policy_id", id);
        Object rt = r.get("runtime");
        if (rt != null) {
            List<Object> l = list(r, "runtime");
            for (Object x : l) {
                if (!(x instanceof String) || !RUNTIMES.contains(x)) throw schema("bad runtime");
            }
            o.put("runtime", l);
        } else {
            o.put("runtime", null);
        }
        Object kind = r.get("kind");
        if (kind != null && !(kind instanceof String && KINDS.contains(kind))) throw schema("bad kind");
        o.put("kind", kind);
        o.put("hook", r.get("hook") == null ? null : str(r, "hook", null, -1, true));
        Map<String, Object> m = r.get("match") == null ? new LinkedHashMap<String, Object>() : obj(r.get("match"), "match");
        Map<String, Object> mo = new LinkedHashMap<String, Object>();
        mo.put("args", m.get("args") == null ? null : str(m, "args", null, 4096, true));
        mo.put("stack", m.get("stack") == null ? null : str(m, "stack", null, 4096, true));
        o.put("match", mo);
        return o;
    }

    private static Map<String, Object> detectRule(Map<String, Object> r) throws DecodeError {
        Map<String, Object> o = new LinkedHashMap<String, Object>();
        String rule = str(r, "rule", null, 64, true);
        if (rule.isEmpty()) throw schema("detect rule empty");
        o.put("rule", rule);
        List<Object> exempt = new ArrayList<Object>();
        for (Object e : list(r, "exempt")) {
            Map<String, Object> em = obj(e, "exempt");
            Map<String, Object> eo = new LinkedHashMap<String, Object>();
            for (String k : new String[] {"request_path", "args", "path"}) {
                eo.put(k, em.get(k) == null ? null : str(em, k, null, 4096, true));
            }
            exempt.add(eo);
        }
        o.put("exempt", exempt);
        return o;
    }

    private static DecodeError schema(String reason) {
        return new DecodeError("schema", reason);
    }

    private static Object required(Map<String, Object> m, String key) throws DecodeError {
        if (!m.containsKey(key)) throw schema("missing " + key);
        return m.get(key);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> obj(Object v, String what) throws DecodeError {
        if (!(v instanceof Map)) throw schema(what + " must be an object");
        return (Map<String, Object>) v;
    }

    @SuppressWarnings("unchecked")
    private static List<Object> list(Map<String, Object> m, String key) throws DecodeError {
        if (!m.containsKey(key)) return new ArrayList<Object>();
        Object v = m.get(key);
        if (!(v instanceof List)) throw schema(key + " must be a list");
        return (List<Object>) v;
    }

    private static List<Object> strList(Map<String, Object> m, String key, int max) throws DecodeError {
        List<Object> l = list(m, key);
        for (Object x : l) if (!(x instanceof String)) throw schema(key + " must hold strings");
        return l;
    }

    private static long integer(Object v, String what) throws DecodeError {
        if (!(v instanceof Long)) throw schema(what + " must be an integer");
        return (Long) v;
    }

    private static String str(Map<String, Object> m, String key, String dflt, int max,
            boolean required) throws DecodeError {
        if (!m.containsKey(key)) {
            if (required) throw schema("missing " + key);
            return dflt;
        }
        Object v = m.get(key);
        if (!(v instanceof String)) throw schema(key + " must be a string");
        String s = (String) v;
        if (max >= 0 && s.codePointCount(0, s.length()) > max) throw schema(key + " too long");
        return s;
    }

    private static String uuid(Map<String, Object> d) throws DecodeError {
        return str(d, "uuid", null, 64, true);
    }
}
