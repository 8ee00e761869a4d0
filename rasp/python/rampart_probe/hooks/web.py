"""Request context: the HTTP entry points set `context.current` for the request's duration.

- Flask: `flask.Flask.__call__` (type-level, so it holds for apps created before the attach
  and for middleware that replaced `app.wsgi_app`); gunicorn workers call it per request.
- Django: `django.core.handlers.wsgi.WSGIHandler.__call__` (type-level, like Flask), under
  gunicorn, uwsgi-style servers or runserver.
- any WSGI app served by wsgiref: `wsgiref.handlers.BaseHandler.run`.
- `http.server` handlers: `BaseHTTPRequestHandler.handle_one_request` (query only: the body
  belongs to the app's own reader).
- ASGI apps under uvicorn: `RequestResponseCycle.run_asgi` of each HTTP implementation;
  gunicorn's ASGI worker (`ASGIProtocol`, per connection);
  Django's `ASGIHandler.__call__` and Starlette's (so FastAPI's) `Starlette.__call__` under
  any ASGI server. Only `http` scopes; websocket and lifespan scopes pass through.
  Small url-encoded form bodies are copied from the app's own `receive` as it reads them.
Small url-encoded form bodies of WSGI requests (<= 64 KiB) are read once and handed back to
the app as a fresh `wsgi.input`, so `params` holds query + form. Events raised while a WSGI
response iterable is consumed after the app returned carry no request.
"""

from __future__ import annotations

import functools
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


def _tap_receive(req: context.AsgiRequest, receive):
    """The app's own `receive`, watched: the chunks of a small url-encoded form body are
    copied as the app reads them and become the request's form once complete. Nothing is
    read ahead of the app, so streaming bodies and apps that never read stay untouched."""
    if req.method not in ("POST", "PUT", "PATCH"):
        return receive
    ctype = req.header(b"content-type") or ""
    if not ctype.startswith("application/x-www-form-urlencoded"):
        return receive
    try:
        if int(req.header(b"content-length") or 0) > FORM_MAX:
            return receive
    except ValueError:
        return receive
    chunks: list | None = []
    size = 0

    async def tapped():
        nonlocal chunks, size
        msg = await receive()
        if chunks is not None:
            try:
                if msg.get("type") == "http.request":
                    body = msg.get("body") or b""
                    size += len(body)
                    if size > FORM_MAX:  # chunked and larger than announced: give up
                        chunks = None
                    else:
                        chunks.append(body)
                        if not msg.get("more_body"):
                            req.set_form(b"".join(chunks).decode("latin-1"))
                            chunks = None
                else:  # http.disconnect
                    chunks = None
            except Exception:
                chunks = None
        return msg

    return tapped


async def call_asgi(app, scope, receive, send):
    """Run one ASGI call with the request context set. Only `http` scopes: websocket and
    lifespan scopes pass through untouched. An outer entry point that already set this
    scope's request (uvicorn) wins, so framework handlers under it add nothing."""
    if _probe is None or not _probe.enabled or scope.get("type") != "http":
        return await app(scope, receive, send)
    cur = context.current.get()
    if cur is not None and getattr(cur, "scope", None) is scope:
        return await app(scope, receive, send)
    try:
        req = context.from_asgi_scope(scope)
        receive = _tap_receive(req, receive)
        token = context.current.set(req)
    except Exception:
        return await app(scope, receive, send)
    try:
        # the context is copied into tasks the app creates and into worker threads of
        # asgiref's sync_to_async and Starlette's run_in_threadpool (anyio), so sync views
        # run in a thread pool see this request too
        return await app(scope, receive, send)
    finally:
        context.current.reset(token)


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
        # run_asgi is a task of its own: the ContextVar set inside is that request's only
        if _probe is None or not _probe.enabled:
            return await original(self, app)
        return await original(self, functools.partial(call_asgi, app))

    patching.replace(cls, "run_asgi", run_asgi)


def _patch_gunicorn_asgi(protocol) -> None:
    """gunicorn's own ASGI worker (`-k asgi`; gunicorn 27 here): each connection's protocol
    calls `self.app` per request; connections opened after the attach get the wrapped app."""
    cls = protocol.ASGIProtocol
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        app = getattr(self, "app", None)
        if app is not None and _probe is not None:
            self.app = functools.partial(call_asgi, app)

    patching.replace(cls, "__init__", __init__)


def _patch_asgi_class(owner) -> None:
    """A framework's ASGI `__call__`, type-level (apps built before the attach included):
    the entry point under ASGI servers other than uvicorn (hypercorn, daphne, ...)."""
    original = owner.__call__

    async def __call__(self, scope, receive, send):
        return await call_asgi(original.__get__(self), scope, receive, send)

    patching.replace(owner, "__call__", __call__)


def install(probe) -> list:
    global _probe
    _probe = probe
    patching.when_imported("flask", _patch_flask)
    patching.when_imported("django.core.handlers.wsgi", _patch_django)
    patching.when_imported("wsgiref.handlers", _patch_wsgiref)
    patching.when_imported("http.server", _patch_http_server)
    for name in UVICORN_CYCLES:
        patching.when_imported(name, _patch_uvicorn_cycle)
    patching.when_imported("gunicorn.asgi.protocol", _patch_gunicorn_asgi)
    patching.when_imported("django.core.handlers.asgi", lambda m: _patch_asgi_class(m.ASGIHandler))
    # FastAPI's __call__ ends in Starlette's (super()), so this one patch covers both
    patching.when_imported("starlette.applications", lambda m: _patch_asgi_class(m.Starlette))
    return []


def uninstall() -> None:
    global _probe
    _probe = None
