"""Attack conformance matrix: the payload corpus (tests/data/matrix/attacks.yaml) driven
through every runtime's test app, attached live with `rasp-attach`, on loopback; the events in
the agent's store must carry the expected detection (attacks) or none (benign traffic).

Mode "observe": one agent (detectors on, the default) and one app per runtime serve the whole
module. Mode "off": a second agent with `RAMPART_DETECTORS=false` and its own apps; the first
payload of each cell must arrive as an event without detections. Mode "block": a third agent
whose rules file sets `action: block` on each class's rule, with the apps of the runtimes whose
probe carries the in-probe checks (BLOCK_RUNTIMES); each attack gets the app's error path, the
sink did not run (no marker file, no rows, no file content), and the event says `blocked: true`
with the rule id; benign values still succeed. The apps of each agent start and attach in
parallel (JVM start-up dominates).
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
#: runtimes whose probe checks detections synchronously before the sink runs (docs/detection.md,
#: "Block mode"): on the app's thread, or for Go in the kernel at the sink's uprobe
BLOCK_RUNTIMES = ("python", "jvm", "nodejs", "php", "golang")
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


# Why a runtime has no block-mode cells (docs/detection.md, "Block mode on detections").
NO_BLOCK_REASON: dict[str, str] = {}


def _cases(benign: bool, first_only: bool = False, block: bool = False) -> list[Any]:
    """pytest params (runtime, class, value) for every cell of the corpus; skipped cells stay
    visible with their reason."""
    out = []
    for cls, spec in MATRIX.items():
        for rt in RUNTIMES:
            entry = spec.get("runtimes", {}).get(rt, {})
            skip = spec.get("skip") or entry.get("skip")
            if block and not skip and rt not in BLOCK_RUNTIMES:
                skip = NO_BLOCK_REASON.get(rt, f"the {rt} probe has no in-probe detection checks")
            if block and not benign and not skip:
                values = entry.get("block_payloads", spec.get("block_payloads"))
                if values is None:
                    values = entry.get("payloads", spec.get("payloads", []))
            elif benign:
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


def _start(rt: str, spawn: Spawner, cwd: Path, classes: Path) -> tuple[subprocess.Popen, int]:
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
    if rt == "golang":  # tests/apps/golang/vulnapp (uprobes): prints "listening <port>"
        p = spawn([str(_GO_APP[0])], stdout=subprocess.PIPE, cwd=cwd)
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


def _agent(d: Path, block: bool = False, **env_extra: str) -> AgentProc:
    d.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    env.update(RAMPART_DRIVER="off", **env_extra)
    extra = []
    if block:
        rules = d / "rules.yaml"
        ids = sorted({spec["rule"] for spec in MATRIX.values() if not spec.get("skip")})
        rules.write_text(
            "rules:\n"
            + "".join(f"  - {{id: {r}, action: block}}\n" for r in ids)
            # a whitelisted finding is never blocked (test_block_mode_spares_whitelisted)
            + "whitelist:\n  - {rule: path.traversal, request_path: ^/write$, reason: test}\n"
        )
        extra = ["--rules", str(rules)]
    return AgentProc(
        dir=d,
        socket=d / "probe.sock",
        store=d / "events.db",
        jsonl=d / "events.jsonl",
        policy=d / "policy.yaml",  # absent: no policy, observe only
        log=d / "agent.log",
        env=env,
        extra_args=extra,
    )


_GO_APP: list[Path] = []  # the Go test app's binary, built once per session (go_build)


@pytest.fixture(scope="module", autouse=True)
def _go_app(go_build: GoBuild) -> None:
    _GO_APP[:] = [go_build("vulnapp")]


@contextlib.contextmanager
def _running_apps(
    spawn: Spawner,
    classes: Path,
    env: dict[str, str],
    runtimes: tuple[str, ...] = RUNTIMES,
    block: bool = False,
) -> Iterator[tuple]:
    """(agent, runtime -> {"pid", "port", "proc", "cwd"}): an agent, and one app per runtime
    started in a scratch directory (holding report.txt) and attached to it, all in parallel."""
    with tempfile.TemporaryDirectory(prefix="rampart-matrix-") as td:
        d = Path(td)
        agent = _agent(d, block, **env).start()
        cwd = d / "cwd"
        cwd.mkdir()
        (cwd / "report.txt").write_text("quarterly report\n")

        def attached(rt: str) -> dict:
            p, port = _start(rt, spawn, cwd, classes)
            _attach(agent, p.pid)
            return {"pid": p.pid, "port": port, "proc": p, "cwd": cwd}

        started: dict[str, dict] = {}
        try:
            with ThreadPoolExecutor(len(runtimes)) as pool:
                for rt, app in zip(runtimes, pool.map(attached, runtimes), strict=True):
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
def observe(spawn_module: Spawner, jvm_classes: Path) -> Iterator[tuple]:
    """Detectors on (the default): mode "observe"."""
    with _running_apps(spawn_module, jvm_classes, {}) as running:
        yield running


@pytest.fixture(scope="module")
def off(spawn_module: Spawner, jvm_classes: Path) -> Iterator[tuple]:
    """Detectors switched off on a second agent with its own apps: mode "off"."""
    with _running_apps(spawn_module, jvm_classes, {"RAMPART_DETECTORS": "false"}) as running:
        yield running


@pytest.fixture(scope="module")
def block(spawn_module: Spawner, jvm_classes: Path) -> Iterator[tuple]:
    """Each class's rule in block mode (`action: block`), on a third agent: mode "block"."""
    with _running_apps(spawn_module, jvm_classes, {}, BLOCK_RUNTIMES, block=True) as running:
        yield running


# ------------------------------------------------------------------------------ the matrix


def _send(port: int, path: str, query: dict[str, str]) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (ConnectionError, urllib.error.URLError) as e:
        # no response: a request the Go probe blocked (the handler panicked at the sink,
        # net/http recovered and closed the connection; docs/go-probe.md)
        return 0, repr(e)


def _drive(
    apps: dict, agent: AgentProc, rt: str, cls: str, value: str, want_ok: bool | None = False
):
    """Send one request; returns (param, payload, the check's events getter, status, body)."""
    spec = MATRIX[cls]
    entry = spec["runtimes"][rt]
    payload = _fill(value)
    query = {k: _fill(str(v)) for k, v in entry.get("extra", {}).items()}
    query[entry["param"]] = payload
    app = apps[rt]
    status, body = _send(app["port"], entry["path"], query)
    if want_ok is None:
        pass  # block mode: the caller checks the error path
    elif want_ok:
        assert status == 200, (status, body)
    else:
        assert status in (200, 500), (status, body)  # the sink ran (it may fail: closed port)
    kinds = spec["kind"] if isinstance(spec["kind"], list) else [spec["kind"]]

    def events() -> list[dict]:
        return [
            r
            for r in agent.rows("pid = ?", (app["pid"],))
            if r["kind"] in kinds
            and (r.get("request") or {}).get("params", {}).get(entry["param"]) == [payload]
        ]

    return entry["param"], payload, events, status, body


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=False))
def test_attack_is_detected(observe, runtime: str, cls: str, value: str) -> None:
    matrix_agent, apps = observe
    rule = MATRIX[cls]["rule"]
    known_miss = "xfail" in MATRIX[cls]["runtimes"][runtime]
    param, payload, events, _, _ = _drive(apps, matrix_agent, runtime, cls, value)

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
    _, _, events, _, _ = _drive(apps, matrix_agent, runtime, cls, value)
    wait_for(events, 20, f"the {runtime} {cls} event")
    seen = events()
    assert [(e["hook"], e["args"], e.get("detections")) for e in seen if e.get("detections")] == []
    assert all("alerts" not in e for e in seen)


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=False, first_only=True))
def test_detectors_off_report_the_event_without_detection(off, runtime, cls, value) -> None:
    agent, apps = off
    _, _, events, _, _ = _drive(apps, agent, runtime, cls, value)
    seen = wait_for(events, 20, f"the {runtime} {cls} event")
    assert [e for e in seen if "detections" in e or "alerts" in e] == []


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=False, block=True))
def test_block_mode_stops_the_attack(block, runtime: str, cls: str, value: str) -> None:
    agent, apps = block
    spec = MATRIX[cls]
    rule = spec["rule"]
    marker = apps[runtime]["cwd"] / spec["block_marker"] if "block_marker" in spec else None
    param, payload, events, status, body = _drive(apps, agent, runtime, cls, value, None)
    # the app's error path: the sink raised (PermissionError, SecurityException, ...)
    assert status != 200, (status, body)
    for text in spec.get("block_absent", []):
        assert text not in body, body  # what the sink would have returned
    if marker is not None:
        assert not marker.exists(), f"the sink ran: {marker} was created"

    def blocked() -> list[dict]:
        return [e for e in events() if e["blocked"]]

    try:
        ev = wait_for(blocked, 20, f"a blocked {runtime} {cls} event")[0]
    except AssertionError:
        seen = [(e["hook"], e["args"], e["blocked"]) for e in events()]
        raise AssertionError(f"nothing blocked; events of the request: {seen}") from None
    assert ev["policy_id"] == rule
    # the agent's detector still ran and recorded the finding, on the attack's parameter
    (det,) = [d for d in ev.get("detections", []) if d["rule"] == rule]
    assert det["param"] == param and det["value"] == payload[:256]


@pytest.mark.parametrize(("runtime", "cls", "value"), _cases(benign=True, block=True))
def test_block_mode_lets_benign_traffic_through(block, runtime: str, cls: str, value: str) -> None:
    agent, apps = block
    _, _, events, _, _ = _drive(apps, agent, runtime, cls, value, want_ok=True)
    seen = wait_for(events, 20, f"the {runtime} {cls} event")
    assert [(e["hook"], e["args"]) for e in seen if e["blocked"]] == []


@pytest.mark.parametrize("runtime", [rt for rt in ("python", "jvm") if rt in BLOCK_RUNTIMES])
def test_block_mode_spares_whitelisted_findings(block, runtime: str) -> None:
    """The block agent whitelists path.traversal on /write: a traversal there is written, not
    blocked, and the agent records no detection (the same entry applies on both sides)."""
    agent, apps = block
    app = apps[runtime]
    name = f"whitelisted-{runtime}.txt"
    target = app["cwd"].parent / name
    status, body = _send(app["port"], "/write", {"path": f"../{name}", "data": "ok"})
    assert status == 200, (status, body)
    assert target.read_text() == "ok"

    def events() -> list[dict]:
        return [
            r
            for r in agent.rows("pid = ?", (app["pid"],))
            if r["kind"] == "file" and name in " ".join(r["args"])
        ]

    seen = wait_for(events, 20, f"the {runtime} /write event")
    assert [(e["blocked"], e.get("detections")) for e in seen] == [(False, None)] * len(seen)
