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
        Class<?> servlet = interfaceNamed(request.getClass(), SERVLET_REQUESTS);
        if (servlet != null) return ofServlet(request, servlet);
        return null;
    }

    private static final String[] SERVLET_REQUESTS = {
        "jakarta.servlet.http.HttpServletRequest", "javax.servlet.http.HttpServletRequest"};

    /** The servlet API's getters per request interface (javax, jakarta), resolved on first use. */
    private static final java.util.concurrent.ConcurrentHashMap<Class<?>, Method[]> SERVLET_METHODS =
            new java.util.concurrent.ConcurrentHashMap<Class<?>, Method[]>();

    private static Class<?> interfaceNamed(Class<?> c, String[] names) {
        for (; c != null; c = c.getSuperclass()) {
            Class<?> found = interfaceIn(c.getInterfaces(), names);
            if (found != null) return found;
        }
        return null;
    }

    private static Class<?> interfaceIn(Class<?>[] interfaces, String[] names) {
        for (Class<?> i : interfaces) {
            for (String n : names) if (i.getName().equals(n)) return i;
            Class<?> deeper = interfaceIn(i.getInterfaces(), names);
            if (deeper != null) return deeper;
        }
        return null;
    }

    /**
     * Servlet requests: the query string only, never getParameterMap(), which reads a form
     * body the app has not read yet.
     */
    private static Map<String, Object> ofServlet(Object req, Class<?> api) throws Exception {
        Method[] m = SERVLET_METHODS.get(api);
        if (m == null) {
            m = new Method[] {api.getMethod("getMethod"), api.getMethod("getRequestURI"),
                api.getMethod("getQueryString"), api.getMethod("getRemoteAddr"),
                api.getMethod("getHeader", String.class)};
            SERVLET_METHODS.put(api, m);
        }
        Map<String, Object> r = new LinkedHashMap<String, Object>();
        r.put("method", String.valueOf(m[0].invoke(req)));
        String query = (String) m[2].invoke(req);
        String uri = String.valueOf(m[1].invoke(req));
        r.put("url", Args.cap(query == null ? uri : uri + "?" + query));
        Object remote = m[3].invoke(req);
        if (remote != null) r.put("remote_addr", String.valueOf(remote));
        r.put("params", query(query));
        Map<String, Object> headers = new LinkedHashMap<String, Object>();
        for (String name : HEADERS) {
            Object v = m[4].invoke(req, name);
            if (v != null) headers.put(name, Args.cap(String.valueOf(v)));
        }
        r.put("headers", headers);
        return r;
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
