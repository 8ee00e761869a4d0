"""The CPython probe started without code changes: RAMPART_PROBE=1 and
rasp/python/autostart on PYTHONPATH (its sitecustomize.py), in real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agentproc import AgentProc, wait_for
from tests.integration.pyprobe import (
    APPS,
    PROBE_DIR,
    events,
    get,
    interpreter,
    probe_row,
)

pytestmark = pytest.mark.integration
AUTOSTART = PROBE_DIR / "autostart"


def _env(agent: AgentProc, enabled: str = "1", extra_path: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    path = str(AUTOSTART) + (os.pathsep + extra_path if extra_path else "")
    env.update(PYTHONPATH=path, RAMPART_PROBE=enabled, RAMPART_SOCKET=str(agent.socket))
    return env


def test_http_app_starts_the_probe_from_the_environment(spawn, agent: AgentProc) -> None:
    p = spawn(
        [sys.executable, str(APPS / "http_server_app.py")],
        stdout=subprocess.PIPE,
        env=_env(agent),
    )
    line = p.stdout.readline().decode()
    assert line.startswith("ready "), line
    port = int(line.split()[1])
    row = wait_for(lambda: probe_row(agent, p.pid), 15, "the autostarted probe's hello")
    assert row["mode"] == "sdk" and row["hooks"]
    assert get(port, "/cmd", c="id")[0] == 200
    (ev,) = events(agent, p.pid, "os.system")
    assert ev["request"]["params"] == {"c": ["id"]}
    assert any(f.startswith("run_command (") for f in ev["stack"])


def _run(python: str, env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )


# pid, probe loaded?, rasp/python put on sys.path? (it must not be), the app's sitecustomize ran?
CHECK = (
    "import os, sys; os.system('true'); "
    f"print(os.getpid(), 'rampart_probe' in sys.modules, {str(PROBE_DIR)!r} in sys.path, APP_SITE)"
)


@pytest.mark.parametrize("version", ["3.8", "3.13", "system"])
def test_one_shot_process_reports_and_off_means_off(agent: AgentProc, version, tmp_path) -> None:
    python = "/usr/bin/python3" if version == "system" else interpreter(version)
    if python is None or not os.path.exists(python):
        pytest.skip(f"no CPython {version} on this machine")
    # the app's own sitecustomize, later on the path: it still runs
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.APP_SITE = True\n")

    res = _run(python, _env(agent, "1", str(other)), CHECK)
    pid, loaded, on_path, app_site = res.stdout.split()
    assert (loaded, on_path, app_site) == ("True", "False", "True"), res.stderr
    (ev,) = events(agent, int(pid), "os.system")
    assert ev["args"] == ["true"] and ev["kind"] == "process"

    # RAMPART_PROBE=0 (or unset): nothing is loaded, nothing reported
    res = _run(python, _env(agent, "0", str(other)), CHECK)
    pid, loaded, on_path, app_site = res.stdout.split()
    assert (loaded, on_path, app_site) == ("False", "False", "True"), res.stderr
    assert not agent.rows("pid = ?", (int(pid),))
