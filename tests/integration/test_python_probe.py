"""The CPython probe end to end: real apps, live attach with `rasp-attach`, requests on
loopback, events asserted in the agent's store."""

from __future__ import annotations

import base64
import collections
import os
import pickle
import signal
import socket
import sys
from pathlib import Path

import pytest

from injector import attach_python
from injector.detect import detect
from tests.agentproc import AgentProc, wait_for
from tests.integration.pyprobe import (
    APPS,
    REPO,
    VENV_BIN,
    children,
    events,
    free_port,
    get,
    interpreter,
    probe_row,
    rasp_attach,
    start_gunicorn,
    start_http_app,
)

pytestmark = pytest.mark.integration

BLOCK_POLICY = """\
policies:
  - id: no-passwd-from-web
    runtime: python
    hook: os.system
    match: {args: "/etc/passwd"}
    action: block
"""


def _tmp_entries() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if "rampart-attach" in p.name}


def test_http_server_attach_reports_every_sink_with_request_context(
    spawn, agent: AgentProc, tmp_path
) -> None:
    p, port = start_http_app(spawn, sys.executable)
    before = _tmp_entries()
    out = rasp_attach(agent, p.pid)
    assert out["runtime"] == "python" and not out["already"]
    assert out["probe"]["mode"] == "attached" and out["probe"]["hooks"] >= 20
    # the bootstrap's per-attach copy is gone: nothing left beside the socket or in /tmp
    assert not [x for x in agent.dir.iterdir() if x.name.startswith(".rampart-attach")]
    assert _tmp_entries() == before

    target = tmp_path / "note.txt"
    target.write_text("hello")
    served, sport = start_http_app(spawn, sys.executable)  # a second server to fetch from
    pickled = base64.b64encode(pickle.dumps(collections.OrderedDict(a=1))).decode()
    calls = [
        ("/cmd", {"c": "id"}),
        ("/read", {"path": str(target)}),
        ("/write", {"path": str(tmp_path / "out.txt"), "data": "x"}),
        ("/ls", {"path": str(tmp_path)}),
        ("/fetch", {"url": f"http://127.0.0.1:{sport}/health"}),
        ("/sql", {"name": "alice' OR '1'='1"}),
        ("/sql-early", {"name": "early"}),
        ("/pickle", {"b64": pickled}),
        ("/eval", {"expr": "6*7"}),
    ]
    for path, params in calls:
        status, body = get(port, path, **params)
        assert status == 200, (path, body)

    (ev,) = events(agent, p.pid, "os.system")
    assert ev["kind"] == "process" and ev["args"] == ["id > /dev/null 2>&1"]
    assert ev["runtime"] == "python" and not ev["blocked"]
    req = ev["request"]
    assert req["method"] == "GET" and req["url"].endswith("/cmd?c=id")
    assert req["params"] == {"c": ["id"]} and req["remote_addr"] == "127.0.0.1"
    assert req["headers"]["user-agent"] == "rampart-test"
    assert ev["stack"][0].startswith("run_command (") and "sinks.py" in ev["stack"][0]
    assert any(f.startswith("do_GET (") for f in ev["stack"])
    assert ev["process"]["exe"].startswith("/root/.pyenv") or ev["process"]["exe"]

    (popen,) = events(agent, p.pid, "subprocess.Popen")
    assert popen["args"] == ["/bin/echo", "id"] and popen["kind"] == "process"

    opens = events(agent, p.pid, "open", 2)
    by_path = {e["args"][0]: e for e in opens}
    assert by_path[str(target)]["args"] == [str(target), "r"]
    assert by_path[str(tmp_path / "out.txt")]["args"][1] == "w"
    assert by_path[str(target)]["request"]["params"] == {"path": [str(target)]}
    assert all(not a["args"][0].endswith((".py", ".pyc")) for a in opens)

    (ls,) = events(agent, p.pid, "os.listdir")
    assert ls["args"] == [str(tmp_path)] and ls["kind"] == "file"

    conn = events(agent, p.pid, "socket.connect")
    assert f"127.0.0.1:{sport}" in [e["args"][0] for e in conn]
    assert conn[0]["kind"] == "network"
    dns = events(agent, p.pid, "socket.getaddrinfo")
    assert dns[0]["kind"] == "dns" and dns[0]["args"][0] == "127.0.0.1"

    sql = [e for e in events(agent, p.pid, "sqlite3.Cursor.execute") if "users" in e["args"][0]]
    assert any("WHERE name = 'alice' OR '1'='1'" in e["args"][0] for e in sql)
    assert all(e["kind"] == "sql" for e in sql)

    # a connection opened before the attach: reported through its trace callback
    (early,) = events(agent, p.pid, "sqlite3.Connection.trace")
    assert early["args"] == ["SELECT name FROM items WHERE name = 'early'"]
    assert early["kind"] == "sql" and early["request"]["params"] == {"name": ["early"]}
    assert any(f.startswith("sql_early (") for f in early["stack"])

    (pk,) = events(agent, p.pid, "pickle.find_class")
    assert pk["args"] == ["collections", "OrderedDict"] and pk["kind"] == "deserialization"

    comp = [e for e in events(agent, p.pid, "compile") if e["args"][0] == "6*7"]
    assert comp and comp[0]["kind"] == "code" and comp[0]["request"]["params"]["expr"] == ["6*7"]
    assert served.poll() is None and p.poll() is None


def test_attach_twice_is_a_noop(spawn, agent: AgentProc) -> None:
    p, port = start_http_app(spawn, sys.executable)
    rasp_attach(agent, p.pid)
    again = rasp_attach(agent, p.pid)
    assert again["already"] is True
    get(port, "/cmd", c="true")
    assert len(events(agent, p.pid, "os.system")) == 1  # one probe, one event


@pytest.mark.slow
def test_flask_gunicorn_block_mode_and_many_requests(spawn, agent_factory) -> None:
    agent = agent_factory()
    agent.policy.write_text(BLOCK_POLICY)
    agent.start()
    master, port = start_gunicorn(spawn)
    (worker,) = wait_for(lambda: children(master.pid), 10, "gunicorn worker")
    rasp_attach(agent, worker)

    # the block table arrives right after the hello; the blocked call takes the app's
    # error path (403), everything else keeps working
    wait_for(lambda: get(port, "/cmd", c="cat /etc/passwd")[0] == 403, 10, "block in force")
    status, body = get(port, "/cmd", c="cat /etc/passwd")
    assert status == 403
    assert "Rampart blocked os.system by policy no-passwd-from-web" in body
    assert get(port, "/cmd", c="true")[0] == 200

    blocked = agent.wait_rows(1, "pid = ? AND blocked = 1", (worker,))
    assert blocked[0]["hook"] == "os.system" and blocked[0]["policy_id"] == "no-passwd-from-web"
    assert blocked[0]["request"]["params"] == {"c": ["cat /etc/passwd"]}

    # a form POST: the params hold the form fields, and Flask still reads its body
    status, body = get(port, "/sql", form={"name": "bob"})
    assert status == 200 and "bob" in body
    sql = [
        e
        for e in events(agent, worker, "sqlite3.Cursor.execute", 2)
        if e.get("request") and e["request"]["method"] == "POST"
    ]
    assert sql and sql[0]["request"]["params"] == {"name": ["bob"]}
    assert any(f.startswith("sql (") for f in sql[0]["stack"])

    # 300 requests after the attach, every one succeeds
    codes = collections.Counter()
    for i in range(100):
        codes[get(port, "/health")[0]] += 1
        codes[get(port, "/sql", name=f"user{i}")[0]] += 1
        codes[get(port, "/read", path="/etc/hostname")[0]] += 1
    assert codes == {200: 300}
    assert worker in children(master.pid)  # the same worker: it never died
    # the probe tells the agent which block table it runs
    wait_for(lambda: (probe_row(agent, worker) or {}).get("policy"), 10, "policy uuid in ps")


@pytest.mark.slow
def test_gthread_worker_and_forked_workers_get_their_own_connection(spawn, agent) -> None:
    master, port = start_gunicorn(spawn, "-k", "gthread", "--threads", "4")
    (first,) = wait_for(lambda: children(master.pid), 10, "gunicorn worker")
    rasp_attach(agent, first)  # multi-threaded worker
    rasp_attach(agent, master.pid)  # the arbiter: workers it forks from now on inherit it
    assert get(port, "/cmd", c="true")[0] == 200
    events(agent, first, "os.system")

    os.kill(master.pid, signal.SIGTTIN)  # one more worker, forked after the attach
    new = wait_for(lambda: [c for c in children(master.pid) if c != first], 20, "new worker")[0]
    row = wait_for(lambda: probe_row(agent, new), 15, "hello of the forked worker")
    assert row["mode"] == "attached"
    # requests land on either worker; keep going until the new one served a sink
    wait_for(
        lambda: (
            get(port, "/cmd", c="echo forked")[0] == 200
            and agent.rows("pid = ? AND hook = 'os.system'", (new,))
        ),
        30,
        "an event from the forked worker",
    )


def test_agent_down_at_attach_drops_counts_and_reconnects(spawn, agent: AgentProc) -> None:
    p, port = start_http_app(spawn, sys.executable)
    agent.control("attach.expect", pid=p.pid, runtime="python")
    agent.stop()
    # A bare listener stands in for the agent just long enough to learn that the probe is
    # installed (its hello arrives), then goes away: from then on nothing listens.
    stand_in = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stand_in.bind(str(agent.socket))
    stand_in.listen(1)
    stand_in.settimeout(20)
    attach_python.ATTACHER.attach(detect(p.pid), agent.socket, timeout=5)
    conn, _ = stand_in.accept()
    assert b'"mode":"attached"' in conn.recv(65536)
    conn.close()
    stand_in.close()
    agent.socket.unlink()
    for _ in range(5):  # the app works while its probe cannot reach the agent
        assert get(port, "/cmd", c="true")[0] == 200
    agent.start()
    row = wait_for(lambda: probe_row(agent, p.pid), 40, "the probe reconnecting")
    assert row["mode"] == "attached"
    wait_for(
        lambda: (probe_row(agent, p.pid) or {}).get("dropped_by", {}).get("agent_away", 0) >= 5,
        15,
        "the drops counted in the heartbeat",
    )
    assert get(port, "/cmd", c="echo back")[0] == 200
    ev = events(agent, p.pid, "os.system")
    assert ev[-1]["args"][0].startswith("echo back")


def test_sdk_start(spawn, agent: AgentProc) -> None:
    p, port = start_http_app(spawn, sys.executable, agent, sdk=True)
    row = wait_for(lambda: probe_row(agent, p.pid), 15, "the SDK probe's hello")
    assert row["mode"] == "sdk"
    assert get(port, "/eval", expr="1+1")[0] == 200
    ev = [e for e in events(agent, p.pid, "compile") if e["args"][0] == "1+1"]
    assert ev and ev[0]["request"]["url"].endswith("/eval?expr=1%2B1")


def test_target_blocked_in_accept(spawn, agent: AgentProc) -> None:
    p = spawn([sys.executable, str(APPS / "accept_target.py")], stdout=-1)
    port = int(p.stdout.readline().split()[1])
    rasp_attach(agent, p.pid)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(10) == b"done"
    (ev,) = events(agent, p.pid, "os.system")
    assert (ev["args"] == ["true"] and "request" not in ev) or ev["request"] is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "python", ["/usr/bin/python3", "3.8", "3.9", "3.10", "3.12", "3.13"], ids=lambda v: v
)
def test_other_interpreters(spawn, agent: AgentProc, python: str) -> None:
    """/usr/bin/python3 links libpython statically; pyenv's are shared. 3.8 is the oldest
    with audit hooks, 3.13 the newest we have."""
    exe = python if python.startswith("/") else interpreter(python)
    if exe is None or not Path(exe).exists():
        pytest.skip(f"no CPython {python} on this machine")
    p, port = start_http_app(spawn, exe)
    out = rasp_attach(agent, p.pid)
    assert out["probe"]["runtime_version"].startswith(out["version"][:3])
    assert get(port, "/cmd", c="true")[0] == 200
    assert get(port, "/sql", name="bob")[0] == 200
    (ev,) = events(agent, p.pid, "os.system")
    assert ev["request"]["params"] == {"c": ["true"]}
    sql = events(agent, p.pid, "sqlite3.Cursor.execute", 1)
    assert any("bob" in e["args"][0] for e in sql)


def test_uvicorn_asgi_request_context(spawn, agent: AgentProc) -> None:
    port = free_port()
    p = spawn(
        [
            str(VENV_BIN / "uvicorn"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "tests.apps.python.asgi_app:app",
        ],
        cwd=str(REPO),
    )
    wait_for(lambda: get(port, "/health", timeout=1)[0] == 200, 30, "uvicorn up")
    rasp_attach(agent, p.pid)
    assert get(port, "/cmd", c="echo asgi")[0] == 200
    (ev,) = events(agent, p.pid, "os.system")
    assert ev["args"] == ["echo asgi > /dev/null 2>&1"]
    req = ev["request"]
    assert req["method"] == "GET" and req["params"] == {"c": ["echo asgi"]}
    assert req["url"] == f"http://127.0.0.1:{port}/cmd?c=echo+asgi"
    assert req["remote_addr"] == "127.0.0.1" and req["headers"]["user-agent"] == "rampart-test"


def test_agent_exit_frame_stops_reporting_and_a_new_attach_resumes(spawn, agent) -> None:
    p, port = start_http_app(spawn, sys.executable)
    rasp_attach(agent, p.pid)
    agent.control("push", pid=p.pid, frame={"message_type": 0, "data": {"reason": "detach"}})
    wait_for(lambda: probe_row(agent, p.pid) is None, 10, "the probe to disconnect")
    assert get(port, "/cmd", c="echo quiet")[0] == 200  # the app runs on, unobserved
    out = rasp_attach(agent, p.pid)
    assert out["already"] is True  # the same probe, woken up: a fresh hello
    assert get(port, "/cmd", c="echo loud")[0] == 200
    ev = events(agent, p.pid, "os.system")
    assert [e["args"][0].split(" >")[0] for e in ev] == ["echo loud"]


def test_target_running_as_another_user(spawn, agent: AgentProc) -> None:
    """The per-attach copy is chowned to the target's uid: its dlopen runs as that user."""
    argv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3",
        str(APPS / "http_server_app.py"),
    ]
    p = spawn(argv, stdout=-1)
    port = int(p.stdout.readline().split()[1])
    rasp_attach(agent, p.pid)
    assert get(port, "/cmd", c="id")[0] == 200
    (ev,) = events(agent, p.pid, "os.system")
    assert ev["process"]["uid"] == 65534
    assert not [x for x in agent.dir.iterdir() if x.name.startswith(".rampart-attach")]


@pytest.mark.parametrize("python", [sys.executable, "/usr/bin/python3"], ids=["pyenv", "debian"])
def test_target_in_a_busy_loop(spawn, agent: AgentProc, tmp_path, python: str) -> None:
    p = spawn([python, str(APPS / "busy_target.py"), str(tmp_path)], stdout=-1)
    assert p.stdout.readline().strip() == b"ready"
    rasp_attach(agent, p.pid)
    ev = events(agent, p.pid, "os.listdir", 2)
    assert ev[0]["args"] == [str(tmp_path)] and "<module>" in ev[0]["stack"][0]
    assert p.poll() is None


def test_config_frame_sets_stack_depth_and_mutes_hooks(spawn, agent: AgentProc) -> None:
    p, port = start_http_app(spawn, sys.executable)
    rasp_attach(agent, p.pid)
    config = {
        "uuid": "c1",
        "hooks_disabled": ["subprocess.Popen"],
        "stack_depth": 2,
        "settings": {"stack_depth_by_hook": {"os.listdir": 0}},
    }
    agent.control("push", pid=p.pid, frame={"message_type": 3, "data": config})

    def two_frame_system_event():
        assert get(port, "/cmd", c="true")[0] == 200
        rows = agent.rows("pid = ? AND hook = 'os.system'", (p.pid,))
        return [e for e in rows if len(e["stack"]) == 2]

    (ev, *_) = wait_for(two_frame_system_event, 10, "the config in force")
    assert ev["stack"][0].startswith("run_command (")
    popens = len(agent.rows("pid = ? AND hook = 'subprocess.Popen'", (p.pid,)))
    assert get(port, "/cmd", c="true")[0] == 200
    assert get(port, "/ls", path="/")[0] == 200
    (ls,) = events(agent, p.pid, "os.listdir")
    assert ls["stack"] == []
    assert len(events(agent, p.pid, "os.system", 2)) >= 2
    assert len(agent.rows("pid = ? AND hook = 'subprocess.Popen'", (p.pid,))) == popens
