"""Auto-attach with the real attachers: a CPython app and a JVM started after the agent are
discovered, attached with `rasp-attach` (pyinjector; the HotSpot attach protocol), and report."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.agentproc import AgentProc, wait_for

SLEEPER = Path(__file__).resolve().parents[1] / "apps" / "jvm" / "Sleeper.java"

PY_APP = textwrap.dedent(
    """
    import sys, time
    print("ready", flush=True)
    while True:
        with open("/etc/hostname") as f:  # a file sink, every 50 ms
            f.read()
        time.sleep(0.05)
    """
)


def _state(a: AgentProc, pid: int) -> dict:
    return next((r for r in a.control("ps") if r["pid"] == pid), {})


@pytest.mark.slow
def test_real_python_and_jvm_apps_are_auto_attached(agent_factory, spawn) -> None:
    a = agent_factory()
    marker = f"rampart-auto-{a.dir.name}"  # on the apps' command lines: only ours match
    a.env.update(
        {
            "RAMPART_AUTO_ATTACH": "python,jvm",
            "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": marker}]),
            "RAMPART_ATTACH_SETTLE_S": '{"python": 0.2, "jvm": 1.0}',
            "RAMPART_ATTACH_RESCAN_S": "1",
        }
    )
    a.start()
    py = spawn([sys.executable, "-c", PY_APP, marker], stdout=subprocess.PIPE)
    jvm = spawn(["java", str(SLEEPER), marker], stdout=subprocess.PIPE)
    for p in (py, jvm):
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    for p, runtime in ((py, "python"), (jvm, "jvm")):
        row = wait_for(
            lambda p=p: (
                (r := _state(a, p.pid)).get("attach_state") == "attached"
                and r.get("state") == "connected"
                and r
            ),
            90,
            f"{runtime} attached",
        )
        assert row["runtime"] == runtime and row["mode"] == "attached"
        assert row["attempts"] >= 1 and row["hooks"] > 0
    # the Python app's own sink shows up, from its live-injected probe
    rows = a.wait_rows(1, "pid = ? AND kind = 'file'", (py.pid,), timeout=30)
    assert rows[0]["args"][0] == "/etc/hostname"
    assert py.poll() is None and jvm.poll() is None  # both apps untouched and running


@pytest.mark.slow
def test_a_process_seen_before_its_exec_is_judged_again(agent_factory, spawn) -> None:
    """With no exec events (driver off: rescan only), a process the rescan first saw as a
    shell (as a container's set-up shell is, before it execs the app) is judged again once
    it exec'd the runtime: its comm changed."""
    a = agent_factory()
    marker = f"rampart-exec-{a.dir.name}"
    a.env.update(
        {
            "RAMPART_AUTO_ATTACH": "python",
            "RAMPART_ATTACH_INCLUDE": json.dumps([{"cmdline": marker}]),
            "RAMPART_ATTACH_SETTLE_S": '{"python": 0.2}',
            "RAMPART_ATTACH_RESCAN_S": "0.5",
        }
    )
    a.start()
    assert "rescan only" in a.log_text()
    script = f'sleep 3; exec "{sys.executable}" -c "$0" {marker}'
    p = spawn(["sh", "-c", script, PY_APP], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    row = wait_for(
        lambda: (
            (r := _state(a, p.pid)).get("attach_state") == "attached"
            and r.get("state") == "connected"
            and r
        ),
        60,
        "attached after its exec",
    )
    assert row["runtime"] == "python"
    a.wait_rows(1, "pid = ? AND kind = 'file'", (p.pid,), timeout=30)
