"""The fanotify fallback inside the real agent: with eBPF unavailable (forced: the BPF object
is missing), exec paths and writes under `driver_open_paths` reach the store, beside the
proc connector's exec/fork/exit; status says the mode; event fds never pile up."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agentproc import REPO, AgentProc, wait_for

pytestmark = pytest.mark.integration

PY = "/usr/bin/python3"
VICTIM = str(REPO / "tests" / "apps" / "driver" / "victim.py")


def fallback_agent(
    agent_factory: Callable[..., AgentProc], tmp_path: Path, sensitive: Path
) -> AgentProc:
    return agent_factory(
        env={
            "RAMPART_DRIVER": "auto",
            "RAMPART_DRIVER_OBJECT": str(tmp_path / "missing.bpf.o"),
            "RAMPART_DRIVER_OPEN_PATHS": f"{sensitive}/",
            "RAMPART_DRIVER_EVENTS": "execve,open",
        }
    ).start()


@pytest.fixture
def sensitive() -> Iterator[Path]:
    """A short prefix (driver_open_paths entries are < 64 bytes; pytest's tmp_path is longer)."""
    with tempfile.TemporaryDirectory(prefix="rampart-fan-") as d:
        yield Path(d)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _run(argv: list[str]) -> int:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    assert p.wait(30) == 0
    return p.pid


def test_fanotify_reports_exec_paths_and_sensitive_writes(
    agent_factory: Callable[..., AgentProc], tmp_path: Path, sensitive: Path
) -> None:
    agent = fallback_agent(agent_factory, tmp_path, sensitive)
    (line,) = [x for x in agent.log_text().splitlines() if "driver not started" in x]
    assert "exec/fork/exit from the proc connector" in line
    assert "exec paths and writes under driver_open_paths from fanotify (/" in line

    status = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
    d = status["driver"]
    assert d["mode"] == "proc-connector+fanotify" and "not found" in d["reason"]
    assert "/" in d["fanotify"]["marked"]
    # the events (each brings an fd of its file) are read in a child process: in the agent,
    # closing an event fd of its own store dropped its SQLite locks (SIGBUS, driver/fanotify.py)
    assert agent.proc is not None
    fd_dir = f"/proc/{agent.proc.pid}/fd"
    fds = [os.readlink(f"{fd_dir}/{x}") for x in os.listdir(fd_dir)]
    assert not [f for f in fds if "fanotify" in f], fds
    text = agent.cli("status", "--socket", str(agent.socket)).stdout
    assert "driver: proc-connector+fanotify (" in text
    assert (
        "driver: proc-connector+fanotify (" in agent.cli("ps", "--socket", str(agent.socket)).stdout
    )

    # a script whose #! line holds a NUL: its exec fails, and the reader thread survives it
    odd = sensitive / "odd.sh"
    odd.write_bytes(b"#!/bin/s\0h\n")
    odd.chmod(0o755)
    with pytest.raises(OSError):
        subprocess.run([str(odd)], check=False)
    # an exec of a known program: stored with the file the kernel exec'd (symlinks resolved)
    echo = _run(["/bin/echo", "rampart-fanotify"])
    (e,) = agent.wait_rows(1, "pid = ? AND hook = 'fanotify'", (echo,))
    assert e["data_type"] == 59 and e["event"] == "execve" and e["kind"] == "process"
    assert e["runtime"] == "kernel" and e["source"] == "driver"
    assert e["args"] == [os.path.realpath("/bin/echo")]
    assert e["driver"]["run_path"] == os.path.realpath("/bin/echo")
    # its ELF interpreter (ld.so) was opened for exec too: folded in, not an exec of its own
    assert e["driver"]["interpreter"].startswith("/")
    # the proc connector's exec of the same process is there as before
    agent.wait_rows(1, "pid = ? AND hook = 'proc_connector'", (echo,))

    # a write under the sensitive prefix, from a child we start: stored as `open`
    secret = sensitive / "authorized_keys"
    writer = _run([PY, VICTIM, "open", str(secret)])
    (w,) = agent.wait_rows(1, "pid = ? AND json_extract(event, '$.data_type') = 2", (writer,))
    assert w["hook"] == "fanotify" and w["kind"] == "file" and w["event"] == "open"
    assert w["args"] == [str(secret), "close_write"]
    assert w["driver"]["filename"] == str(secret) and w["driver"]["write"] is True
    assert w["driver"]["pid"] == writer

    # a write elsewhere is not stored: write outside, then inside, wait for the inside one
    outside = _run([PY, VICTIM, "open", str(tmp_path / "not-sensitive")])
    last = _run([PY, VICTIM, "open", str(sensitive / "last")])
    agent.wait_rows(1, "pid = ? AND json_extract(event, '$.data_type') = 2", (last,))
    assert agent.rows("pid = ? AND json_extract(event, '$.data_type') = 2", (outside,)) == []

    # many events later, the agent holds no more fds: every event fd was closed
    assert agent.proc is not None
    before = _fds(agent.proc.pid)
    script = f'for i in $(seq 150); do /bin/true; echo x > "{sensitive}/f$i"; done'
    subprocess.run(["/bin/sh", "-c", script], check=True)
    try:
        # generous: once in a full CI run this wait ran out at 15 s (not reproduced since,
        # under load either; no overflow or loss in 900 events); the stats say why if again
        agent.wait_rows(
            1, "json_extract(event, '$.driver.filename') = ?", (f"{sensitive}/f150",), timeout=60
        )
    except AssertionError:
        st = agent.cli("status", "--socket", str(agent.socket), "--json").stdout
        stored = agent.rows("json_extract(event, '$.driver.filename') LIKE ?", (f"{sensitive}/f%",))
        raise AssertionError(
            f"f150 not stored; {len(stored)} f* writes stored; status {st}; agent exit code "
            f"{agent.proc.poll()} (None: alive); log tail: {agent.log_text()[-3000:]}"
        ) from None
    # (polled: a store transaction may hold a journal fd for a moment; a leak would be 450)
    pid = agent.proc.pid
    wait_for(lambda: _fds(pid) <= before, 10, f"the agent's fds back to {before}")
    stored = agent.rows("hook = 'fanotify' AND json_extract(event, '$.data_type') = 2")
    assert len(stored) >= 152
    status = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
    fan = status["driver"]["fanotify"]
    assert fan["received"] >= 300 and fan["overflows"] == 0 and fan["dropped"] == 0
