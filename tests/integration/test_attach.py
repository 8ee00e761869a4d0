"""`rasp-attach`: detection and clear failures through the real CLI, and the attach
orchestration (record, inject, wait for hello, idempotence) against a real agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from injector import attach as attach_mod
from injector.attach import (
    EXIT_NO_AGENT,
    EXIT_PROCESS,
    EXIT_TIMEOUT,
    EXIT_UNSUPPORTED,
    AttachError,
)
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.apps.python import signal_attacher

COOPERATIVE = Path(__file__).resolve().parents[1] / "apps" / "python" / "cooperative_target.py"
SLEEPER_JAVA = Path(__file__).resolve().parents[1] / "apps" / "jvm" / "Sleeper.java"


def rasp_attach(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RASP_ATTACH, *args], capture_output=True, text=True, timeout=60)


def test_no_such_pid(agent: AgentProc) -> None:
    res = rasp_attach("--pid", str(2**22 + 4321), "--socket", str(agent.socket))
    assert res.returncode == EXIT_PROCESS
    assert res.stderr.strip() == f"rasp-attach: pid {2**22 + 4321}: no such process"


def test_not_a_runtime(spawn, agent: AgentProc) -> None:
    p = spawn(["sleep", "100"])
    res = rasp_attach("--pid", str(p.pid), "--socket", str(agent.socket))
    assert res.returncode == EXIT_UNSUPPORTED
    assert "not a supported runtime" in res.stderr and "/usr/bin/sleep" in res.stderr
    assert len(res.stderr.splitlines()) == 1


def test_zombie(spawn, agent: AgentProc) -> None:
    p = spawn(["true"])
    wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")
    res = rasp_attach("--pid", str(p.pid), "--socket", str(agent.socket))
    assert res.returncode == EXIT_PROCESS and "zombie" in res.stderr


def test_detect_only_and_runtime_mismatch(spawn) -> None:
    p = spawn([sys.executable, "-c", "import time; time.sleep(100)"])
    wait_for(lambda: "python" in Path(f"/proc/{p.pid}/exe").resolve().name)
    res = rasp_attach("--pid", str(p.pid), "--detect-only", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["runtime"] == "python" and out["version"].startswith("3.11")
    res = rasp_attach("--pid", str(p.pid), "--runtime", "jvm", "--detect-only")
    assert res.returncode == EXIT_UNSUPPORTED and "not jvm" in res.stderr


def test_runtime_without_an_attacher_fails_clearly(spawn, agent: AgentProc, monkeypatch) -> None:
    # Every runtime gets its attacher as its issue lands, so take one away: a detected
    # runtime with no attacher must fail with a clear reason and inject nothing.
    p = spawn(["php", "-r", "sleep(100);"])
    wait_for(lambda: Path(f"/proc/{p.pid}/exe").resolve().name.startswith("php"))
    monkeypatch.delitem(attach_mod.ATTACHER_MODULES, "php", raising=False)
    with pytest.raises(AttachError) as err:
        attach_mod.attach(p.pid, "auto", agent.socket, timeout=5)
    assert err.value.code == EXIT_UNSUPPORTED
    assert f"pid {p.pid} runs php 8." in err.value.reason
    assert "live attach for php is not available in this version" in err.value.reason
    assert agent.control("ps") == [], "nothing was attached"


@pytest.mark.slow
def test_jvm_that_disabled_attach_is_refused_without_a_signal(spawn, agent: AgentProc) -> None:
    p = spawn(["java", "-XX:+DisableAttachMechanism", str(SLEEPER_JAVA)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    res = rasp_attach("--pid", str(p.pid), "--socket", str(agent.socket))
    assert res.returncode == EXIT_UNSUPPORTED
    assert "-XX:+DisableAttachMechanism" in res.stderr
    assert p.poll() is None  # untouched


# ---------------------------------------------------------------- orchestration


@pytest.fixture
def cooperative(monkeypatch) -> signal_attacher.SignalAttacher:
    attacher = signal_attacher.SignalAttacher()
    monkeypatch.setattr(signal_attacher, "ATTACHER", attacher)
    monkeypatch.setitem(attach_mod.ATTACHER_MODULES, "python", signal_attacher.__name__)
    return attacher


def _target(spawn, agent: AgentProc, *extra: str):
    p = spawn([sys.executable, str(COOPERATIVE), str(agent.socket), *extra], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def test_attach_records_injects_and_waits_for_the_hello(spawn, agent, cooperative) -> None:
    p = _target(spawn, agent)
    out = attach_mod.attach(p.pid, "auto", agent.socket, timeout=10)
    assert out.detection.runtime == "python" and not out.already
    assert out.probe["pid"] == p.pid and out.probe["mode"] == "attached"
    assert out.probe["probe_version"] == "cooperative"
    assert cooperative.calls == 1
    # attaching twice is a no-op that says so, and does not inject again
    again = attach_mod.attach(p.pid, "python", agent.socket, timeout=10)
    assert again.already and cooperative.calls == 1


def test_attach_without_an_agent(spawn, agent_factory, cooperative) -> None:
    a = agent_factory()  # built, never started: nothing listens on its socket
    p = spawn([sys.executable, str(COOPERATIVE), str(a.socket)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    with pytest.raises(AttachError) as err:
        attach_mod.attach(p.pid, "auto", a.socket, timeout=5)
    assert err.value.code == EXIT_NO_AGENT and "rasp-agent run" in err.value.reason
    assert cooperative.calls == 0, "nothing is injected when no agent would hear the probe"


def test_attach_times_out_when_no_hello_comes(spawn, agent, cooperative) -> None:
    p = _target(spawn, agent, "--ignore")
    with pytest.raises(AttachError) as err:
        attach_mod.attach(p.pid, "auto", agent.socket, timeout=0.5)
    assert err.value.code == EXIT_TIMEOUT and "no hello from pid" in err.value.reason
