package rampart.jvm;

import java.nio.ByteBuffer;
import java.util.Map;

/**
 * The sender thread's reusable encoding buffers: a batch of events is written as JSON into one
 * StringBuilder and UTF-8-encoded straight into one growing byte array of frames (4-byte
 * length, body), which goes out in one write. Same bytes as {@link Protocol#encode} per event,
 * without its four copies of every event (builder growth, toString, getBytes, framing) or the
 * garbage they leave; an event is a few KB (its stack), so this was most of the sender's
 * cost. One thread only (the sender).
 */
final class FrameBuffer {
    /** buffers grown past this by a burst of large events are dropped after the batch */
    private static final int KEEP_CHARS = 1 << 16, KEEP_BYTES = 1 << 20;

    private StringBuilder json = new StringBuilder(8192);
    private char[] chars = new char[8192];
    private byte[] buf = new byte[64 * 1024];
    private int len;
    private int frames;

    /** Appends one frame; false (nothing appended) when its body is over maxBody bytes. */
    boolean add(Map<String, Object> message, int maxBody) {
        json.setLength(0);
        Json.write(json, message);
        int start = len;
        ensure(4 + 3 * json.length()); // UTF-8: at most 3 bytes per UTF-16 char
        len += 4;
        utf8(json);
        int n = len - start - 4;
        if (n > maxBody) {
            len = start;
            return false;
        }
        buf[start] = (byte) (n >>> 24);
        buf[start + 1] = (byte) (n >>> 16);
        buf[start + 2] = (byte) (n >>> 8);
        buf[start + 3] = (byte) n;
        frames++;
        return true;
    }

    int frames() {
        return frames;
    }

    /** The frames added since the last {@link #clear}, ready to write. */
    ByteBuffer contents() {
        return ByteBuffer.wrap(buf, 0, len);
    }

    void clear() {
        len = 0;
        frames = 0;
        if (buf.length > KEEP_BYTES) buf = new byte[64 * 1024];
        if (json.capacity() > KEEP_CHARS) json = new StringBuilder(8192);
        if (chars.length > KEEP_CHARS) chars = new char[8192];
    }

    /**
     * UTF-8 of s appended at len (room ensured), as String.getBytes(UTF_8) encodes it
     * (Json.string has already replaced lone surrogates; one left anyway becomes '?', as
     * getBytes makes it).
     */
    private void utf8(StringBuilder sb) {
        int n = sb.length();
        if (chars.length < n) chars = new char[Math.max(n, 2 * chars.length)];
        char[] s = chars;
        sb.getChars(0, n, s, 0); // one bulk copy, then a plain array loop (no charAt checks)
        byte[] b = buf;
        int at = len;
        for (int i = 0; i < n; i++) {
            char c = s[i];
            if (c < 0x80) {
                b[at++] = (byte) c;
            } else if (c < 0x800) {
                b[at++] = (byte) (0xc0 | (c >> 6));
                b[at++] = (byte) (0x80 | (c & 0x3f));
            } else if (Character.isHighSurrogate(c) && i + 1 < n && Character.isLowSurrogate(s[i + 1])) {
                int cp = Character.toCodePoint(c, s[++i]);
                b[at++] = (byte) (0xf0 | (cp >> 18));
                b[at++] = (byte) (0x80 | ((cp >> 12) & 0x3f));
                b[at++] = (byte) (0x80 | ((cp >> 6) & 0x3f));
                b[at++] = (byte) (0x80 | (cp & 0x3f));
            } else if (Character.isSurrogate(c)) {
                b[at++] = '?';
            } else {
                b[at++] = (byte) (0xe0 | (c >> 12));
                b[at++] = (byte) (0x80 | ((c >> 6) & 0x3f));
                b[at++] = (byte) (0x80 | (c & 0x3f));
            }
        }
        len = at;
    }

    private void ensure(int more) {
        if (len + more <= buf.length) return;
        byte[] bigger = new byte[Math.max(buf.length * 2, len + more)];
        System.arraycopy(buf, 0, bigger, 0, len);
        buf = bigger;
    }
}
