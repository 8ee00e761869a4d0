"""Auto-attach with real processes started after the agent: discovery, include/exclude,
the state machine (attached, failed with retries, gone, helper killed), agent restarts.

The injection step is played by tests/apps/python/signal_attach_cli.py (rasp-attach's
command line; it "injects" by SIGUSR2 into tests/apps/python/cooperative_target.py), so
these tests exercise the engine itself; each runtime's own tests prove its real attacher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agentproc import AgentProc, wait_for

APPS = Path(__file__).resolve().parents[1] / "apps" / "python"
TARGET = APPS / "cooperative_target.py"
HELPER = APPS / "signal_attach_cli.py"


def auto_agent(agent_factory, **env: str) -> AgentProc:
    a = agent_factory()
    # only our cooperative targets for this agent's own socket
    base = {
        "RAMPART_AUTO_ATTACH": "python",
        "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": f"cooperative_target.py {a.socket}"}]),
        "RAMPART_ATTACH_COMMAND": json.dumps([sys.executable, str(HELPER)]),
        "RAMPART_ATTACH_SETTLE_S": '{"python": 0.1}',
        "RAMPART_ATTACH_RESCAN_S": "1",
    }
    a.env.update(base | env)
    return a.start()


def start_target(spawn, agent: AgentProc, *extra: str, env: dict | None = None):
    p = spawn(
        [sys.executable, str(TARGET), str(agent.socket), *extra],
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def row(agent: AgentProc, pid: int) -> dict:
    return next((r for r in agent.control("ps") if r["pid"] == pid), {})


def test_new_process_is_attached_and_excluded_ones_are_not(agent_factory, spawn) -> None:
    # with the driver: discovery from its exec events (the other tests use the rescan)
    a = auto_agent(
        agent_factory,
        RAMPART_ATTACH_EXCLUDE=json.dumps([{"cmdline": "--not-me"}]),
        RAMPART_DRIVER="auto",
        RAMPART_ATTACH_RESCAN_S="600",
    )
    target = start_target(spawn, a)
    opted_out = start_target(spawn, a, env={"RAMPART_DISABLE": "1"})
    excluded = start_target(spawn, a, "--not-me")
    r = wait_for(lambda: (x := row(a, target.pid)).get("attach_state") == "attached" and x, 20)
    assert r["state"] == "connected" and r["mode"] == "attached"
    assert r["runtime"] == "python" and r["attempts"] == 1
    # the others: never tracked, never signalled (they would have connected)
    for p in (opted_out, excluded):
        assert row(a, p.pid) == {}
    # the CLI shows the attach state
    res = a.cli("ps", "--socket", str(a.socket), "--json")
    mine = [json.loads(x) for x in res.stdout.splitlines() if json.loads(x)["pid"] == target.pid]
    assert mine[0]["attach_state"] == "attached"
    assert "attached" in a.cli("ps", "--socket", str(a.socket)).stdout
    assert "exec events + rescan" in a.log_text()


def test_failures_retry_with_backoff_then_give_up(agent_factory, spawn) -> None:
    a = auto_agent(agent_factory, RAMPART_ATTACH_RETRIES="1", RAMPART_ATTACH_TIMEOUT_S="3")
    deaf = start_target(spawn, a, "--ignore")  # never says hello
    r = wait_for(lambda: (x := row(a, deaf.pid)).get("attempts") == 2 and "gave up" in
                 x.get("attach_reason", "") and x, 40)  # fmt: skip
    assert r["attach_state"] == "failed"
    assert "no hello from pid" in r["attach_reason"]
    assert deaf.poll() is None  # the target is untouched and alive


def test_process_exiting_during_attach_ends_gone(agent_factory, spawn) -> None:
    a = auto_agent(agent_factory, RAMPART_ATTACH_TIMEOUT_S="20")
    deaf = start_target(spawn, a, "--ignore")
    wait_for(lambda: row(a, deaf.pid).get("attach_state") == "attaching", 20)
    deaf.kill()
    deaf.wait()
    r = wait_for(lambda: (x := row(a, deaf.pid)).get("attach_state") == "gone" and x, 20)
    assert r["attach_reason"] == "process exited"
    assert "Traceback" not in a.log_text()


def test_hung_helper_is_killed_and_the_state_says_so(agent_factory, spawn, tmp_path) -> None:
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 1000\n")
    hang.chmod(0o755)
    a = auto_agent(
        agent_factory,
        RAMPART_ATTACH_COMMAND=json.dumps([str(hang)]),
        RAMPART_ATTACH_TIMEOUT_S="1",
        RAMPART_ATTACH_RETRIES="0",
    )
    target = start_target(spawn, a)
    r = wait_for(lambda: (x := row(a, target.pid)).get("attach_state") == "failed" and x, 20)
    assert "attach helper killed after 1 s" in r["attach_reason"]
    # no helper left behind
    out = subprocess.run(["pgrep", "-f", str(hang)], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_agent_restart_does_not_inject_twice(agent_factory, spawn) -> None:
    a = auto_agent(agent_factory)
    target = start_target(spawn, a)
    wait_for(lambda: row(a, target.pid).get("attach_state") == "attached", 20)
    a.stop()
    a.start()
    # rediscovered by the rescan; the probe reconnects by itself and is recognised
    r = wait_for(lambda: (x := row(a, target.pid)).get("attach_state") == "attached" and x, 20)
    assert r["state"] == "connected" and r["attempts"] == 0  # no second injection


def test_auto_attach_without_include_rules_refuses_to_start(agent_factory) -> None:
    a = agent_factory(env={"RAMPART_AUTO_ATTACH": "python"})
    a.start(wait=False)
    assert a.proc.wait(30) == 2
    assert "attach_include has no rules" in a.log_text()


@pytest.mark.parametrize("bad", ['[{"colour": "red"}]', '[{"cmdline": "("}]', "[{"])
def test_bad_attach_rules_are_refused(agent_factory, bad: str) -> None:
    a = agent_factory(env={"RAMPART_AUTO_ATTACH": "python", "RAMPART_ATTACH_INCLUDE": bad})
    a.start(wait=False)
    assert a.proc.wait(30) == 2
    assert "RAMPART_ATTACH_INCLUDE" in a.log_text()
