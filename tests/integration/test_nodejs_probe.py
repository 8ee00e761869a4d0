"""The Node.js probe end to end: real node victims (plain http and Express), attached live
with `rasp-attach`, driven over loopback; assertions on the events in the agent's store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from injector import attach_nodejs
from injector.attach import EXIT_UNSUPPORTED, AttachError
from injector.attach_nodejs import ATTACHER, DEFAULT_PORT, own_listeners, tcp_listeners
from injector.detect import detect
from rasp.nodejs import native_agent
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for

APPS = Path(__file__).resolve().parents[1] / "apps" / "nodejs"
REGISTER = Path(__file__).resolve().parents[2] / "rasp" / "nodejs" / "register.js"


def start_app(spawn, app: str, *node_args: str, env: dict[str, str] | None = None, wrap=()):
    """Start a victim; returns (Popen, port) once it listens."""
    p = spawn(
        [*wrap, "node", *node_args, str(APPS / app)],
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    assert line.startswith("ready "), f"victim did not start: {line!r}"
    return p, int(line.split()[1])


def get(app_port: int, sink: str, /, **params: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{app_port}/{sink}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def rasp_attach(agent: AgentProc, pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RASP_ATTACH, "--pid", str(pid), "--socket", str(agent.socket), "--timeout", "20", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def attach(agent: AgentProc, pid: int) -> None:
    res = rasp_attach(agent, pid)
    assert res.returncode == 0, res.stderr + agent.log_text()[-3000:]
    assert res.stdout.startswith(f"attached: pid {pid} nodejs"), res.stdout


def events(agent: AgentProc, hook: str, needle: str, n: int = 1) -> list[dict]:
    rows = agent.wait_rows(
        n, "json_extract(event, '$.hook') = ? AND event LIKE ?", (hook, f"%{needle}%")
    )
    return rows


def no_inspector(pid: int, app_port: int) -> bool:
    """The target listens on its app port only: no inspector left open."""
    return {s.port for s in own_listeners(pid)} == {app_port}


@pytest.mark.parametrize("app", ["http_app.js", "express_app.js"])
def test_live_attach_sees_every_sink_with_request_context(spawn, agent, app, tmp_path) -> None:
    # --inspect-port=0 for one app (node picks a free port: we must find it), default for the other
    node_args = ("--inspect-port=0",) if app == "http_app.js" else ()
    p, port = start_app(spawn, app, *node_args)
    attach(agent, p.pid)
    assert no_inspector(p.pid, port), own_listeners(p.pid)

    other_port = port  # loopback targets for fetch and connect: the app itself
    target = tmp_path / "written.txt"
    assert get(port, "exec", cmd="echo exec-marker") == (200, "exec-marker\n")
    assert get(port, "execsync", cmd="echo captured-marker") == (200, "captured-marker\n")
    assert get(port, "read", path="/etc/hostname")[0] == 200
    assert get(port, "write", path=str(target), data="x") == (200, "written")
    assert get(port, "fetch", url=f"http://127.0.0.1:{other_port}/ping?fetch-marker") == (
        200, "pong"
    )  # fmt: skip
    assert get(port, "connect", port=str(other_port)) == (200, "connected")
    assert get(port, "dns", host="localhost")[0] == 200
    assert get(port, "vm", code="'vm-' + 'marker'") == (200, "vm-marker")
    libz = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    assert get(port, "addon", path=libz)[1].startswith("not an addon")

    (ev,) = events(agent, "child_process.spawn", "exec-marker")
    assert ev["kind"] == "process" and ev["pid"] == p.pid and ev["runtime"] == "nodejs"
    assert ev["args"] == ["/bin/sh", "-c", "echo exec-marker"]
    req = ev["request"]
    assert req["method"] == "GET" and req["url"].startswith(f"http://127.0.0.1:{port}/exec?")
    assert req["params"] == {"cmd": ["echo exec-marker"]}
    assert req["remote_addr"].startswith("127.0.0.1:")
    assert req["headers"]["user-agent"].startswith("Python-urllib")
    assert any("sinks.js" in f for f in ev["stack"]), ev["stack"]
    assert ev["process"]["exe"].endswith("node") and ev["blocked"] is False

    # the reference captured at module load is still seen, through the spawn_sync binding
    (ev,) = events(agent, "child_process.spawnSync", "captured-marker")
    assert ev["args"] == ["/bin/sh", "-c", "echo captured-marker"]
    assert ev["request"]["params"] == {"cmd": ["echo captured-marker"]}

    (ev,) = events(agent, "fs.readFile", "/etc/hostname")
    assert ev["kind"] == "file" and ev["request"]["params"]["path"] == ["/etc/hostname"]
    (ev,) = events(agent, "fs.writeFileSync", str(target))
    assert ev["args"] == [str(target)]
    (ev,) = events(agent, "fetch", "fetch-marker")
    assert ev["kind"] == "network" and ev["args"][1] == "GET"
    (ev,) = events(agent, "net.Socket.connect", "/connect?port=")
    assert ev["kind"] == "network" and ev["args"] == [f"127.0.0.1:{other_port}"]
    (ev,) = events(agent, "dns.lookup", '"localhost"')
    assert ev["kind"] == "dns" and ev["args"] == ["localhost"]
    (ev,) = events(agent, "vm.runInNewContext", "vm-")
    assert ev["kind"] == "code" and ev["args"] == ["'vm-' + 'marker'"]
    (ev,) = events(agent, "process.dlopen", "libz.so")
    assert ev["kind"] == "library" and ev["args"] == [libz]

    # the runtime loading its own code is not a file event: no read of the app's .js files
    assert not agent.rows("event LIKE ?", ('%sinks.js"]%',))


def test_es_module_named_imports_made_before_the_attach_are_seen(spawn, agent) -> None:
    # `import {readFile} from 'node:fs/promises'` is a live binding that follows the CommonJS
    # exports once the probe calls module.syncBuiltinESMExports()
    p, port = start_app(spawn, "esm_app.mjs", "--inspect-port=0")
    attach(agent, p.pid)
    assert get(port, "read", path="/etc/hostname")[0] == 200
    (ev,) = events(agent, "fs.promises.readFile", "/etc/hostname")
    assert ev["request"]["params"] == {"path": ["/etc/hostname"]}


def test_inspector_is_closed_after_a_failed_attach_too(spawn, agent, monkeypatch) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    monkeypatch.setattr(attach_nodejs, "PROBE", Path("/nonexistent/rampart/probe.js"))
    with pytest.raises(AttachError) as err:
        ATTACHER.attach(detect(p.pid), agent.socket, 10)
    assert "the probe failed in the target: Error: Cannot find module" in err.value.reason
    assert no_inspector(p.pid, port)
    assert get(port, "ping") == (200, "pong")


def test_attach_twice_is_a_no_op(spawn, agent) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    res = rasp_attach(agent, p.pid)
    assert res.returncode == 0 and res.stdout.startswith("already attached"), res
    assert no_inspector(p.pid, port)
    rows = agent.control("ps")
    assert [r["pid"] for r in rows if r["pid"] == p.pid] == [p.pid]


def test_block_mode_takes_the_apps_error_path(spawn, agent_factory) -> None:
    a = agent_factory()
    a.policy.write_text(
        "policies:\n"
        "  - id: no-marked-shell\n"
        "    runtime: nodejs\n"
        "    kind: process\n"
        "    match: {args: 'blocked-marker'}\n"
        "    action: block\n"
        "  - id: no-secret-read\n"
        "    kind: file\n"
        "    match: {args: '^/etc/shadow$'}\n"
        "    action: block\n"
    )
    a.start()
    p, port = start_app(spawn, "express_app.js")
    attach(a, p.pid)
    code, body = get(port, "exec", cmd="echo blocked-marker")
    assert code == 500
    assert body == "error: Rampart blocked child_process.spawn by policy no-marked-shell"
    code, body = get(port, "execsync", cmd="echo blocked-marker")
    assert (code, body) == (
        500, "error: Rampart blocked child_process.spawnSync by policy no-marked-shell"
    )  # fmt: skip
    code, body = get(port, "read", path="/etc/shadow")
    assert (code, body) == (500, "error: Rampart blocked fs.readFile by policy no-secret-read")
    code, body = get(port, "readpromise", path="/etc/shadow")
    assert code == 500 and "fs.promises.readFile by policy no-secret-read" in body
    # other requests go on
    assert get(port, "exec", cmd="echo fine") == (200, "fine\n")
    assert get(port, "ping") == (200, "pong")
    (ev,) = events(a, "child_process.spawn", "blocked-marker")
    assert ev["blocked"] is True and ev["policy_id"] == "no-marked-shell"
    assert ev["request"]["params"] == {"cmd": ["echo blocked-marker"]}
    (ev,) = events(a, "fs.readFile", "/etc/shadow")
    assert ev["blocked"] is True and ev["policy_id"] == "no-secret-read"


def test_the_app_serves_200_requests_after_attach(spawn, agent) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    for i in range(200):
        assert get(port, "dns" if i % 2 else "ping", host="localhost")[0] == 200
    agent.wait_rows(100, "json_extract(event, '$.hook') = 'dns.lookup' AND pid = ?", (p.pid,))
    assert p.poll() is None


def test_disable_sigusr1_is_refused_without_a_signal(spawn, agent, tmp_path) -> None:
    # --disable-sigusr1 exists from Node 22.14 / 23.7; our Node 20 refuses the flag, so the
    # target is a stand-in that detection sees as node (a copy of a static python named
    # `node`) with the flag in NODE_OPTIONS. SIGUSR1's default action would kill it: it
    # surviving proves no signal was sent.
    fake = tmp_path / "node"
    shutil.copy("/usr/bin/python3.11", fake)
    p = spawn(
        [str(fake), "-c", "import time; print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
        env={**os.environ, "NODE_OPTIONS": "--max-old-space-size=64 --disable-sigusr1"},
    )
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    res = rasp_attach(agent, p.pid)
    assert res.returncode == EXIT_UNSUPPORTED, res
    assert "--disable-sigusr1 in NODE_OPTIONS" in res.stderr and "register.js" in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert p.poll() is None
    assert not native_agent.running(p.pid)  # refused before the native layer went in


def test_a_node_without_a_sigusr1_handler_is_not_signalled(spawn, agent, tmp_path) -> None:
    # a process detected as node that has not installed its SIGUSR1 handler (a node still
    # starting up looks like this): the default action of the signal would kill it
    fake = tmp_path / "node"
    shutil.copy("/usr/bin/python3.11", fake)
    p = spawn(
        [str(fake), "-c", "import time; print('ready', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    res = rasp_attach(agent, p.pid)
    assert res.returncode == 1, res
    assert "does not handle SIGUSR1 (yet?)" in res.stderr
    assert p.poll() is None
    assert not native_agent.running(p.pid)


def test_inspector_port_held_by_another_process_is_reported(spawn, agent) -> None:
    # run the victim in a network namespace of its own, where we hold 9229 first: this also
    # drives the attacher's setns path (its inspector listens on *that* loopback)
    p = spawn(
        ["unshare", "-n", "sh", "-c",
         f"ip link set lo up && exec node {APPS / 'http_app.js'} 8080"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert p.stdout is not None and p.stdout.readline().startswith(b"ready")
    holder = spawn(
        ["nsenter", "-t", str(p.pid), "-n", "python3", "-c",
         "import socket,sys,time; s=socket.socket(); "
         f"s.bind(('127.0.0.1', {DEFAULT_PORT})); s.listen();"
         "print('ok', flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"ok"
    res = rasp_attach(agent, p.pid)
    assert res.returncode == 1
    assert f"port {DEFAULT_PORT} is already in use by pid {holder.pid} (python3)" in res.stderr
    # the port freed, the same process attaches from our namespace into its own
    holder.kill()
    holder.wait()
    attach(agent, p.pid)
    assert {s.port for s in own_listeners(p.pid)} == {8080}
    assert all(s.port != DEFAULT_PORT for s in tcp_listeners(p.pid))


def test_sdk_start_with_node_r(spawn, agent) -> None:
    p, port = start_app(
        spawn, "http_app.js", "-r", str(REGISTER), env={"RAMPART_SOCKET": str(agent.socket)}
    )
    wait_for(lambda: any(r["pid"] == p.pid for r in agent.control("ps")), 10, "sdk hello")
    (row,) = [r for r in agent.control("ps") if r["pid"] == p.pid]
    assert row["mode"] == "sdk" and row["runtime"] == "nodejs"
    assert get(port, "execsync", cmd="echo sdk-marker")[0] == 200
    (ev,) = events(agent, "child_process.spawnSync", "sdk-marker")
    assert ev["request"]["params"] == {"cmd": ["echo sdk-marker"]}


@pytest.mark.slow
def test_agent_away_drops_and_counts_then_reconnects(spawn, agent_factory) -> None:
    a = agent_factory().start()
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(a, p.pid)
    assert a.stop() == 0
    # the app keeps serving while the agent is away; its events are dropped and counted
    for _ in range(5):
        assert get(port, "dns", host="localhost")[0] == 200
    a.start()  # same socket, same store: the attach record survives the restart
    wait_for(
        lambda: any(r["pid"] == p.pid and r["state"] == "connected" for r in a.control("ps")),
        40,
        "the probe to reconnect",
    )
    # the next heartbeat (every 10 s) carries the drop counts
    row = wait_for(
        lambda: next((r for r in a.control("ps") if r["pid"] == p.pid and r["drops"] >= 5), None),
        25,
        "a heartbeat with the drops",
    )
    assert row["dropped_by"].get("agent_away", 0) >= 5
    assert get(port, "exec", cmd="echo after-reconnect")[0] == 200
    events(a, "child_process.spawn", "after-reconnect")


def test_detach_unhooks_and_closes_the_inspector_again(spawn, agent) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    res = rasp_attach(agent, p.pid, "--detach")
    assert res.returncode == 0 and res.stdout.startswith(f"detached: pid {p.pid} nodejs"), res
    assert no_inspector(p.pid, port)
    wait_for(
        lambda: any(r["pid"] == p.pid and r["state"] == "exited" for r in agent.control("ps")),
        10,
        "the probe's exit",
    )
    assert get(port, "exec", cmd="echo after-detach") == (200, "after-detach\n")
    assert get(port, "ping") == (200, "pong")
    assert not agent.rows("event LIKE ?", ("%after-detach%",))


def test_events_in_the_json_cli(spawn, agent) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    get(port, "exec", cmd="echo cli-marker")
    events(agent, "child_process.spawn", "cli-marker")
    out = agent.cli("events", "--store", str(agent.store), "--json", "--runtime", "nodejs")
    assert any("cli-marker" in json.dumps(json.loads(line)) for line in out.stdout.splitlines())


def test_auto_attach_attaches_a_new_node_process(spawn, agent_factory) -> None:
    # the agent's auto-attach engine runs the real rasp-attach for nodejs
    a = agent_factory()
    a.env.update(
        {
            "RAMPART_AUTO_ATTACH": "nodejs",
            "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": f"http_app.js 0 {a.socket}"}]),
            "RAMPART_ATTACH_SETTLE_S": '{"nodejs": 0.2}',
            "RAMPART_ATTACH_RESCAN_S": "1",
        }
    )
    a.start()
    p = spawn(
        ["node", "--inspect-port=0", str(APPS / "http_app.js"), "0", str(a.socket)],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    port = int(p.stdout.readline().split()[1])
    wait_for(
        lambda: any(
            r["pid"] == p.pid and r.get("attach_state") == "attached" and r["state"] == "connected"
            for r in a.control("ps")
        ),
        30,
        "auto-attach",
    )
    assert no_inspector(p.pid, port)
    assert get(port, "exec", cmd="echo auto-marker") == (200, "auto-marker\n")
    events(a, "child_process.spawn", "auto-marker")
