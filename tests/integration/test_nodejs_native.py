"""The Node.js native layer (Frida, rasp/nodejs/native_agent.*) with the JS layer, end to end:
real node victims attached with the real `rasp-attach` (both layers by default), driven over
loopback; assertions on the events in the agent's store."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from injector import attach as attach_mod
from rasp.nodejs import native_agent
from tests.agentproc import AgentProc, wait_for
from tests.integration.test_nodejs_probe import (
    attach,
    events,
    get,
    no_inspector,
    rasp_attach,
    start_app,
)

NATIVE_HOOKS = {"uv_spawn", "uv_fs_open", "uv_tcp_connect", "uv_getaddrinfo"}


def bypasses(agent: AgentProc, pid: int) -> list[dict]:
    return agent.rows("json_extract(event, '$.bypass') = 1 AND pid = ?", (pid,))


def sentinel(agent: AgentProc, port: int, pid: int, path: Path, mark: str) -> None:
    """A bypass we cause on purpose, then wait for it: the pipe and the JS layer keep order, so
    every native record of a call made before it has been matched or reported by then."""
    path.write_text(mark)
    assert get(port, "capturedread", path=str(path)) == (200, mark)
    events(agent, "uv_fs_open", str(path))


def test_calls_below_the_js_layer_are_reported_as_bypass(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    assert no_inspector(p.pid, port)
    assert native_agent.running(p.pid)
    row = next(r for r in agent.control("ps") if r["pid"] == p.pid)
    assert row["state"] == "connected"

    # a reference to fs.readFileSync captured at module load: the JS hook never sees it
    secret = tmp_path / "captured-secret.txt"
    secret.write_text("s3cret")
    assert get(port, "capturedread", path=str(secret)) == (200, "s3cret")
    (ev,) = events(agent, "uv_fs_open", str(secret))
    assert ev["bypass"] is True and ev["kind"] == "file" and ev["pid"] == p.pid
    assert ev["args"] == [str(secret), "0"] and ev["stack"] == [] and ev["request"] is None
    assert not agent.rows("json_extract(event, '$.hook') = 'fs.readFileSync' AND event LIKE ?",
                          (f"%{secret}%",))  # fmt: skip

    # process_wrap: libuv's process handle, below child_process altogether
    marker = tmp_path / "raw-spawn-ran"
    assert get(port, "rawspawn", cmd=f"echo raw > {marker}") == (200, "exit 0")
    assert marker.read_text() == "raw\n"
    (ev,) = events(agent, "uv_spawn", "raw-spawn-ran")
    assert ev["bypass"] is True and ev["kind"] == "process"
    assert ev["args"] == ["/bin/sh", "-c", f"echo raw > {marker}"]
    assert not agent.rows("json_extract(event, '$.hook') LIKE 'child_process.%'")


def test_js_originated_calls_yield_no_bypass_duplicates(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    target = tmp_path / "written.txt"
    # longer than the native layer's 1 KiB argument cap: its record holds the first 1 KiB only
    deep = tmp_path.joinpath(*["d" * 200] * 6)
    deep.mkdir(parents=True)
    (long_path := deep / "long-path.txt").write_text("long")
    assert len(str(long_path).encode()) > 1024
    assert get(port, "readsync", path=str(long_path)) == (200, "long")
    assert get(port, "exec", cmd="echo exec-marker") == (200, "exec-marker\n")
    assert get(port, "execsync", cmd="echo sync-marker") == (200, "sync-marker\n")
    assert get(port, "spawnsync", cmd="echo spawnsync-marker") == (200, "spawnsync-marker\n")
    assert get(port, "read", path="/etc/hostname")[0] == 200
    assert get(port, "readsync", path="/etc/hostname")[0] == 200
    assert get(port, "readpromise", path="/etc/hostname")[0] == 200
    assert get(port, "write", path=str(target), data="x") == (200, "written")
    assert get(port, "connect", port=str(port)) == (200, "connected")
    assert get(port, "fetch", url=f"http://127.0.0.1:{port}/ping") == (200, "pong")
    assert get(port, "dns", host="localhost")[0] == 200
    assert get(port, "readloop", path="/etc/hostname", n="2000") == (200, "done")
    sentinel(agent, port, p.pid, tmp_path / "sentinel.txt", "end")

    # every one of those was a JS event, and none came back as a bypass
    for hook, needle in [
        ("child_process.spawn", "exec-marker"),
        ("child_process.spawnSync", "sync-marker"),
        ("child_process.spawnSync", "spawnsync-marker"),
        ("fs.readFile", "/etc/hostname"),
        ("fs.readFileSync", "/etc/hostname"),
        ("fs.readFileSync", "long-path.txt"),
        ("fs.promises.readFile", "/etc/hostname"),
        ("fs.writeFileSync", str(target)),
        ("net.Socket.connect", f"127.0.0.1:{port}"),
        ("fetch", "/ping"),
        ("dns.lookup", "localhost"),
    ]:
        events(agent, hook, needle)
    extra = [e for e in bypasses(agent, p.pid) if "sentinel.txt" not in e["args"][0]]
    assert extra == [], extra


def test_the_app_serves_300_requests_with_both_layers(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    f = tmp_path / "served.txt"
    f.write_text("x")
    for i in range(300):
        sink = ("ping", "dns", "readsync", "capturedread")[i % 4]
        assert get(port, sink, host="localhost", path=str(f))[0] == 200
    agent.wait_rows(75, "json_extract(event, '$.hook') = 'dns.lookup' AND pid = ?", (p.pid,))
    agent.wait_rows(75, "json_extract(event, '$.hook') = 'uv_fs_open' AND pid = ?", (p.pid,))
    assert p.poll() is None
    # exactly the captured reads are bypasses: one per request, no duplicates of the JS reads
    rows = bypasses(agent, p.pid)
    assert {(e["hook"], e["args"][0]) for e in rows} == {("uv_fs_open", str(f))}, rows[:5]
    assert len(rows) == 75


def test_two_threads_recording_at_once_lose_no_record(spawn, agent, tmp_path) -> None:
    # the C hooks of both threads append to one ring (a spinlock orders them): a record torn
    # or lost would make the worker's count short or turn a main-thread read into a bypass
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    worker_side, main_side = tmp_path / "worker-side.txt", tmp_path / "main-side.txt"
    worker_side.write_text("w")
    main_side.write_text("m")
    n = 1500
    assert get(port, "workerreads", path=str(main_side), wpath=str(worker_side), n=str(n)) == (
        200,
        "done",
    )
    sentinel(agent, port, p.pid, tmp_path / "threads.txt", "threads")
    rows = bypasses(agent, p.pid)
    assert len([e for e in rows if e["args"][0] == str(worker_side)]) == n
    assert not [e for e in rows if e["args"][0] == str(main_side)]
    assert native_agent.ask(p.pid)["dropped"] == 0  # type: ignore[index]
    assert p.poll() is None


def test_attach_twice_keeps_one_native_layer(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    first = native_agent.ask(p.pid)
    assert first is not None and set(first["hooks"]) == NATIVE_HOOKS
    res = rasp_attach(agent, p.pid)
    assert res.returncode == 0 and res.stdout.startswith("already attached"), res
    assert native_agent.ask(p.pid) == first  # the same pipe, no second copy
    sentinel(agent, port, p.pid, tmp_path / "once.txt", "once")
    assert len(agent.rows("event LIKE ?", ("%once.txt%",))) == 1  # not reported twice


def test_detach_unhooks_the_native_layer_too(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(agent, p.pid)
    assert native_agent.running(p.pid)
    res = rasp_attach(agent, p.pid, "--detach")
    assert res.returncode == 0, res
    # the JS layer closed its end of the pipe: the native layer sees no reader and unhooks
    wait_for(lambda: not native_agent.running(p.pid), 10, "the native layer to stop")
    f = tmp_path / "after-detach.txt"
    f.write_text("after")
    assert get(port, "capturedread", path=str(f)) == (200, "after")
    assert get(port, "rawspawn", cmd="true") == (200, "exit 0")
    assert p.poll() is None
    assert not agent.rows("event LIKE ?", ("%after-detach%",))
    # and attaching again brings both layers back
    attach(agent, p.pid)
    assert native_agent.running(p.pid)
    sentinel(agent, port, p.pid, tmp_path / "again.txt", "again")


def test_layers_js_attaches_the_js_layer_alone(spawn, agent, tmp_path) -> None:
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    res = rasp_attach(agent, p.pid, "--layers", "js")
    assert res.returncode == 0 and res.stdout.startswith("attached"), res
    assert not native_agent.running(p.pid)
    f = tmp_path / "js-only.txt"
    f.write_text("js")
    assert get(port, "capturedread", path=str(f)) == (200, "js")
    assert get(port, "readsync", path=str(f)) == (200, "js")
    events(agent, "fs.readFileSync", str(f))
    assert not bypasses(agent, p.pid)


def test_a_failing_native_layer_does_not_fail_the_js_layer(
    spawn, agent, tmp_path, monkeypatch, capsys
) -> None:
    # a native script Frida refuses to load: a real injection failure
    broken = tmp_path / "broken_agent.js"
    broken.write_text("this is not javascript (\n")
    monkeypatch.setattr(native_agent, "AGENT_JS", broken)
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    out = attach_mod.attach(p.pid, "auto", agent.socket, 20)
    assert out.probe["state"] == "connected" and not out.already
    assert "native layer not attached" in capsys.readouterr().err
    assert not native_agent.running(p.pid)
    assert get(port, "exec", cmd="echo js-still-works") == (200, "js-still-works\n")
    events(agent, "child_process.spawn", "js-still-works")


@pytest.mark.slow
def test_agent_away_then_back_with_both_layers(spawn, agent_factory, tmp_path) -> None:
    a = agent_factory().start()
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    attach(a, p.pid)
    assert a.stop() == 0
    # the app keeps serving, native records included, while nobody listens
    for i in range(20):
        assert get(port, "rawspawn", cmd=f"echo away-{i}")[0] == 200
    a.start()
    wait_for(
        lambda: any(r["pid"] == p.pid and r["state"] == "connected" for r in a.control("ps")),
        40,
        "the probe to reconnect",
    )
    assert get(port, "rawspawn", cmd="echo back-again") == (200, "exit 0")
    (ev,) = events(a, "uv_spawn", "back-again")
    assert ev["bypass"] is True
    assert not a.rows("event LIKE ?", ("%away-%",))  # dropped (agent away), not replayed
    assert p.poll() is None


@pytest.mark.slow
def test_a_native_layer_nobody_takes_unhooks_itself(spawn, tmp_path) -> None:
    # rasp-attach injects the native layer first; should the JS layer then fail to start,
    # nobody reads the channel: the native layer must not stay hooked for nothing
    p, port = start_app(spawn, "http_app.js", "--inspect-port=0")
    loaded = native_agent.load(p.pid, 20)
    assert set(loaded.hooks) == NATIVE_HOOKS and native_agent.running(p.pid)
    wait_for(lambda: not native_agent.running(p.pid), 60, "the untaken native layer to stop")
    fd = Path(f"/proc/{p.pid}/fd/{loaded.fd}")
    assert not fd.exists() or os.readlink(fd) != f"socket:[{loaded.channel_ino}]"
    f = tmp_path / "after.txt"
    f.write_text("still serving")
    assert get(port, "capturedread", path=str(f)) == (200, "still serving")
    assert p.poll() is None


def test_native_glue_reports_a_dead_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(native_agent.ProbeLoadError) as e:
        native_agent.load(proc.pid, 5)
    assert e.value.gone and str(proc.pid) in str(e.value)


def test_a_squatted_native_name_is_not_trusted(spawn: Any) -> None:
    """Abstract socket names have no owner: a process that binds the target's
    `rampart-node-native-<pid>` first must not be able to hand the attacher an fd of its
    choosing (the JS layer would read from it). Only the target itself may answer."""
    import json
    import socket
    import threading

    target = spawn(["sleep", "60"])
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind("\0" + native_agent.poke_name(target.pid))
    squatter.listen(1)

    def answer() -> None:
        with contextlib.suppress(OSError):
            c, _ = squatter.accept()
            with c:
                c.sendall(json.dumps({"fd": 0, "hooks": ["uv_spawn"]}).encode() + b"\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        assert native_agent.running(target.pid)  # the name is there...
        assert native_agent.ask(target.pid, timeout=2) is None  # ...but it is not the target's
    finally:
        squatter.close()
        t.join(5)
