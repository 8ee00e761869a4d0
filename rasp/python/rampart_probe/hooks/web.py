"""Request context: the HTTP entry points set `context.current` for the request's duration.

- Flask: `flask.Flask.__call__` (type-level, so it holds for apps created before the attach
  and for middleware that replaced `app.wsgi_app`); gunicorn workers call it per request.
- Django: `django.core.handlers.wsgi.WSGIHandler.__call__` (type-level, like Flask), under
  gunicorn, uwsgi-style servers or runserver.
- any WSGI app served by wsgiref: `wsgiref.handlers.BaseHandler.run`.
- `http.server` handlers: `BaseHTTPRequestHandler.handle_one_request` (query only: the body
  belongs to the app's own reader).
- ASGI apps under uvicorn: `RequestResponseCycle.run_asgi` of each HTTP implementation
  (query only).
Small url-encoded form bodies of WSGI requests (<= 64 KiB) are read once and handed back to
the app as a fresh `wsgi.input`, so `params` holds query + form. Events raised while a WSGI
response iterable is consumed after the app returned carry no request.
"""

from __future__ import annotations

import io

from .. import context, patching

NAME = "web"
FORM_MAX = 64 << 10
_probe = None


def _form(environ):
    try:
        if environ.get("REQUEST_METHOD") not in ("POST", "PUT", "PATCH"):
            return None
        ctype = environ.get("CONTENT_TYPE", "")
        if not ctype.startswith("application/x-www-form-urlencoded"):
            return None
        n = int(environ.get("CONTENT_LENGTH") or 0)
        if not 0 < n <= FORM_MAX:
            return None
        body = environ["wsgi.input"].read(n)
        environ["wsgi.input"] = io.BytesIO(body)
        return body.decode("latin-1")
    except Exception:
        return None


def call_wsgi(app, environ, start_response):
    """Run one WSGI call with the request context set (an inner entry point wins)."""
    if _probe is None or not _probe.enabled:
        return app(environ, start_response)
    try:
        req = context.from_wsgi_environ(environ, _form(environ))
        token = context.current.set(req)
    except Exception:
        return app(environ, start_response)
    try:
        return app(environ, start_response)
    finally:
        context.current.reset(token)


def _patch_flask(flask) -> None:
    Flask = flask.Flask
    original = Flask.__call__

    def __call__(self, environ, start_response):
        return call_wsgi(original.__get__(self), environ, start_response)

    patching.replace(Flask, "__call__", __call__)


def _patch_django(wsgi) -> None:
    Handler = wsgi.WSGIHandler
    original = Handler.__call__

    def __call__(self, environ, start_response):
        return call_wsgi(original.__get__(self), environ, start_response)

    patching.replace(Handler, "__call__", __call__)


def _patch_wsgiref(handlers) -> None:
    original = handlers.BaseHandler.run

    def run(self, application):
        def app(environ, start_response):
            return call_wsgi(application, environ, start_response)

        return original(self, app)

    patching.replace(handlers.BaseHandler, "run", run)


class _HandlerRequest(context.Request):
    """The request of a http.server handler, read from the handler when an event needs it."""

    __slots__ = ("handler",)

    def __init__(self, handler) -> None:
        context.Request.__init__(self, "", "", "", "", None)
        self.handler = handler

    def to_dict(self) -> dict:
        if self._built is None:
            h = self.handler
            path = getattr(h, "path", "") or ""
            headers = getattr(h, "headers", None)
            host = headers.get("host", "") if headers is not None else ""
            self.method = getattr(h, "command", "") or ""
            self.url = f"http://{host}{path}" if host else path
            addr = getattr(h, "client_address", None)
            self.remote_addr = str(addr[0]) if isinstance(addr, tuple) else ""
            self.query = path.split("?", 1)[1] if "?" in path else ""
            self.headers = (lambda name: headers.get(name)) if headers is not None else None
        return context.Request.to_dict(self)


def _patch_http_server(server) -> None:
    original = server.BaseHTTPRequestHandler.handle_one_request

    def handle_one_request(self):
        if _probe is None or not _probe.enabled:
            return original(self)
        token = context.current.set(_HandlerRequest(self))
        try:
            return original(self)
        finally:
            context.current.reset(token)

    patching.replace(server.BaseHTTPRequestHandler, "handle_one_request", handle_one_request)


#: uvicorn's HTTP protocol implementations; each runs one request per `run_asgi` task
UVICORN_CYCLES = (
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.http.zttp_impl",
    "uvicorn.protocols.http.zttp_h2_impl",
)


def _patch_uvicorn_cycle(module) -> None:
    cls = module.RequestResponseCycle
    original = cls.run_asgi

    async def run_asgi(self, app):
        # run_asgi is a task of its own: the ContextVar set here is that request's only
        if _probe is None or not _probe.enabled:
            return await original(self, app)
        try:
            token = context.current.set(context.from_asgi_scope(self.scope))
        except Exception:
            return await original(self, app)
        try:
            return await original(self, app)
        finally:
            context.current.reset(token)

    patching.replace(cls, "run_asgi", run_asgi)


def install(probe) -> list:
    global _probe
    _probe = probe
    patching.when_imported("flask", _patch_flask)
    patching.when_imported("django.core.handlers.wsgi", _patch_django)
    patching.when_imported("wsgiref.handlers", _patch_wsgiref)
    patching.when_imported("http.server", _patch_http_server)
    for name in UVICORN_CYCLES:
        patching.when_imported(name, _patch_uvicorn_cycle)
    return []


def uninstall() -> None:
    global _probe
    _probe = None
