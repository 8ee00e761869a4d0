"""Attaching to apps in their own mount + pid + net namespaces, chrooted into a root where the
repo and the agent's directory do not exist (tests/integration/nscontainer.py): the probe
files and the agent socket are placed inside (injector/container.py), the app reports under
its host pid, and nothing is left in its /tmp once it exits."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from injector import container
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.integration.nscontainer import Container

REPO = Path(__file__).resolve().parents[2]

PY_APP = textwrap.dedent(
    """
    import os, sys, time
    print("ready", os.getpid(), flush=True)
    while True:
        with open("/etc/hostname") as f:  # a file sink, every 50 ms
            f.read()
        time.sleep(0.05)
    """
)

# the app's own sink (the probe's lazy imports write their .pyc into the placed copy too)
HOSTNAME = "pid = ? AND kind = 'file' AND event LIKE '%/etc/hostname%'"


def _py(spawn, tmp_path: Path, marker: str) -> Container:
    # /usr/bin/python3: the one interpreter the container's /usr holds
    c = Container(
        spawn, tmp_path, ["/usr/bin/python3", "-c", PY_APP, marker], stdout=subprocess.PIPE
    )
    assert c.proc.stdout is not None
    assert c.proc.stdout.readline().split() == [b"ready", b"1"]  # pid 1 of its own namespace
    return c


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or (
        Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    )


@pytest.mark.slow
def test_rasp_attach_pid_into_a_container(spawn, agent: AgentProc, tmp_path) -> None:
    c = _py(spawn, tmp_path, "rampart-ct")
    assert container.is_foreign(c.pid) and container.nspid(c.pid) == 1
    assert not Path(f"/proc/{c.pid}/root{REPO}").exists()  # our paths do not resolve there
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    row = next(r for r in agent.control("ps") if r["pid"] == c.pid)
    assert row["state"] == "connected" and row["mode"] == "attached" and row["hooks"] > 0
    # under its host pid (the hello said 1, its namespace pid: the agent checks the NStgid)
    rows = agent.wait_rows(1, HOSTNAME, (c.pid,), timeout=30)
    assert rows[0]["pid"] == c.pid
    # the C accelerator travelled with the package and the container's python3 runs it
    if any((REPO / "rasp" / "python" / "rampart_probe").glob("_accel*.so")):
        assert "/rampart_probe/_accel" in Path(f"/proc/{c.pid}/maps").read_text()
    # in its /tmp: the private dir (probe package + the bound socket), the library unlinked
    (placed,) = c.placed()
    inside = c.tmp / placed
    assert sorted(p.name for p in inside.iterdir()) == ["agent.sock", "rampart_probe"]
    st = inside.stat()
    assert st.st_mode & 0o777 == 0o700
    assert not any(p.name.startswith(placed) for p in Path("/tmp").iterdir())  # the mirror
    keepers = container.keepers(c.pid)
    assert len(keepers) == 1
    assert b"RAMPART_DISABLE=1" in Path(f"/proc/{keepers[0]}/environ").read_bytes().split(b"\0")
    # the app exits: the keeper unmounts the socket, removes the dir, and exits
    c.stop()
    wait_for(lambda: _gone(c.pid), 10, "app gone")
    wait_for(lambda: c.placed() == [], 10, "placed files removed")
    wait_for(lambda: all(_gone(k) for k in keepers), 10, "keeper exited")
    assert agent.socket.is_socket()  # the agent's own socket untouched


@pytest.mark.slow
def test_auto_attach_into_a_container(spawn, agent_factory, tmp_path) -> None:
    a = agent_factory()
    marker = f"rampart-ct-{a.dir.name}"
    a.env.update(
        {
            "RAMPART_AUTO_ATTACH": "python",
            "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": marker}]),
            "RAMPART_ATTACH_SETTLE_S": '{"python": 0.2}',
            "RAMPART_ATTACH_RESCAN_S": "1",
        }
    )
    a.start()
    c = _py(spawn, tmp_path, marker)
    row = wait_for(
        lambda: (
            (r := next((r for r in a.control("ps") if r["pid"] == c.pid), {})).get("attach_state")
            == "attached"
            and r.get("state") == "connected"
            and r
        ),
        90,
        "attached",
    )
    assert row["runtime"] == "python" and row["mode"] == "attached"
    a.wait_rows(1, HOSTNAME, (c.pid,), timeout=30)
    assert c.proc.poll() is None and len(c.placed()) == 1
    c.stop()
    wait_for(lambda: c.placed() == [], 10, "placed files removed")
    assert os.path.exists(a.socket)


PHP_APP = (
    'echo "ready ", getmypid(), "\\n";'
    'while (true) { file_get_contents("/etc/hostname"); usleep(50000); }'
)


@pytest.mark.slow
def test_rasp_attach_php_into_a_container(spawn, agent: AgentProc, tmp_path) -> None:
    c = Container(
        spawn, tmp_path, ["/usr/bin/php", "-r", PHP_APP, "rampart-ct"], stdout=subprocess.PIPE
    )
    assert c.proc.stdout is not None
    assert c.proc.stdout.readline().split() == [b"ready", b"1"]
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    row = next(r for r in agent.control("ps") if r["pid"] == c.pid)
    assert row["state"] == "connected" and row["runtime"] == "php" and row["hooks"] > 0
    agent.wait_rows(1, HOSTNAME, (c.pid,), timeout=30)
    (placed,) = c.placed()
    assert sorted(p.name for p in (c.tmp / placed).iterdir()) == ["agent.sock"]
    # a second attach is a no-op: nothing injected, nothing placed again
    again = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(c.placed()) == 1  # nothing placed twice
    c.stop()
    wait_for(lambda: c.placed() == [], 10, "placed files removed")


NODE_APP = (
    "const fs = require('fs');"
    "console.log('ready', process.pid);"
    "setInterval(() => fs.readFileSync('/etc/hostname'), 50);"
)


@pytest.mark.slow
def test_rasp_attach_and_detach_node_in_a_container(spawn, agent: AgentProc, tmp_path) -> None:
    c = Container(
        spawn, tmp_path, ["/usr/bin/node", "-e", NODE_APP, "rampart-ct"], stdout=subprocess.PIPE
    )
    assert c.proc.stdout is not None
    assert c.proc.stdout.readline().split() == [b"ready", b"1"]
    base = [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--timeout", "20"]
    res = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    row = next(r for r in agent.control("ps") if r["pid"] == c.pid)
    assert row["state"] == "connected" and row["runtime"] == "nodejs"
    agent.wait_rows(1, HOSTNAME, (c.pid,), timeout=30)
    (placed,) = c.placed()
    assert {p.name for p in (c.tmp / placed).iterdir()} == {"agent.sock", "nodejs"}
    assert not (c.tmp / placed / "nodejs" / "test").exists()
    # detach: the probe stops, and what was placed for it goes while the app keeps running
    res = subprocess.run([*base, "--detach"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: c.placed() == [], 10, "placed files removed on detach")
    wait_for(lambda: container.keepers(c.pid) == [], 10, "keeper exited")
    assert c.proc.poll() is None


@pytest.mark.slow
def test_probe_in_a_container_reconnects_to_a_restarted_agent(spawn, agent, tmp_path) -> None:
    c = _py(spawn, tmp_path, "rampart-ct")
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (placed,) = c.placed()
    bound = Path(f"/proc/{c.pid}/root/tmp/{placed}/agent.sock")  # in the app's mount ns
    old = bound.stat().st_ino
    assert bound.is_socket() and old == agent.socket.stat().st_ino
    agent.stop()
    agent.start()  # a new socket (new inode) at the same path: the keeper binds it in
    assert agent.socket.stat().st_ino != old
    wait_for(lambda: bound.stat().st_ino == agent.socket.stat().st_ino, 10, "the new socket")
    row = wait_for(
        lambda: next(
            (r for r in agent.control("ps") if r["pid"] == c.pid and r["state"] == "connected"),
            None,
        ),
        40,
        "the probe reconnected",
    )
    assert row["already_running"] or row["mode"] == "attached"
    n = len(agent.rows(HOSTNAME, (c.pid,)))
    agent.wait_rows(n + 1, HOSTNAME, (c.pid,), timeout=30)


@pytest.mark.slow
def test_rasp_attach_jvm_in_a_container(spawn, agent: AgentProc, tmp_path) -> None:
    sleeper = REPO / "tests" / "apps" / "jvm" / "Sleeper.java"
    (tmp_path / "ctmp").mkdir()
    (tmp_path / "ctmp" / sleeper.name).write_bytes(sleeper.read_bytes())  # its /tmp
    c = Container(
        spawn, tmp_path, ["/usr/bin/java", f"/tmp/{sleeper.name}", "rampart-ct"],
        stdout=subprocess.PIPE, exist_ok=True,
    )  # fmt: skip
    assert c.proc.stdout is not None and c.proc.stdout.readline().strip() == b"ready"
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    row = next(r for r in agent.control("ps") if r["pid"] == c.pid)
    assert row["state"] == "connected" and row["runtime"] == "jvm" and row["hooks"] > 0
    assert len(c.placed()) == 1
    c.stop()
    wait_for(lambda: c.placed() == [], 10, "placed files removed")


@pytest.mark.slow
def test_read_only_tmp_places_in_run(spawn, agent: AgentProc, tmp_path) -> None:
    c = Container(
        spawn, tmp_path, ["/usr/bin/python3", "-c", PY_APP, "rampart-ct"],
        stdout=subprocess.PIPE, tmp_ro=True,
    )  # fmt: skip
    assert c.proc.stdout is not None and c.proc.stdout.readline().split()[0] == b"ready"
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(c.pid), "--socket", str(agent.socket), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    agent.wait_rows(1, HOSTNAME, (c.pid,), timeout=30)
    assert c.placed("tmp") == [] and len(c.placed("run")) == 1
    c.stop()
    wait_for(lambda: c.placed("run") == [], 10, "placed files removed")
