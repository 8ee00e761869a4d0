"""The CPython probe's ASGI request context (rampart_probe/hooks/web.py) in-process: the
receive tap that copies small form bodies, `call_asgi` (http scopes only, the outer entry
point wins, the context follows tasks and worker threads) and the type-level Starlette patch
that covers FastAPI apps under any ASGI server. The live-attach tests are in
tests/integration/test_python_asgi.py."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

PROBE_DIR = Path(__file__).resolve().parents[2] / "rasp" / "python"
sys.path.insert(0, str(PROBE_DIR))

from rampart_probe import context  # noqa: E402
from rampart_probe.hooks import web  # noqa: E402


class _Probe:
    enabled = True


@pytest.fixture
def probe():
    saved = web._probe
    web._probe = _Probe()
    yield web._probe
    web._probe = saved


def _scope(method="POST", ctype=b"application/x-www-form-urlencoded", length=None, **extra):
    headers = [(b"host", b"app.test"), (b"content-type", ctype), (b"user-agent", b"ua")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": "/p",
        "query_string": b"q=1",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        **extra,
    }


def _receiver(*bodies: bytes):
    msgs = [
        {"type": "http.request", "body": b, "more_body": i < len(bodies) - 1}
        for i, b in enumerate(bodies)
    ]

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    return receive


def _drain(receive) -> list:
    async def go():
        out = []
        while True:
            msg = await receive()
            out.append(msg)
            if not msg.get("more_body"):
                return out

    return asyncio.run(go())


def test_tap_copies_a_chunked_form_and_hands_every_message_on() -> None:
    req = context.from_asgi_scope(_scope(length=9))
    tapped = web._tap_receive(req, _receiver(b"a=1&", b"b=x+y"))
    assert tapped is not None
    assert req.to_dict()["params"] == {"q": ["1"]}  # built before the body arrived
    msgs = _drain(tapped)
    assert [m["body"] for m in msgs] == [b"a=1&", b"b=x+y"]
    assert req.to_dict()["params"] == {"q": ["1"], "a": ["1"], "b": ["x y"]}


@pytest.mark.parametrize(
    "scope",
    [
        _scope(method="GET"),
        _scope(ctype=b"application/json"),
        _scope(length=web.FORM_MAX + 1),
        _scope(length="nan"),
    ],
)
def test_tap_leaves_receive_alone_when_the_body_is_no_small_form(scope) -> None:
    receive = _receiver(b"a=1")
    assert web._tap_receive(context.from_asgi_scope(scope), receive) is receive


def test_tap_gives_up_on_an_unannounced_body_over_the_limit() -> None:
    req = context.from_asgi_scope(_scope())
    half = b"a=" + b"x" * (web.FORM_MAX // 2)
    msgs = _drain(web._tap_receive(req, _receiver(half, half, b"&b=2")))
    assert b"".join(m["body"] for m in msgs) == half + half + b"&b=2"
    assert req.to_dict()["params"] == {"q": ["1"]}


def test_call_asgi_sets_the_request_for_tasks_and_threads_and_resets_it(probe) -> None:
    seen = {}

    async def app(scope, receive, send):
        seen["task"] = context.current.get()
        seen["thread"] = await asyncio.to_thread(
            lambda: (threading.current_thread().name, context.current.get())
        )
        seen["inner"] = await web.call_asgi(
            lambda s, r, se: _same(s, r, se, seen), scope, receive, send
        )

    async def go():
        await web.call_asgi(app, _scope(method="GET"), _receiver(), None)
        return context.current.get()

    assert asyncio.run(go()) is None
    req = seen["task"]
    assert req.to_dict()["url"] == "http://app.test/p?q=1"
    assert req.to_dict()["remote_addr"] == "127.0.0.1"
    assert seen["thread"][0] != threading.current_thread().name
    assert seen["thread"][1] is req
    assert seen["inner"] is req  # the same scope further in: the outer request stays


async def _same(scope, receive, send, seen):
    return context.current.get()


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_call_asgi_passes_other_scopes_through(probe, kind) -> None:
    got = []

    async def app(scope, receive, send):
        got.append((context.current.get(), receive))

    receive = _receiver()
    asyncio.run(web.call_asgi(app, {"type": kind, "path": "/ws"}, receive, None))
    assert got == [(None, receive)]


def test_starlette_patch_covers_fastapi_sync_routes_in_the_thread_pool(probe) -> None:
    fastapi = pytest.importorskip("fastapi")
    from starlette.applications import Starlette

    original = Starlette.__dict__["__call__"]
    web._patch_asgi_class(Starlette)
    try:
        app = fastapi.FastAPI()  # built after the patch; apps built before share the type
        seen = {}

        @app.post("/p")
        def view():  # a sync route: Starlette runs it with run_in_threadpool
            seen["thread"] = threading.current_thread().name
            seen["req"] = context.current.get()
            return {}

        sent = []

        async def send(msg):
            sent.append(msg)

        asyncio.run(app(_scope(length=3), _receiver(b"c=1"), send))
        assert sent[0]["status"] == 200
        assert seen["thread"] != threading.current_thread().name
        d = seen["req"].to_dict()
        assert d["method"] == "POST" and d["url"] == "http://app.test/p?q=1"
        assert d["headers"]["user-agent"] == "ua"
    finally:
        Starlette.__call__ = original


@given(st.text(alphabet="ab=&%+2;é ", max_size=24))
def test_query_split_fast_path_equals_parse_qs(query: str) -> None:
    assert context._split_qs(query) == parse_qs(query, keep_blank_values=True)
