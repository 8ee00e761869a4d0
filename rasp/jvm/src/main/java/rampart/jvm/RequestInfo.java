package rampart.jvm;

import java.io.UnsupportedEncodingException;
import java.lang.reflect.Method;
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

    /** com.sun.net.httpserver.HttpExchange's getters, resolved on first use. */
    private static volatile Method[] exchangeMethods;

    static Map<String, Object> of(Object request) throws Exception {
        Class<?> exchange = publicBase(request.getClass(), "com.sun.net.httpserver.HttpExchange");
        if (exchange != null) return ofExchange(request, exchange);
        return null;
    }

    /**
     * The named public class among c's superclasses. jdk.httpserver is defined to the platform
     * loader, which the bootstrap-loaded probe cannot see, so its API is reached by reflection,
     * through the exported public class (the implementation's package is not exported).
     */
    private static Class<?> publicBase(Class<?> c, String name) {
        for (; c != null; c = c.getSuperclass()) if (c.getName().equals(name)) return c;
        return null;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> ofExchange(Object ex, Class<?> api) throws Exception {
        Method[] m = exchangeMethods;
        if (m == null) {
            exchangeMethods = m = new Method[] {api.getMethod("getRequestMethod"),
                api.getMethod("getRequestURI"), api.getMethod("getRemoteAddress"),
                api.getMethod("getRequestHeaders")};
        }
        Map<String, Object> r = new LinkedHashMap<String, Object>();
        r.put("method", String.valueOf(m[0].invoke(ex)));
        URI uri = (URI) m[1].invoke(ex);
        r.put("url", Args.cap(uri.toString()));
        InetSocketAddress remote = (InetSocketAddress) m[2].invoke(ex);
        if (remote != null) {
            r.put("remote_addr", remote.getAddress() != null
                    ? remote.getAddress().getHostAddress() : remote.getHostString());
        }
        r.put("params", query(uri.getRawQuery()));
        // Headers is a Map<String, List<String>> with normalised ("User-agent") keys
        Map<String, List<String>> h = (Map<String, List<String>>) m[3].invoke(ex);
        r.put("headers", headers(h));
        return r;
    }

    static Map<String, Object> headers(Map<String, List<String>> h) {
        Map<String, Object> headers = new LinkedHashMap<String, Object>();
        if (h == null) return headers;
        for (Map.Entry<String, List<String>> e : h.entrySet()) {
            if (e.getKey() == null || e.getValue() == null || e.getValue().isEmpty()) continue;
            for (String name : HEADERS) {
                if (name.equalsIgnoreCase(e.getKey())) headers.put(name, Args.cap(e.getValue().get(0)));
            }
        }
        return headers;
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
