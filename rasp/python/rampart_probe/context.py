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


def parse_params(query: str, out: dict) -> dict:
    if query and parse_qs is not None:
        try:
            for k, vals in parse_qs(query, keep_blank_values=True).items():
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


class AsgiRequest(Request):
    """The request of one ASGI http scope; `scope` tells an inner entry point (Django's or
    Starlette's handler under uvicorn) that the outer one already set this request."""

    __slots__ = ("scope",)


def from_asgi_scope(scope: dict) -> AsgiRequest:
    """The request of an ASGI http scope; the body is the app's to read (hooks/web.py taps
    the app's `receive` for a small url-encoded form)."""
    raw = {}
    for k, v in scope.get("headers") or ():
        try:
            raw[k.decode("latin-1").lower()] = v.decode("latin-1")
        except Exception:
            pass
    query = (scope.get("query_string") or b"").decode("latin-1")
    host = raw.get("host")
    if not host and scope.get("server"):
        host = "{}:{}".format(*tuple(scope["server"][:2]))
    path = scope.get("root_path", "") + scope.get("path", "")
    url = "{}://{}{}{}".format(
        scope.get("scheme", "http"),
        host or "",
        path,
        "?" + query if query else "",
    )
    client = scope.get("client")
    req = AsgiRequest(scope.get("method", ""), url, str(client[0]) if client else "", query, raw)
    req.scope = scope
    return req
