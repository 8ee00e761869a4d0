"""The HTTP request an event happens in, carried in a ContextVar (threads and asyncio alike).

Entry-point patches (hooks/web.py) set a `Request` when a request starts and reset it when it
ends. The dict sent with events is built lazily, the first time an event needs it, so a
request that reaches no sink costs one ContextVar set/reset.
"""

from __future__ import annotations

import contextvars

try:
    from urllib.parse import parse_qs
except ImportError:  # pragma: no cover - always there in CPython
    parse_qs = None

#: headers copied into events (docs/probe-contract.md)
SELECTED_HEADERS = ("user-agent", "content-type", "host", "referer", "x-forwarded-for")
MAX_PARAM = 4096
MAX_PARAMS = 64

current: contextvars.ContextVar = contextvars.ContextVar("rampart_request", default=None)


def _cap(s: str) -> str:
    return s if len(s) <= MAX_PARAM else s[:MAX_PARAM]


def _split_qs(query: str) -> dict:
    """`parse_qs(query, keep_blank_values=True)`; without `%` or `+` nothing needs unquoting,
    so a plain split gives the same result at a fraction of the cost (the common case)."""
    if "%" in query or "+" in query:
        return parse_qs(query, keep_blank_values=True)
    out: dict = {}
    for part in query.split("&"):
        if part:
            k, _, v = part.partition("=")
            out.setdefault(k, []).append(v)
    return out


def parse_params(query: str, out: dict) -> dict:
    if query and parse_qs is not None:
        try:
            for k, vals in _split_qs(query).items():
                if len(out) >= MAX_PARAMS and k not in out:
                    break
                out.setdefault(_cap(k), []).extend(_cap(v) for v in vals)
        except Exception:
            pass
    return out


class Request:
    """One request: the raw facts an entry point had at hand, turned into the wire dict once."""

    __slots__ = ("_built", "form", "headers", "method", "query", "remote_addr", "url")

    def __init__(self, method, url, remote_addr, query, headers, form=None) -> None:
        self.method = method
        self.url = url
        self.remote_addr = remote_addr
        self.query = query
        self.headers = headers  # callable name -> value|None, or a dict of lower-case names
        self.form = form
        self._built = None

    def to_dict(self) -> dict:
        if self._built is None:
            params: dict = {}
            parse_params(self.query, params)
            if self.form:
                parse_params(self.form, params)
            hdrs = {}
            get = self.headers if callable(self.headers) else (self.headers or {}).get
            for name in SELECTED_HEADERS:
                v = get(name)
                if v:
                    hdrs[name] = _cap(str(v))
            self._built = {
                "method": self.method or "",
                "url": _cap(self.url or ""),
                "remote_addr": self.remote_addr or "",
                "params": params,
                "headers": hdrs,
            }
        return self._built

    def set_form(self, form: str) -> None:
        """A body that arrived after the request started (ASGI): later events carry it."""
        self.form = form
        self._built = None


def from_wsgi_environ(environ: dict, form=None) -> Request:
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    url = "{}://{}{}{}".format(scheme, host, path, "?" + query if query else "")

    def header(name: str):
        if name == "content-type":
            return environ.get("CONTENT_TYPE")
        return environ.get("HTTP_" + name.upper().replace("-", "_"))

    return Request(
        environ.get("REQUEST_METHOD", ""), url, environ.get("REMOTE_ADDR", ""), query, header, form
    )


_SELECTED_BYTES = frozenset(n.encode() for n in SELECTED_HEADERS)


class AsgiRequest(Request):
    """The request of one ASGI http scope, decoded from the scope only when an event needs it
    (its path taken at the start: apps rewrite `root_path` as they route, Starlette's Mount),
    so a request that reaches no sink pays for a few dict reads. `scope` tells an inner
    entry point (Django's or Starlette's handler under uvicorn) that the outer one already
    set this request."""

    __slots__ = ("_raw", "scope")

    def __init__(self, scope: dict) -> None:
        # slots set directly: this runs for every request, most of which reach no sink
        self.scope = scope
        self.method = scope.get("method", "")
        self.form = None
        self.headers = None
        self._built = None
        self._raw = (scope.get("root_path", ""), scope.get("path", ""))

    def header(self, name: bytes) -> str | None:
        """One raw header (names are lower-case bytes in ASGI), decoded."""
        for k, v in self.scope.get("headers") or ():
            if k.lower() == name:
                return v.decode("latin-1")
        return None

    def _decode(self) -> None:
        taken = self._raw
        if taken is None:  # another thread decoded it meanwhile (it sets _raw last)
            return
        root_path, path = taken
        scope = self.scope
        raw = {}
        for k, v in scope.get("headers") or ():
            try:
                k = k.lower()
                if k in _SELECTED_BYTES:  # only what events carry: no decoding of the rest
                    raw[k.decode("latin-1")] = v.decode("latin-1")
            except Exception:
                pass
        query = (scope.get("query_string") or b"").decode("latin-1")
        host = raw.get("host")
        server = scope.get("server")
        if not host and server:
            host = "{}:{}".format(*tuple(server[:2]))
        client = scope.get("client")
        self.url = "{}://{}{}{}".format(
            scope.get("scheme", "http"),
            host or "",
            (root_path or "") + (path or ""),
            "?" + query if query else "",
        )
        self.remote_addr = str(client[0]) if client else ""
        self.query = query
        self.headers = raw
        self._raw = None

    def to_dict(self) -> dict:
        if self._raw is not None:
            self._decode()
        return Request.to_dict(self)


def from_asgi_scope(scope: dict) -> AsgiRequest:
    """The request of an ASGI http scope; the body is the app's to read (hooks/web.py taps
    the app's `receive` for a small url-encoded form)."""
    return AsgiRequest(scope)
