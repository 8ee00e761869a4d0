"""Events from a real probe connection reach the SQLite store, the JSON lines file and the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from rasp.protocol.schema import Request
from tests.agentproc import AgentProc, wait_for

DESIGN_FIELDS = {
    "ts",
    "pid",
    "runtime",
    "runtime_version",
    "hook",
    "kind",
    "args",
    "stack",
    "blocked",
    "policy_id",
    "request",
    "process",
}
PROCESS_FIELDS = {"exe", "cmdline", "ppid", "uid", "container_id", "pid_tree"}


def test_traces_are_stored_enriched_and_printed(agent: AgentProc) -> None:
    me = os.getpid()
    with agent.probe(runtime="python") as p:
        p.hello()
        p.trace(
            "os.system",
            "process",
            ["id; cat /etc/passwd"],
            stack=["view(app.py:10)", "dispatch(flask/app.py:99)"],
            request=Request(
                method="GET",
                url="http://127.0.0.1/run?cmd=id",
                remote_addr="127.0.0.1:5000",
                params={"cmd": ["id; cat /etc/passwd"]},
            ),
        )
        p.trace("open", "file", ["/etc/hosts", "r"])
        p.trace("socket.getaddrinfo", "dns", ["localhost", "80"])
        rows = agent.wait_rows(3)

    first = rows[0]
    assert set(first) >= DESIGN_FIELDS
    assert first["pid"] == me and first["runtime"] == "python"
    assert first["hook"] == "os.system" and first["kind"] == "process"
    assert first["args"] == ["id; cat /etc/passwd"]
    assert first["stack"][0] == "view(app.py:10)"
    assert first["request"]["params"] == {"cmd": ["id; cat /etc/passwd"]}
    assert first["request"]["method"] == "GET"
    proc = first["process"]
    assert set(proc) >= PROCESS_FIELDS
    assert proc["exe"] == os.path.realpath(f"/proc/{me}/exe")
    assert proc["ppid"] == os.getppid() and proc["uid"] == os.getuid()
    assert proc["pid_tree"].startswith(f"{me}.")
    assert f"<{os.getppid()}." in proc["pid_tree"]
    assert [r["kind"] for r in rows] == ["process", "file", "dns"]

    # indexed columns agree with the JSON
    db = sqlite3.connect(agent.store)
    cols = db.execute("SELECT pid, runtime, kind, hook, blocked FROM events ORDER BY id").fetchall()
    assert cols[1] == (me, "python", "file", "open", 0)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[1] for r in db.execute("PRAGMA index_list(events)")}
    assert {"events_ts", "events_pid", "events_kind"} <= indexes

    # the JSON lines sink got the same events
    lines = wait_for(lambda: (t := agent.jsonl.read_text().splitlines()) and len(t) == 3 and t)
    assert [json.loads(x)["hook"] for x in lines] == ["os.system", "open", "socket.getaddrinfo"]

    # and the CLI prints them, one JSON object per line, with filters
    res = agent.cli("events", "--store", str(agent.store), "--json", "--kind", "file")
    assert res.returncode == 0, res.stderr
    (only,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert only["hook"] == "open" and set(only) >= DESIGN_FIELDS
    res = agent.cli(
        "events", "--store", str(agent.store), "--json", "--pid", str(me), "--limit", "2"
    )
    assert [json.loads(x)["kind"] for x in res.stdout.splitlines()] == ["file", "dns"]
    table = agent.cli("events", "--store", str(agent.store))
    assert "os.system" in table.stdout and "socket.getaddrinfo" in table.stdout


def test_events_cli_without_store_fails_clearly(agent: AgentProc) -> None:
    res = agent.cli("events", "--store", str(agent.dir / "nope.db"))
    assert res.returncode == 1
    assert "no event store at" in res.stderr and "Traceback" not in res.stderr


def test_sigterm_flushes_everything_received(agent_factory) -> None:
    # a long flush delay, so the events are still in the agent's batch when it is stopped
    a = agent_factory(env={"RAMPART_STORE_FLUSH_MS": "60000"}).start()
    with a.probe() as p:
        p.hello()
        for i in range(500):
            p.trace("open", "file", [f"/tmp/f{i}"])
        wait_for(lambda: a.control("stats")["received"] == 500, what="500 received")
        assert a.rows() == []  # nothing written yet: still batched
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(20) == 0
    assert len(a.rows()) == 500
    assert not a.socket.exists(), "the agent removes its socket on exit"


def test_heartbeat_counters_and_disconnect_show_in_ps(agent: AgentProc) -> None:
    with agent.probe(runtime="nodejs", hooks=["child_process.spawn", "fs.open"]) as p:
        p.hello()
        p.heartbeat(sent=10, dropped=2, dropped_by={"queue_full": 2}, policies={"block": "abc"})
        p.trace("fs.open", "file", ["/x"])
        row = wait_for(
            lambda: [r for r in agent.control("ps") if r["pid"] == p.pid and r["events"] == 1]
        )[0]
        assert row["state"] == "connected" and row["runtime"] == "nodejs"
        assert row["drops"] == 2 and row["dropped_by"] == {"queue_full": 2}
        assert row["hooks"] == 2 and row["policy"] == "abc"
        res = agent.cli("ps", "--socket", str(agent.socket), "--json")
        assert res.returncode == 0, res.stderr
        mine = [json.loads(x) for x in res.stdout.splitlines() if json.loads(x)["pid"] == p.pid]
        assert mine and mine[0]["state"] == "connected"
    wait_for(
        lambda: next(r for r in agent.control("ps") if r["pid"] == p.pid)["state"] == "disconnected"
    )


def test_a_newer_connection_from_the_same_process_supersedes_the_old(agent: AgentProc) -> None:
    old = agent.probe()
    old.hello()
    new = agent.probe()
    new.hello()
    err = None
    try:
        while True:
            old.recv(5)
    except Exception as e:  # AgentRefused, then EOF
        err = e
    assert "superseded" in str(err)
    new.trace("open", "file", ["/a"])
    assert agent.wait_rows(1)[0]["args"] == ["/a"]
    old.close()
    new.close()


def test_ps_lists_unattached_runtimes_but_not_the_agent(agent: AgentProc, spawn) -> None:
    victim = spawn(["node", "-e", "setInterval(() => {}, 1000)"])
    wait_for(lambda: os.path.basename(os.path.realpath(f"/proc/{victim.pid}/exe")) == "node")
    res = agent.cli("ps", "--socket", str(agent.socket), "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["pid"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows[victim.pid]["runtime"] == "nodejs"
    assert rows[victim.pid]["state"] == "not attached"
    assert agent.proc.pid not in rows
    table = agent.cli("ps", "--socket", str(agent.socket))
    assert str(victim.pid) in table.stdout and "not attached" in table.stdout


def test_stdout_sink_prints_one_event_per_line(agent_factory) -> None:
    a = agent_factory(args=["--stdout"]).start()
    with a.probe(runtime="php") as p:
        p.hello()
        p.trace("system", "process", ["id"])
        p.trace("file_get_contents", "file", ["/etc/hosts"])
        a.wait_rows(2)
    lines = wait_for(lambda: (t := a.stdout.read_text().splitlines()) and len(t) == 2 and t)
    events = [json.loads(x) for x in lines]
    assert [e["hook"] for e in events] == ["system", "file_get_contents"]
    assert all(set(e) >= DESIGN_FIELDS for e in events)
