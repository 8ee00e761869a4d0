package rampart.jvm;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small JSON writer and parser: the probe carries no third-party dependency besides the
 * relocated ASM, and must not use whatever JSON library the application happens to have.
 *
 * <p>Values map to Java as: object = LinkedHashMap&lt;String,Object&gt;, array = ArrayList,
 * string = String, integer = Long (BigInteger-sized numbers and fractions = Double), true/false
 * = Boolean, null = null.
 */
public final class Json {
    private Json() {}

    /** Thrown for anything that is not one well-formed JSON value in valid UTF-8. */
    public static final class ParseError extends Exception {
        ParseError(String message) {
            super(message);
        }
    }

    // ------------------------------------------------------------------ writing

    public static String write(Object value) {
        StringBuilder sb = new StringBuilder(256);
        write(sb, value);
        return sb.toString();
    }

    public static byte[] writeBytes(Object value) {
        return write(value).getBytes(StandardCharsets.UTF_8);
    }

    @SuppressWarnings("unchecked")
    public static void write(StringBuilder sb, Object v) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof String) {
            string(sb, (String) v);
        } else if (v instanceof Boolean) {
            sb.append(((Boolean) v).booleanValue() ? "true" : "false");
        } else if (v instanceof Long || v instanceof Integer || v instanceof Short) {
            sb.append(((Number) v).longValue());
        } else if (v instanceof Number) {
            double d = ((Number) v).doubleValue();
            sb.append(Double.isFinite(d) ? Double.toString(d) : "null");
        } else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : ((Map<String, Object>) v).entrySet()) {
                if (!first) sb.append(',');
                first = false;
                string(sb, e.getKey());
                sb.append(':');
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object o : (List<Object>) v) {
                if (!first) sb.append(',');
                first = false;
                write(sb, o);
            }
            sb.append(']');
        } else {
            string(sb, String.valueOf(v));
        }
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    static void string(StringBuilder sb, String s) {
        sb.append('"');
        int n = s.length();
        int plain = 0; // start of the run of characters that need no escape, appended in bulk
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            if (c >= 0x20 && c != '"' && c != '\\' && !Character.isSurrogate(c)) continue;
            if (Character.isSurrogate(c) && pairedAt(s, i)) continue;
            sb.append(s, plain, i);
            plain = i + 1;
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    // Control characters, and lone surrogates (which UTF-8 cannot carry:
                    // Java would silently turn them into '?'), become \\u escapes.
                    if (Character.isSurrogate(c)) {
                        sb.append("\\ufffd");
                    } else {
                        sb.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 15]);
                    }
            }
        }
        sb.append(s, plain, n);
        sb.append('"');
    }

    private static boolean pairedAt(String s, int i) {
        char c = s.charAt(i);
        if (Character.isHighSurrogate(c)) {
            return i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1));
        }
        return i > 0 && Character.isHighSurrogate(s.charAt(i - 1));
    }

    // ------------------------------------------------------------------ parsing

    public static Object parse(byte[] utf8) throws ParseError {
        CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        CharBuffer chars;
        try {
            chars = dec.decode(ByteBuffer.wrap(utf8));
        } catch (CharacterCodingException e) {
            throw new ParseError("invalid UTF-8");
        }
        return parse(chars.toString());
    }

    public static Object parse(String text) throws ParseError {
        Parser p = new Parser(text);
        p.ws();
        if (p.pos >= text.length()) throw new ParseError("empty");
        Object v = p.value(0);
        p.ws();
        if (p.pos != text.length()) throw new ParseError("trailing data at " + p.pos);
        return v;
    }

    private static final class Parser {
        private static final int MAX_DEPTH = 64;
        final String s;
        int pos;

        Parser(String s) {
            this.s = s;
        }

        void ws() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++;
                else break;
            }
        }

        ParseError err(String what) {
            return new ParseError(what + " at " + pos);
        }

        Object value(int depth) throws ParseError {
            if (depth > MAX_DEPTH) throw err("nested too deep");
            if (pos >= s.length()) throw err("unexpected end");
            char c = s.charAt(pos);
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) return number();
                    throw err("unexpected character");
            }
        }

        Object literal(String word, Object v) throws ParseError {
            if (!s.startsWith(word, pos)) throw err("bad literal");
            pos += word.length();
            return v;
        }

        Map<String, Object> object(int depth) throws ParseError {
            Map<String, Object> m = new LinkedHashMap<String, Object>();
            pos++;
            ws();
            if (pos < s.length() && s.charAt(pos) == '}') {
                pos++;
                return m;
            }
            while (true) {
                ws();
                if (pos >= s.length() || s.charAt(pos) != '"') throw err("expected key");
                String k = string();
                ws();
                if (pos >= s.length() || s.charAt(pos) != ':') throw err("expected ':'");
                pos++;
                ws();
                m.put(k, value(depth + 1));
                ws();
                if (pos >= s.length()) throw err("unexpected end");
                char c = s.charAt(pos++);
                if (c == '}') return m;
                if (c != ',') throw err("expected ',' or '}'");
            }
        }

        List<Object> array(int depth) throws ParseError {
            List<Object> l = new ArrayList<Object>();
            pos++;
            ws();
            if (pos < s.length() && s.charAt(pos) == ']') {
                pos++;
                return l;
            }
            while (true) {
                ws();
                l.add(value(depth + 1));
                ws();
                if (pos >= s.length()) throw err("unexpected end");
                char c = s.charAt(pos++);
                if (c == ']') return l;
                if (c != ',') throw err("expected ',' or ']'");
            }
        }

        String string() throws ParseError {
            pos++; // opening quote
            StringBuilder sb = new StringBuilder();
            while (true) {
                if (pos >= s.length()) throw err("unterminated string");
                char c = s.charAt(pos++);
                if (c == '"') return sb.toString();
                if (c < 0x20) throw err("control character in string");
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                if (pos >= s.length()) throw err("unterminated escape");
                char e = s.charAt(pos++);
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u':
                        if (pos + 4 > s.length()) throw err("bad \\u escape");
                        try {
                            sb.append((char) Integer.parseInt(s.substring(pos, pos + 4), 16));
                        } catch (NumberFormatException x) {
                            throw err("bad \\u escape");
                        }
                        pos += 4;
                        break;
                    default:
                        throw err("bad escape");
                }
            }
        }

        Object number() throws ParseError {
            int start = pos;
            if (s.charAt(pos) == '-') pos++;
            int digits = pos;
            while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
            if (pos == digits) throw err("bad number");
            if (s.charAt(digits) == '0' && pos - digits > 1) throw err("leading zero");
            boolean integral = true;
            if (pos < s.length() && s.charAt(pos) == '.') {
                integral = false;
                pos++;
                int f = pos;
                while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
                if (pos == f) throw err("bad fraction");
            }
            if (pos < s.length() && (s.charAt(pos) == 'e' || s.charAt(pos) == 'E')) {
                integral = false;
                pos++;
                if (pos < s.length() && (s.charAt(pos) == '+' || s.charAt(pos) == '-')) pos++;
                int x = pos;
                while (pos < s.length() && Character.isDigit(s.charAt(pos))) pos++;
                if (pos == x) throw err("bad exponent");
            }
            String t = s.substring(start, pos);
            if (integral) {
                try {
                    return Long.valueOf(t);
                } catch (NumberFormatException ignored) {
                    // beyond 64 bits: keep as a double
                }
            }
            return Double.valueOf(t);
        }
    }

    /** Deep equality where Long 1 and Double 1.0 differ, as JSON integers and floats do. */
    @SuppressWarnings("unchecked")
    public static boolean deepEquals(Object a, Object b) {
        if (a == null || b == null) return a == b;
        if (a instanceof Map && b instanceof Map) {
            Map<String, Object> ma = (Map<String, Object>) a, mb = (Map<String, Object>) b;
            if (ma.size() != mb.size()) return false;
            for (Map.Entry<String, Object> e : ma.entrySet()) {
                if (!mb.containsKey(e.getKey()) || !deepEquals(e.getValue(), mb.get(e.getKey()))) {
                    return false;
                }
            }
            return true;
        }
        if (a instanceof List && b instanceof List) {
            List<Object> la = (List<Object>) a, lb = (List<Object>) b;
            if (la.size() != lb.size()) return false;
            Iterator<Object> ia = la.iterator(), ib = lb.iterator();
            while (ia.hasNext()) if (!deepEquals(ia.next(), ib.next())) return false;
            return true;
        }
        return a.equals(b);
    }
}
