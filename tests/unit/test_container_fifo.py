"""injector/container.py: which FIFO pair directories may be bound into a container, and which
processes count as keepers (a re-attach reuses a keeper's placement, so a look-alike process
of another user must not count)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from injector import container
from tests.agentproc import wait_for


def test_fifo_source_is_only_a_pair_directory_of_that_agent(tmp_path: Path) -> None:
    sock = tmp_path / "probe.sock"
    assert container.fifo_source(sock, tmp_path / "fifo" / "123") == "fifo/123"
    for bad in (
        tmp_path / "fifo",  # the root of all pairs
        tmp_path / "fifo" / "123" / "up",  # one FIFO
        tmp_path / "other" / "123",
        tmp_path / "fifo" / "x",
        tmp_path.parent / "fifo" / "123",  # another agent's
        Path("/etc"),
    ):
        with pytest.raises(container.ContainerError, match="not a FIFO pair directory"):
            container.fifo_source(sock, bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_keepers_are_processes_of_our_own_euid(spawn) -> None:
    pid = str(2**22 + 7)  # no such target: only the names matter here
    argv = [sys.executable, "-", "injector.container", "keep", pid, "tmp", "x"]
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    fake = spawn([*setpriv, *argv], stdin=subprocess.PIPE)
    own = spawn(argv, stdin=subprocess.PIPE)
    wait_for(
        lambda: container._argv(fake.pid)[2:5] == [b"injector.container", b"keep", pid.encode()],
        10,
        "the look-alike",
    )
    wait_for(
        lambda: container._argv(own.pid)[2:5] == [b"injector.container", b"keep", pid.encode()],
        10,
        "ours",
    )
    assert container.keepers(int(pid)) == [own.pid]
