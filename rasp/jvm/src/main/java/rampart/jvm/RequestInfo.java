package rampart.jvm;

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;

import java.io.UnsupportedEncodingException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLDecoder;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The {@code request} of an event, read from the current request object when an event
 * happens (not on every request: most requests reach no sink). Query parameters only: the
 * body is the app's to read, and reading it here would consume it.
 */
final class RequestInfo {
    private RequestInfo() {}

    static final String[] HEADERS = {"user-agent", "content-type", "host", "referer", "x-forwarded-for"};
    static final int PARAMS_MAX = 64;

    static Map<String, Object> of(Object request) {
        if (request instanceof HttpExchange) return ofExchange((HttpExchange) request);
        return null;
    }

    private static Map<String, Object> ofExchange(HttpExchange ex) {
        Map<String, Object> r = new LinkedHashMap<String, Object>();
        r.put("method", ex.getRequestMethod());
        URI uri = ex.getRequestURI();
        r.put("url", Args.cap(uri.toString()));
        InetSocketAddress remote = ex.getRemoteAddress();
        if (remote != null) {
            r.put("remote_addr", remote.getAddress() != null
                    ? remote.getAddress().getHostAddress() : remote.getHostString());
        }
        r.put("params", query(uri.getRawQuery()));
        Map<String, Object> headers = new LinkedHashMap<String, Object>();
        Headers h = ex.getRequestHeaders();
        for (String name : HEADERS) {
            String v = h.getFirst(name);
            if (v != null) headers.put(name, Args.cap(v));
        }
        r.put("headers", headers);
        return r;
    }

    static Map<String, Object> query(String raw) {
        Map<String, Object> params = new LinkedHashMap<String, Object>();
        if (raw == null || raw.isEmpty()) return params;
        int n = 0;
        for (String pair : raw.split("&")) {
            if (pair.isEmpty() || n++ >= PARAMS_MAX) continue;
            int eq = pair.indexOf('=');
            String k = decode(eq < 0 ? pair : pair.substring(0, eq));
            String v = eq < 0 ? "" : decode(pair.substring(eq + 1));
            @SuppressWarnings("unchecked")
            List<Object> values = (List<Object>) params.get(k);
            if (values == null) params.put(k, values = new ArrayList<Object>());
            values.add(Args.cap(v));
        }
        return params;
    }

    private static String decode(String s) {
        try {
            return URLDecoder.decode(s, "UTF-8");
        } catch (UnsupportedEncodingException | IllegalArgumentException e) {
            return s;
        }
    }
}
