"""ASGI request context with the CPython probe attached live to uvicorn: Django's ASGI
handler (sync views in asgiref's worker thread, async views, form bodies read by Django),
FastAPI/Starlette (sync routes in the anyio thread pool, async routes, a form body the app
reads itself, a streaming response, a websocket scope that carries no request) and a bare
ASGI app (form bodies small and too large to copy)."""

from __future__ import annotations

import json
import os

import pytest

from tests.agentproc import AgentProc, wait_for
from tests.integration.pyprobe import (
    REPO,
    VENV_BIN,
    children,
    free_port,
    get,
    rasp_attach,
    start_gunicorn,
)

pytestmark = pytest.mark.integration


def start_uvicorn(spawn, app: str, env: dict | None = None):
    """uvicorn serving `app` on loopback; returns (process, port)."""
    port = free_port()
    argv = [str(VENV_BIN / "uvicorn"), "--port", str(port), "--log-level", "warning", app]
    p = spawn(argv, cwd=str(REPO), env=env) if env else spawn(argv, cwd=str(REPO))
    wait_for(lambda: get(port, "/health", timeout=1)[0] == 200, 30, "uvicorn up")
    return p, port


def cmd_event(agent: AgentProc, pid: int, command: str) -> dict:
    """The os.system event of one command (tests/apps/python/sinks.py silences its output)."""
    arg = f"{command} > /dev/null 2>&1"
    (ev,) = wait_for(
        lambda: [
            e for e in agent.rows("pid = ? AND hook = 'os.system'", (pid,)) if e["args"] == [arg]
        ],
        15,
        f"the event of {command!r}",
    )
    return ev


def test_plain_asgi_form_bodies(spawn, agent: AgentProc) -> None:
    p, port = start_uvicorn(spawn, "tests.apps.python.asgi_app:app")
    rasp_attach(agent, p.pid)

    # a small form: copied from the app's own receive() as it reads it
    assert get(port, "/cmd", form={"c": "echo form"}) == (200, "rc=0 out=echo form")
    req = cmd_event(agent, p.pid, "echo form")["request"]
    assert req["method"] == "POST" and req["url"] == f"http://127.0.0.1:{port}/cmd"
    assert req["params"] == {"c": ["echo form"]}
    assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"

    # a form over 64 KiB is not copied, and the app still reads all of it
    status, _ = get(port, "/cmd", form={"c": "echo big", "pad": "x" * (70 << 10)})
    assert status == 200
    req = cmd_event(agent, p.pid, "echo big")["request"]
    assert req["method"] == "POST" and not req.get("params")

    # query and form together
    assert get(port, "/cmd?q=1", form={"c": "echo both"})[0] == 200
    assert cmd_event(agent, p.pid, "echo both")["request"]["params"] == {
        "q": ["1"],
        "c": ["echo both"],
    }


def test_django_asgi_uvicorn(spawn, agent: AgentProc, tmp_path) -> None:
    pytest.importorskip("django", reason="django is a dev extra (pip install -e '.[dev]')")
    env = dict(os.environ, DJANGO_DB=str(tmp_path / "db.sqlite3"))
    p, port = start_uvicorn(spawn, "tests.apps.python.django_app:asgi_application", env)
    rasp_attach(agent, p.pid)

    # a sync view: Django runs it through sync_to_async in a worker thread; the request
    # context follows it there
    status, thread = get(port, "/thread_cmd", c="echo dj-sync")
    assert status == 200 and thread != "MainThread", thread
    ev = cmd_event(agent, p.pid, "echo dj-sync")
    req = ev["request"]
    assert (
        req["method"] == "GET"
        and req["url"] == f"http://127.0.0.1:{port}/thread_cmd?c=echo+dj-sync"
    )
    assert req["params"] == {"c": ["echo dj-sync"]} and req["remote_addr"] == "127.0.0.1"
    assert req["headers"]["user-agent"] == "rampart-test"
    assert any(f.startswith("thread_cmd (") and "django_app.py" in f for f in ev["stack"])

    # an async view, on the event loop
    assert get(port, "/async_cmd", c="echo dj-async")[0] == 200
    req = cmd_event(agent, p.pid, "echo dj-async")["request"]
    assert req["params"] == {"c": ["echo dj-async"]}

    # a form POST that Django reads and parses itself; the ORM query carries the form
    status, body = get(port, "/orm", form={"name": "x' OR '1'='1"})
    assert status == 200 and body == "[]", body
    sql = wait_for(
        lambda: [
            e
            for e in agent.rows("pid = ? AND kind = 'sql'", (p.pid,))
            if "FROM people WHERE" in e["args"][0]
        ],
        15,
        "the ORM query's event",
    )
    assert sql[0]["request"]["method"] == "POST"
    assert sql[0]["request"]["params"] == {"name": ["x' OR '1'='1"]}
    assert [d["rule"] for d in sql[0].get("detections", [])] == ["sqli.input"]


def test_fastapi_uvicorn(spawn, agent: AgentProc) -> None:
    pytest.importorskip("fastapi", reason="fastapi is a dev extra (pip install -e '.[dev]')")
    websocket = pytest.importorskip("websocket")
    p, port = start_uvicorn(spawn, "tests.apps.python.fastapi_app:app")
    rasp_attach(agent, p.pid)

    # a sync route: Starlette runs it in anyio's thread pool, the context follows
    status, body = get(port, "/sync_cmd", c="echo fa-sync")
    assert status == 200 and json.loads(body)["thread"] != "MainThread", body
    req = cmd_event(agent, p.pid, "echo fa-sync")["request"]
    assert (
        req["method"] == "GET" and req["url"] == f"http://127.0.0.1:{port}/sync_cmd?c=echo+fa-sync"
    )
    assert req["params"] == {"c": ["echo fa-sync"]} and req["remote_addr"] == "127.0.0.1"

    status, body = get(port, "/async_cmd", c="echo fa-async")
    assert status == 200 and json.loads(body)["thread"] == "MainThread", body
    assert cmd_event(agent, p.pid, "echo fa-async")["request"]["params"] == {"c": ["echo fa-async"]}

    # the app reads its own body; the probe's copy gives the params
    assert get(port, "/form_cmd", form={"c": "echo fa-form"})[0] == 200
    req = cmd_event(agent, p.pid, "echo fa-form")["request"]
    assert req["method"] == "POST" and req["params"] == {"c": ["echo fa-form"]}

    # a sink reached while the response streams still belongs to the request
    status, body = get(port, "/stream", c="echo fa-stream")
    assert status == 200 and body.startswith("start\n") and body.endswith("end\n"), body
    assert cmd_event(agent, p.pid, "echo fa-stream")["request"]["params"] == {
        "c": ["echo fa-stream"]
    }

    # a websocket scope is left alone: the socket works, its events carry no request
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=10)
    try:
        ws.send("echo fa-ws")
        assert "thread" in ws.recv()
    finally:
        ws.close()
    assert not cmd_event(agent, p.pid, "echo fa-ws").get("request")
    assert get(port, "/health") == (200, "ok")


@pytest.mark.parametrize(
    ("worker_class", "app"),
    [
        ("asgi", "tests.apps.python.asgi_app:app"),
        ("asgi", "tests.apps.python.django_app:asgi_application"),
        ("uvicorn.workers.UvicornWorker", "tests.apps.python.asgi_app:app"),
    ],
)
def test_gunicorn_asgi_workers(spawn, agent: AgentProc, tmp_path, worker_class, app) -> None:
    """gunicorn's own ASGI worker (`-k asgi`: its protocol's app is the entry point; for
    Django, `ASGIHandler.__call__` too and the outer one wins) and uvicorn's gunicorn worker
    (uvicorn's request cycle), attached in the forked worker."""
    if worker_class == "asgi":
        pytest.importorskip("gunicorn.workers.gasgi", reason="a gunicorn without its ASGI worker")
    else:
        pytest.importorskip("uvicorn.workers", reason="uvicorn's gunicorn worker")
    env = dict(os.environ, DJANGO_DB=str(tmp_path / "db.sqlite3"))
    master, port = start_gunicorn(spawn, "-k", worker_class, app=app, env=env)
    try:
        (worker,) = wait_for(lambda: children(master.pid), 10, "gunicorn worker")
        rasp_attach(agent, worker)
        assert get(port, "/cmd?q=1", form={"c": "echo gasgi"})[0] == 200
        req = cmd_event(agent, worker, "echo gasgi")["request"]
        assert req["method"] == "POST" and req["url"] == f"http://127.0.0.1:{port}/cmd?q=1"
        assert req["params"] == {"q": ["1"], "c": ["echo gasgi"]}
        assert req["remote_addr"] == "127.0.0.1"
        assert req["headers"]["user-agent"] == "rampart-test"
    finally:
        # SIGTERM: the master stops and reaps its worker. The spawn fixture's SIGKILL would
        # orphan it, and uvicorn's worker does not notice its master is gone: it kept serving
        master.terminate()
        master.wait(timeout=30)
    assert not os.path.exists(f"/proc/{worker}"), "the worker outlived its master"


def test_django_asgi_block_mode_on_a_form_body(spawn, agent_factory, tmp_path) -> None:
    """`sqli.input` in block mode, decided in the probe from the form the tap copied: the
    injected POST gets Django's error path (403) in the sync_to_async worker thread, the
    statement never runs, benign requests keep working."""
    pytest.importorskip("django", reason="django is a dev extra (pip install -e '.[dev]')")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {id: sqli.input, action: block}\n")
    agent = agent_factory(args=["--rules", str(rules)])
    agent.start()
    env = dict(os.environ, DJANGO_DB=str(tmp_path / "db.sqlite3"))
    p, port = start_uvicorn(spawn, "tests.apps.python.django_app:asgi_application", env)
    rasp_attach(agent, p.pid)

    attack = {"name": "x' OR '1'='1"}
    wait_for(lambda: get(port, "/orm", form=attack)[0] == 403, 10, "block in force")
    status, body = get(port, "/orm", form=attack)
    assert status == 403 and "by policy sqli.input" in body, body
    (ev,) = agent.wait_rows(1, "pid = ? AND blocked = 1", (p.pid,))[:1]
    assert ev["policy_id"] == "sqli.input" and "FROM people WHERE" in ev["args"][0]
    assert ev["request"]["method"] == "POST" and ev["request"]["params"] == {
        "name": [attack["name"]]
    }

    # benign input, by form and by query, and a hundred requests after: all answered
    assert get(port, "/orm", form={"name": "bob"}) == (200, "[]")
    codes = [get(port, "/orm", name=f"user{i}")[0] for i in range(50)]
    codes += [get(port, "/health")[0] for _ in range(50)]
    assert codes == [200] * 100
