package rampart.jvm;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.List;
import java.util.Map;

/**
 * Checks this probe's protocol code against the shared vectors
 * (rasp/protocol/vectors/frames.json, docs/protocol.md "The shared vectors"):
 * {@code java -cp rampart-jvm-agent.jar rampart.jvm.VectorCheck frames.json}.
 * Prints one line per failure and a closing "N passed, N failed"; exits 1 on any failure.
 *
 * <p>The probe decodes agent -> probe frames (schema included) and encodes probe -> agent
 * frames. So: valid from_agent frames must decode to the message and survive a re-encode;
 * valid to_agent messages must survive our encoder and our parser; invalid frames must fail
 * with their code, except schema/unknown_type errors of to_agent frames, which only the
 * agent checks (counted as skipped).
 */
public final class VectorCheck {
    private VectorCheck() {}

    private static int passed, failed, skipped;

    @SuppressWarnings("unchecked")
    public static void main(String[] argv) throws Exception {
        Map<String, Object> doc = (Map<String, Object>) Json.parse(readAll(new FileInputStream(argv[0])));
        int max = (int) (long) (Long) doc.get("max_frame");
        for (Object o : (List<Object>) doc.get("valid")) valid((Map<String, Object>) o, max);
        for (Object o : (List<Object>) doc.get("invalid")) invalid((Map<String, Object>) o, max);
        frameBuffer(max);
        System.out.println(passed + " passed, " + failed + " failed, " + skipped + " skipped");
        System.exit(failed == 0 ? 0 : 1);
    }

    @SuppressWarnings("unchecked")
    private static void valid(Map<String, Object> v, int max) {
        String name = (String) v.get("name");
        try {
            byte[] frame = hex((String) v.get("frame_hex"));
            Map<String, Object> message = (Map<String, Object>) v.get("message");
            byte[] body = Protocol.readFrame(new ByteArrayInputStream(frame), max);
            if ("from_agent".equals(v.get("direction"))) {
                Map<String, Object> got = Protocol.decodeFromAgent(body);
                Map<String, Object> want = Protocol.decodeFromAgent(Json.writeBytes(message));
                check(name, Json.deepEquals(got, want), "decoded " + Json.write(got) + " != " + Json.write(want));
                Map<String, Object> again = Protocol.decodeFromAgent(Json.writeBytes(got));
                check(name + " (re-encoded)", Json.deepEquals(again, got), Json.write(again));
            } else {
                // the frame may carry fields the schema does not know: every field of the
                // message must be there with its value, extra ones are ignored
                Map<String, Object> parsed = Protocol.parseObject(body);
                if (!contains(parsed, message)) {
                    check(name, false, "parsed " + Json.write(parsed));
                    return;
                }
                byte[] ours = Protocol.encode(message);
                // the sender's batch encoder must write the very same bytes
                FrameBuffer fb = new FrameBuffer();
                check(name + " (batch encoder)", fb.add(message, max) && sameBytes(fb, ours),
                        "FrameBuffer bytes differ from Protocol.encode");
                Map<String, Object> back = Protocol.parseObject(
                        Protocol.readFrame(new ByteArrayInputStream(ours), max));
                check(name, Json.deepEquals(back, message), "round trip " + Json.write(back));
            }
        } catch (Exception e) {
            check(name, false, e.toString());
        }
    }

    @SuppressWarnings("unchecked")
    private static boolean contains(Object got, Object want) {
        if (want instanceof Map && got instanceof Map) {
            Map<String, Object> g = (Map<String, Object>) got;
            for (Map.Entry<String, Object> e : ((Map<String, Object>) want).entrySet()) {
                if (!g.containsKey(e.getKey()) || !contains(g.get(e.getKey()), e.getValue())) return false;
            }
            return true;
        }
        return Json.deepEquals(got, want);
    }

    private static void invalid(Map<String, Object> v, int max) {
        String name = (String) v.get("name");
        String want = (String) v.get("error");
        boolean fromAgent = "from_agent".equals(v.get("direction"));
        if (!fromAgent && ("schema".equals(want) || "unknown_type".equals(want))) {
            skipped++;
            return;
        }
        String got = "no error";
        try {
            byte[] body = Protocol.readFrame(new ByteArrayInputStream(hex((String) v.get("frame_hex"))), max);
            if (body == null) {
                got = "end of stream";
            } else if (fromAgent) {
                Protocol.decodeFromAgent(body);
            } else {
                Protocol.parseObject(body);
            }
        } catch (Protocol.DecodeError e) {
            got = e.code;
        } catch (Exception e) {
            got = e.toString();
        }
        check(name, want.equals(got), "expected " + want + ", got " + got);
    }

    /**
     * The sender's batch encoder (FrameBuffer) against Protocol.encode on strings UTF-8 makes
     * one to four bytes of, escapes, a lone surrogate; several frames in one batch; a frame
     * over the limit left out whole; and the buffer reused after clear().
     */
    private static void frameBuffer(int max) {
        String[] texts = {"plain", "caf\u00e9 \u20ac \ud83d\ude00", "quote\" back\\ nl\n tab\t \u0001",
            "lone \ud800 high, lone \udc00 low", ""};
        FrameBuffer fb = new FrameBuffer();
        java.io.ByteArrayOutputStream want = new java.io.ByteArrayOutputStream();
        for (int round = 0; round < 2; round++) {
            fb.clear();
            want.reset();
            for (String t : texts) {
                Map<String, Object> m = Protocol.envelope(Protocol.TRACE, 7, "17", "0.1.0", 1L,
                        new java.util.LinkedHashMap<String, Object>(java.util.Collections.singletonMap("args", (Object) t)));
                byte[] one = Protocol.encode(m);
                want.write(one, 0, one.length);
                if (round == 0) roundTrip(t, one, max);
                check("batch encoder: " + t, fb.add(m, max), "refused");
            }
            StringBuilder big = new StringBuilder();
            while (big.length() <= max) big.append("\u20ac");
            check("batch encoder: over the frame limit", !fb.add(java.util.Collections.singletonMap("args", (Object) big.toString()), max),
                    "accepted a frame over max_frame");
            check("batch encoder: batch bytes (round " + round + ")",
                    fb.frames() == texts.length && java.util.Arrays.equals(bytes(fb), want.toByteArray()),
                    "batch differs from Protocol.encode per message");
        }
    }

    /** The JSON string escapes: the text comes back (a lone surrogate as U+FFFD). */
    @SuppressWarnings("unchecked")
    private static void roundTrip(String text, byte[] frame, int max) {
        String expect = text.replaceAll("[\\ud800-\\udfff]", "\ufffd");
        if (text.indexOf('\ud83d') >= 0) expect = text; // a valid pair stays as it is
        try {
            Map<String, Object> back = Protocol.parseObject(Protocol.readFrame(new ByteArrayInputStream(frame), max));
            Object got = ((Map<String, Object>) back.get("data")).get("args");
            check("json string round trip: " + text, expect.equals(got), "got " + got);
        } catch (Exception e) {
            check("json string round trip: " + text, false, e.toString());
        }
    }

    private static boolean sameBytes(FrameBuffer fb, byte[] want) {
        return java.util.Arrays.equals(bytes(fb), want);
    }

    private static byte[] bytes(FrameBuffer fb) {
        java.nio.ByteBuffer b = fb.contents();
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    private static void check(String name, boolean ok, String detail) {
        if (ok) {
            passed++;
        } else {
            failed++;
            System.out.println("FAIL " + name + ": " + detail);
        }
    }

    private static byte[] hex(String s) {
        byte[] out = new byte[s.length() / 2];
        for (int i = 0; i < out.length; i++) {
            out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }

    private static byte[] readAll(InputStream in) throws IOException {
        try {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            byte[] buf = new byte[65536];
            int n;
            while ((n = in.read(buf)) > 0) b.write(buf, 0, n);
            return b.toByteArray();
        } finally {
            in.close();
        }
    }
}
