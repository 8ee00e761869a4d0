"""Helpers for the CPython probe's integration tests: start the test apps, attach with the
real `rasp-attach`, drive requests on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.agentproc import RASP_ATTACH, AgentProc, wait_for

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps" / "python"
PROBE_DIR = REPO / "rasp" / "python"
VENV_BIN = Path(sys.executable).parent
PYENV = Path("/root/.pyenv/versions")


def interpreter(version: str) -> str | None:
    """A pyenv CPython of that minor version, if the machine has one."""
    if not PYENV.is_dir():
        return None
    for d in sorted(PYENV.iterdir(), reverse=True):
        if d.name.startswith(version + "."):
            exe = d / "bin" / "python3"
            if exe.exists():
                return str(exe)
    return None


def start_http_app(spawn, python: str, agent: AgentProc | None = None, sdk: bool = False):
    """The plain http.server app; returns (process, port)."""
    argv = [python, str(APPS / "http_server_app.py")]
    env = dict(os.environ)
    if sdk:
        assert agent is not None
        argv.append("--sdk")
        env.update(RAMPART_SOCKET=str(agent.socket), RAMPART_PROBE_DIR=str(PROBE_DIR))
    p = spawn(argv, stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline().decode()
    assert line.startswith("ready "), line
    return p, int(line.split()[1])


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_gunicorn(
    spawn, *extra: str, app: str = "tests.apps.python.flask_app:app", env: dict | None = None
):
    """A WSGI app (Flask unless told) under gunicorn, one worker; returns (master, port)."""
    port = free_port()
    argv = [
        str(VENV_BIN / "gunicorn"),
        "-w",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(REPO),
        *extra,
        app,
    ]
    master = spawn(argv, env=env) if env is not None else spawn(argv)
    wait_for(lambda: get(port, "/health", timeout=1)[0] == 200, 30, "gunicorn up")
    return master, port


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def get(port: int, route: str, timeout: float = 10, form: dict | None = None, **params):
    """(status, body) of one request to 127.0.0.1:port; `form` makes it a form POST."""
    url = f"http://127.0.0.1:{port}{route}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    body = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=body, headers={"User-Agent": "rampart-test"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def rasp_attach(agent: AgentProc, pid: int, *extra: str) -> dict:
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(pid), "--socket", str(agent.socket), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, (res.stdout, res.stderr, agent.log_text()[-2000:])
    return json.loads(res.stdout)


def events(agent: AgentProc, pid: int, hook: str, n: int = 1, timeout: float = 15) -> list:
    return agent.wait_rows(n, "pid = ? AND hook = ?", (pid, hook), timeout=timeout)


def probe_row(agent: AgentProc, pid: int) -> dict | None:
    for row in agent.control("ps"):
        if row["pid"] == pid and row["state"] == "connected":
            return row
    return None
