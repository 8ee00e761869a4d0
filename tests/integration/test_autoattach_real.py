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
