"""Attack conformance matrix: the payload corpus (tests/data/matrix/attacks.yaml) driven
through every runtime's test app, attached live with `rasp-attach`, on loopback; the events in
the agent's store must carry the expected detection (attacks) or none (benign traffic).

Mode "observe": one agent (detectors on, the default) and one app per runtime serve the whole
module. Mode "off": a second agent with `RAMPART_DETECTORS=false` and its own apps; the first
payload of each cell must arrive as an event without detections. The apps of each agent start
and attach in parallel (JVM start-up dominates). Block mode is not in the matrix: detections
cannot block yet (docs/detection.md, "Rules file and whitelist").
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.conftest import REPO, GoBuild, Spawner
from tests.integration.test_jvm_probe import H2_JAR, jvm_classes, remove_listener_socket

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORPUS = REPO / "tests" / "data" / "matrix" / "attacks.yaml"
APPS = REPO / "tests" / "apps"
RUNTIMES = ("python", "jvm", "nodejs", "php", "golang")
MATRIX = yaml.safe_load(CORPUS.read_text())["classes"]

__all__ = ["jvm_classes"]  # a session fixture, imported to be used here


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED_PORT = _closed_port()


def _fill(s: str) -> str:
    return s.replace("{closed_port}", str(CLOSED_PORT))


def _cases(benign: bool, first_only: bool = False) -> list[Any]:
    """pytest params (runtime, class, value) for every cell of the corpus; skipped cells stay
    visible with their reason."""
    out = []
    for cls, spec in MATRIX.items():
        for rt in RUNTIMES:
            entry = spec.get("runtimes", {}).get(rt, {})
            skip = spec.get("skip") or entry.get("skip")
            if benign:
                values = spec.get("benign", [])
            else:
                values = entry.get("payloads", spec.get("payloads", []))
            if benign and not values and not skip:
                skip = spec.get("benign_skip", "no benign case")
            marks = []
            if skip:
                marks.append(pytest.mark.skip(reason=str(skip).strip()))
                values = values or ["-"]
            elif entry.get("xfail") and not benign:
                marks.append(pytest.mark.xfail(reason=entry["xfail"], strict=True))
            if first_only:
                values = values[:1]
                marks = [m for m in marks if m.name == "skip"]
            for i, v in enumerate(values):
                out.append(pytest.param(rt, cls, v, marks=marks, id=f"{rt}-{cls}-{i}"))
    return out


# ------------------------------------------------------------------------------ the apps


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"server exited {proc.returncode}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, 30, f"port {port}")


def _ready_line(p: subprocess.Popen[bytes]) -> int:
    assert p.stdout is not None
    line = p.stdout.readline().decode().split()
    assert line and line[0] == "ready", line
    return int(line[1])


def _start(
    rt: str, spawn: Spawner, cwd: Path, classes: Path, go_app: Path
) -> tuple[subprocess.Popen, int]:
    if rt == "python":
        argv = [sys.executable, str(APPS / "python" / "http_server_app.py")]
        p = spawn(argv, stdout=subprocess.PIPE, cwd=cwd)
        return p, _ready_line(p)
    if rt == "jvm":
        argv = ["java", "-cp", f"{classes}:{H2_JAR}", "VulnApp"]
        p = spawn(argv, stdout=subprocess.PIPE, cwd=cwd)
        return p, _ready_line(p)
    if rt == "nodejs":
        argv = ["node", "--inspect-port=0", str(APPS / "nodejs" / "http_app.js")]
        p = spawn(argv, stdout=subprocess.PIPE, cwd=cwd)
        return p, _ready_line(p)
    if rt == "golang":  # tests/apps/golang/vulnapp: prints "listening <port>"
        p = spawn([str(go_app)], stdout=subprocess.PIPE, cwd=cwd)
        assert p.stdout is not None
        return p, int(p.stdout.readline().split()[1])
    port = _closed_port()
    p = spawn(["php", "-S", f"127.0.0.1:{port}", str(APPS / "php" / "app.php")], cwd=cwd)
    _wait_port(port, p)
    return p, port


def _attach(agent: AgentProc, pid: int) -> dict:
    res = subprocess.run(
        [RASP_ATTACH, "--pid", str(pid), "--socket", str(agent.socket), "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert res.returncode == 0, (res.stdout, res.stderr, agent.log_text()[-2000:])
    return json.loads(res.stdout)


def _agent(d: Path, **env_extra: str) -> AgentProc:
    d.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env.update(RAMPART_DRIVER="off", **env_extra)
    return AgentProc(
        dir=d,
        socket=d / "probe.sock",
        store=d / "events.db",
        jsonl=d / "events.jsonl",
        policy=d / "policy.yaml",  # absent: no policy, observe only
        log=d / "agent.log",
        env=env,
    )


@contextlib.contextmanager
def _running_apps(
    spawn: Spawner, classes: Path, env: dict[str, str], go_app: Path
) -> Iterator[tuple]:
    """(agent, runtime -> {"pid", "port", "proc"}): an agent, and one app per runtime started
    in a scratch directory (holding report.txt) and attached to it, all in parallel."""
    with tempfile.TemporaryDirectory(prefix="rampart-matrix-") as td:
        d = Path(td)
        agent = _agent(d, **env).start()
        cwd = d / "cwd"
        cwd.mkdir()
        (cwd / "report.txt").write_text("quarterly report\n")

        def attached(rt: str) -> dict:
            p, port = _start(rt, spawn, cwd, classes, go_app)
            _attach(agent, p.pid)
            return {"pid": p.pid, "port": port, "proc": p}

        started: dict[str, dict] = {}
        try:
            with ThreadPoolExecutor(len(RUNTIMES)) as pool:
                for rt, app in zip(RUNTIMES, pool.map(attached, RUNTIMES), strict=True):
                    started[rt] = app
            yield agent, started
        finally:
            for app in started.values():
                app["proc"].kill()
                app["proc"].wait()
            if "jvm" in started:
                remove_listener_socket(started["jvm"]["pid"])
            agent.stop()


@pytest.fixture(scope="module")
def observe(spawn_module: Spawner, jvm_classes: Path, go_build: GoBuild) -> Iterator[tuple]:
    """Detectors on (the default): mode "observe"."""
    with _running_apps(spawn_module, jvm_classes, {}, go_build("vulnapp")) as running:
        yield running


@pytest.fixture(scope="module")
def off(spawn_module: Spawner, jvm_classes: Path, go_build: GoBuild) -> Iterator[tuple]:
    """Detectors switched off on a second agent with its own apps: mode "off"."""
    detectors_off = {"RAMPART_DETECTORS": "false"}
    with _running_apps(spawn_module, jvm_classes, detectors_off, go_build("vulnapp")) as running:
        yield running


# ------------------------------------------------------------------------------ the matrix


def _send(port: int, path: str, query: dict[str, str]) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _drive(apps: dict, agent: AgentProc, rt: str, cls: str, value: str):
    """Send one request; returns (param, payload, the check's events getter)."""
    spec = MATRIX[cls]
    entry = spec["runtimes"][rt]
    payload = _fill(value)
    query = {k: _fill(str(v)) for k, v in entry.get("extra", {}).items()}
    query[entry["param"]] = payload
    app = apps[rt]
    status, body = _send(app["port"], entry["path"], query)
    assert status in (200, 500), (status, body)  # the sink ran (it may fail: closed port, …)
    kinds = spec["kind"] if isinstance(spec["kind"], list) else [spec["kind"]]

    def events() -> list[dict]:
        return [
            r
            for r in agent.rows("pid = ?", (app["pid"],))
            if r["kind"] in kinds
            and (r.get("request") or {}).get("params", {}).get(entry["param"]) == [payload]
        ]

    return entry["param"], payload, events


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=False))
def test_attack_is_detected(observe, runtime: str, cls: str, value: str) -> None:
    matrix_agent, apps = observe
    rule = MATRIX[cls]["rule"]
    known_miss = "xfail" in MATRIX[cls]["runtimes"][runtime]
    param, payload, events = _drive(apps, matrix_agent, runtime, cls, value)

    def detected() -> list[dict]:
        return [e for e in events() if rule in [d["rule"] for d in e.get("detections", [])]]

    try:
        hits = wait_for(detected, 5 if known_miss else 20, f"{rule} on a {runtime} event")
    except AssertionError:
        seen = [(e["hook"], e["args"], e.get("detections")) for e in events()]
        raise AssertionError(f"no {rule}; events of the request: {seen}") from None
    ev = hits[0]
    (det,) = [d for d in ev["detections"] if d["rule"] == rule]
    assert det["param"] == param and det["value"] == payload[:256]
    assert ev["request"]["params"][param] == [payload]
    assert ev["alerts"] and rule in ev["alerts"]


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=True))
def test_benign_traffic_raises_nothing(observe, runtime: str, cls: str, value: str) -> None:
    matrix_agent, apps = observe
    _, _, events = _drive(apps, matrix_agent, runtime, cls, value)
    wait_for(events, 20, f"the {runtime} {cls} event")
    seen = events()
    assert [(e["hook"], e["args"], e.get("detections")) for e in seen if e.get("detections")] == []
    assert all("alerts" not in e for e in seen)


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=False, first_only=True))
def test_detectors_off_report_the_event_without_detection(off, runtime, cls, value) -> None:
    agent, apps = off
    _, _, events = _drive(apps, agent, runtime, cls, value)
    seen = wait_for(events, 20, f"the {runtime} {cls} event")
    assert [e for e in seen if "detections" in e or "alerts" in e] == []
