"""Fixtures that run the real agent as a subprocess on a temporary socket and store."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProc


@pytest.fixture
def agent_factory() -> Iterator[Callable[..., AgentProc]]:
    """Build (not start) agents in a fresh directory each; all are stopped at teardown.
    The eBPF driver and kernel enforcement are off unless the test turns them on.

    The directory is world-traversable (0755), because some tests connect as another uid.
    """
    made: list[AgentProc] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def make(env: dict[str, str] | None = None, args: list[str] | None = None) -> AgentProc:
        td = tempfile.TemporaryDirectory(prefix="rampart-agent-")
        dirs.append(td)
        d = Path(td.name)
        d.chmod(0o755)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
        # without the driver unless a test asks (`--driver on`): the store then holds only
        # what the test sent, not every exec on the host
        full_env["RAMPART_DRIVER"] = "off"
        # kernel enforcement likewise (tests/integration/test_enforce.py turns it on): its
        # programs would sit on the cgroup root for every agent of the suite
        full_env["RAMPART_ENFORCE"] = "off"
        full_env.update(env or {})
        a = AgentProc(
            dir=d,
            socket=d / "probe.sock",
            store=d / "events.db",
            jsonl=d / "events.jsonl",
            policy=d / "policy.yaml",
            log=d / "agent.log",
            env=full_env,
            extra_args=args or [],
        )
        made.append(a)
        return a

    yield make
    for a in made:
        if a.proc is not None:
            a.stop()
    for td in dirs:
        td.cleanup()


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProc]) -> AgentProc:
    """A running agent with default settings and no policy file."""
    return agent_factory().start()
