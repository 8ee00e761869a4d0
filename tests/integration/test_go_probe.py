"""The Go probe end to end: real Go processes (static, cgo and stripped builds of
tests/apps/golang/vulnapp, with the machine's Go and with Go 1.19), real uprobes loaded by a
real agent, requests on loopback, events read back from the agent's store with their args and
request context."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from injector.attach import EXIT_FAIL, EXIT_NO_AGENT, EXIT_PROCESS, EXIT_UNSUPPORTED
from rasp.golang.records import decode
from tests.agentproc import RASP_ATTACH, AgentProc, wait_for
from tests.conftest import REPO, GoBuild

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uprobes need root")

BUILDS = {
    "static": {},
    "cgo": {"cgo": True},
    "stripped": {"stripped": True},
    # Debian's Go 1.19 (pclntab 1.18 layout, older struct offsets: DWARF, then the table)
    "go1.19": {"go": "1.19"},
    "go1.19-stripped": {"go": "1.19", "stripped": True},
}


def rasp_attach(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RASP_ATTACH, *args], capture_output=True, text=True, timeout=60)


def start_app(spawn: Any, binary: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = spawn([str(binary)], stdout=subprocess.PIPE, cwd=cwd)
    line = proc.stdout.readline().decode()
    assert line.startswith("listening "), line
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def get(base: str, route: str, **params: str) -> tuple[int, str]:
    url = f"{base}{route}?{urllib.parse.urlencode(params)}" if params else base + route
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def golang_events(agent: AgentProc, hook: str, n: int = 1) -> list[dict[str, Any]]:
    return agent.wait_rows(n, "runtime = 'golang' AND hook = ?", (hook,))


def with_arg(agent: AgentProc, hook: str, first: str) -> list[dict[str, Any]]:
    return [
        e for e in agent.rows("runtime = 'golang' AND hook = ?", (hook,)) if e["args"][0] == first
    ]


def ps_rows(agent: AgentProc) -> dict[int, dict[str, Any]]:
    res = agent.cli("ps", "--json", "--socket", str(agent.socket))
    return {r["pid"]: r for r in (json.loads(x) for x in res.stdout.splitlines() if x.strip())}


def attach(agent: AgentProc, pid: int) -> subprocess.CompletedProcess[str]:
    return rasp_attach("--pid", str(pid), "--socket", str(agent.socket))


@pytest.mark.parametrize("build", list(BUILDS))
def test_attach_events_request_context_detach(
    build: str, go_build: GoBuild, spawn: Any, agent: AgentProc, tmp_path: Path
) -> None:
    binary = go_build("vulnapp", **BUILDS[build])
    proc, base = start_app(spawn, binary, tmp_path)
    assert get(base, "/health") == (200, "ok")

    res = attach(agent, proc.pid)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"attached: pid {proc.pid} golang go1."), res.stdout
    if "go" in BUILDS[build]:
        assert res.stdout.startswith(f"attached: pid {proc.pid} golang go1.19."), res.stdout
    again = attach(agent, proc.pid)
    assert again.returncode == 0 and again.stdout.startswith("already attached"), again.stdout

    rows = ps_rows(agent)
    assert rows[proc.pid]["runtime"] == "golang"
    assert rows[proc.pid]["state"] == "attached" and rows[proc.pid]["hooks"] >= 10

    (tmp_path / "report.txt").write_text("quarterly\n")
    port = closed_port()
    assert get(base, "/exec", cmd="echo go-probe-marker")[0] == 200
    assert get(base, "/read", path="report.txt") == (200, "quarterly\n")
    assert get(base, "/sql", name="alice' OR '1'='1")[0] == 200
    assert get(base, "/sqlexec", name="bob", via="tx")[0] == 200
    assert get(base, "/connect", host="127.0.0.1", port=str(port))[0] == 500  # refused
    assert get(base, "/write", path=str(tmp_path / "w.txt"), data="x")[0] == 200

    (ex,) = golang_events(agent, "os/exec.(*Cmd).Start")
    assert ex["kind"] == "process" and ex["pid"] == proc.pid
    assert ex["args"][1:] == ["-c", "echo go-probe-marker"] and ex["args"][0].endswith("/sh")
    req = ex["request"]
    assert req["method"] == "GET" and "/exec?cmd=echo+go-probe-marker" in req["url"]
    assert req["params"] == {"cmd": ["echo go-probe-marker"]}
    assert req["remote_addr"].startswith("127.0.0.1:")
    assert ex["runtime_version"].startswith("go1.") and ex["process"]["exe"] == str(binary)

    rd = wait_for(lambda: with_arg(agent, "os.OpenFile", "report.txt"), 15, "the read")
    assert rd[0]["args"][1] == "O_RDONLY" and "/read?" in rd[0]["request"]["url"]

    (sq,) = golang_events(agent, "database/sql.(*DB).QueryContext")
    assert sq["kind"] == "sql"
    assert sq["args"] == ["SELECT id FROM users WHERE name = 'alice' OR '1'='1'"]
    assert sq["request"]["params"] == {"name": ["alice' OR '1'='1"]}
    assert any(d["rule"] == "sqli.input" for d in sq.get("detections", []))
    res = agent.cli("events", "--store", str(agent.store), "--json", "--runtime", "golang")
    listed = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    assert any(e["hook"] == "database/sql.(*DB).QueryContext" for e in listed), res.stdout[-500:]
    (tx,) = golang_events(agent, "database/sql.(*Tx).ExecContext")
    assert tx["args"] == ["UPDATE users SET seen = 1 WHERE name = 'bob'"]

    (dial,) = golang_events(agent, "net.(*Dialer).DialContext")
    assert dial["kind"] == "network" and dial["args"] == ["127.0.0.1", str(port), "tcp"]
    assert dial["request"]["params"]["port"] == [str(port)]

    (ren,) = golang_events(agent, "os.Rename")
    assert ren["args"] == [str(tmp_path / "w.txt"), str(tmp_path / "w.txt.1")]
    wait_for(lambda: with_arg(agent, "os.Remove", str(tmp_path / "w.txt.1")), 15, "the remove")

    # a request's context does not leak into the next one on the same goroutine
    assert get(base, "/read", path="report.txt")[0] == 200
    reads = wait_for(
        lambda: len(r := with_arg(agent, "os.OpenFile", "report.txt")) >= 2 and r, 15, "2 reads"
    )
    # each carries its own request (urllib opens a connection per request: another port)
    assert reads[0]["request"]["remote_addr"] != reads[1]["request"]["remote_addr"]

    # the app keeps serving under the probe
    codes = [get(base, "/health")[0] for _ in range(300)]
    assert codes == [200] * 300

    res = rasp_attach("--pid", str(proc.pid), "--socket", str(agent.socket), "--detach")
    assert res.returncode == 0, res.stderr
    before = len(agent.rows("runtime = 'golang'"))
    assert get(base, "/exec", cmd="echo after-detach")[0] == 200
    assert get(base, "/health")[0] == 200
    agent.control("stats")  # a round trip through the agent's loop
    assert not [e for e in agent.rows("runtime = 'golang'")[before:] if "after-detach" in
                json.dumps(e)]  # fmt: skip
    assert proc.poll() is None


def _keepalive_get(conn: http.client.HTTPConnection, route: str) -> tuple[int, str]:
    conn.request("GET", route)
    r = conn.getresponse()
    return r.status, r.read().decode()


@pytest.mark.parametrize("build", ["static", "go1.19-stripped"])
def test_no_stale_request_context(
    build: str, go_build: GoBuild, spawn: Any, agent: AgentProc, tmp_path: Path
) -> None:
    """One uprobe hit per request (ServeHTTP), nothing at its end: a sink that runs on the
    connection's goroutine after its request (a Server.ConnState hook, between keep-alive
    requests) or on a goroutine the handler starts (possibly on a recycled g struct) carries
    no request, and each request on a keep-alive connection carries its own. go1.19-stripped:
    the liveness check's offsets come from the table there."""
    idle = tmp_path / "idle-marker"
    proc = spawn([str(go_build("vulnapp", **BUILDS[build])), "-idle-remove", str(idle)],
                 stdout=subprocess.PIPE, cwd=tmp_path)  # fmt: skip
    line = proc.stdout.readline().decode()
    port = int(line.split()[1])
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    res = attach(agent, proc.pid)
    assert res.returncode == 0, res.stderr
    row = agent.control("golang.attach", pid=proc.pid)  # again: the agent's row
    assert row["offsets"] == ("table go1.19" if "19" in build else "dwarf"), row
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        assert _keepalive_get(conn, "/read?path=a.txt") == (200, "a")
        assert _keepalive_get(conn, "/health") == (200, "ok")
        for i in range(5):
            # fresh connections that close: their goroutines exit and free their g structs,
            # which the goroutine /spawn starts often gets (seen: without the liveness check
            # a spawned goroutine's remove carried a finished /health request)
            for _ in range(5):
                assert get(f"http://127.0.0.1:{port}", "/health") == (200, "ok")
            spawned = tmp_path / f"spawned-{i}"
            assert _keepalive_get(conn, f"/spawn?path={spawned}") == (200, "spawned")
        assert _keepalive_get(conn, "/read?path=b.txt") == (200, "b")
    finally:
        conn.close()
    reads = wait_for(
        lambda: len(r := [e for e in agent.rows("runtime = 'golang' AND hook = 'os.OpenFile'")
                          if e["args"][0] in ("a.txt", "b.txt")]) >= 2 and r,
        15, "the two reads",
    )  # fmt: skip
    by_file = {e["args"][0]: e["request"] for e in reads}
    assert by_file["a.txt"]["params"] == {"path": ["a.txt"]}
    assert by_file["b.txt"]["params"] == {"path": ["b.txt"]}  # its own, on the same goroutine
    assert by_file["a.txt"]["remote_addr"] == by_file["b.txt"]["remote_addr"]  # keep-alive
    # the ConnState hook ran after each of the 8 keep-alive requests (urllib's close theirs)
    idles = wait_for(lambda: len(r := with_arg(agent, "os.Remove", str(idle))) >= 8 and r, 15,
                     "the idle hooks' removes")  # fmt: skip
    assert [e for e in idles if e["request"]] == []
    for i in range(5):
        path = str(tmp_path / f"spawned-{i}")
        (spawned,) = wait_for(lambda p=path: with_arg(agent, "os.Remove", p), 15,
                              "the spawned goroutine's remove")  # fmt: skip
        assert spawned["request"] is None, (i, spawned["request"])
    assert proc.poll() is None


def test_exit_is_cleaned_up(go_build: GoBuild, spawn: Any, agent: AgentProc, tmp_path: Path):
    proc, _ = start_app(spawn, go_build("vulnapp"), tmp_path)
    assert attach(agent, proc.pid).returncode == 0
    proc.kill()
    proc.wait()

    def state() -> str:
        return str(ps_rows(agent).get(proc.pid, {}).get("state", ""))

    wait_for(lambda: state() == "exited", 15, "the Go probe to notice the exit")
    assert agent.control("stats")["golang"]["attached"] == []


def test_bad_input(go_build: GoBuild, spawn: Any, agent: AgentProc, tmp_path: Path) -> None:
    # not Go
    p = spawn(["sleep", "100"])
    res = rasp_attach("--pid", str(p.pid), "--socket", str(agent.socket), "--runtime", "golang")
    assert res.returncode == EXIT_UNSUPPORTED and len(res.stderr.splitlines()) == 1
    # dead pid
    res = attach(agent, 2**22 + 4321)
    assert res.returncode == EXIT_PROCESS and "no such process" in res.stderr
    # Go older than 1.17: the same binary with its build info saying go1.16 (same length)
    old = tmp_path / "vulnapp-go116"
    data = bytearray(go_build("vulnapp").read_bytes())
    at = data.index(b"\xff Go buildinf:") + 33  # the inline version string (after its length)
    assert data[at : at + 4] == b"go1." and data[at + 4 : at + 6].isdigit()
    data[at + 4 : at + 6] = b"16"  # go1.26.8 -> go1.16.8
    old.write_bytes(bytes(data))
    old.chmod(0o755)
    op, _ = start_app(spawn, old, tmp_path)
    res = attach(agent, op.pid)
    assert res.returncode == EXIT_FAIL, res.stdout
    assert "needs Go >= 1.17" in res.stderr and len(res.stderr.splitlines()) == 1
    assert op.poll() is None
    # a Go binary without the hooked functions (the sleeper: no net/http, no os/exec)
    sp = spawn([str(go_build("sleeper"))], stdout=subprocess.PIPE)
    sp.stdout.readline()
    res = attach(agent, sp.pid)
    if res.returncode == 0:
        assert "not in the binary: " in res.stdout and "os/exec.(*Cmd).Start" in res.stdout
    else:
        assert "none of the hooked Go functions" in res.stderr
    # no agent
    res = rasp_attach("--pid", str(op.pid), "--socket", str(tmp_path / "none.sock"))
    assert res.returncode == EXIT_NO_AGENT
    assert agent.alive()


def test_no_bpf_clear_errors(tmp_path: Path) -> None:
    """Without the BPF object, and without privileges: one line each, before anything loads."""
    from rasp.golang.uprobes import GoProbeError, GoUprobes

    with pytest.raises(GoProbeError, match=r"BPF object .*missing\.o not found: build it"):
        GoUprobes(object_path=tmp_path / "missing.o").load()
    code = (
        "from rasp.golang.uprobes import GoUprobes, GoProbeError\n"
        "try:\n    GoUprobes().load()\nexcept GoProbeError as e:\n    print(e)\n"
    )
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", code],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert res.stdout.strip() == (
        "eBPF unavailable: needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
    ), res.stderr


def test_listeners_and_detach_of_unknown_pid(go_build: GoBuild, spawn: Any, tmp_path: Path):
    """GoProbes.on_attached / on_detached (where kernel-side enforcement joins) are called with
    the pid; a listener that raises does not break attach. The process and the uprobes are
    real; the agent around GoProbes is reduced to the three attributes it uses."""
    from host_agent.goprobes import GoProbes
    from host_agent.registry import Registry
    from host_agent.server import ControlFailure

    proc, base = start_app(spawn, go_build("vulnapp"), tmp_path)
    submitted: list[Any] = []
    agent = SimpleNamespace(
        registry=Registry(),
        pipeline=SimpleNamespace(submit=lambda rec, trace: submitted.append(trace)),
        driver=None,
    )
    probes = GoProbes(agent)  # type: ignore[arg-type]
    calls: list[tuple[str, int]] = []

    def broken(pid: int) -> None:
        raise RuntimeError("listener bug")

    probes.on_attached += [broken, lambda pid: calls.append(("attached", pid))]
    probes.on_detached.append(lambda pid: calls.append(("detached", pid)))

    async def run() -> None:
        row = await probes.attach(proc.pid)
        assert row["already"] is False and agent.registry.probes[proc.pid].runtime == "golang"
        assert (await probes.attach(proc.pid))["already"] is True
        await asyncio.to_thread(get, base, "/sql", name="listener")
        probes.detach(proc.pid)  # drains what was recorded before removing the uprobes
        with pytest.raises(ControlFailure, match="no Go probe attached"):
            probes.detach(proc.pid)
        probes.stop()

    asyncio.run(run())
    assert calls == [("attached", proc.pid), ("detached", proc.pid)]
    assert [t.data.hook for t in submitted] == ["database/sql.(*DB).QueryContext"]
    assert submitted[0].data.request.params == {"name": ["listener"]}


def test_block_mode_from_the_kernel(
    go_build: GoBuild, spawn: Any, agent_factory: Any, tmp_path: Path
) -> None:
    """Block mode for Go (issue 10): `rasp-attach` puts the Go app under the kernel policy
    (kernel_enforce defaults to golang). Its `sh -c` is killed before it runs and its connect
    to a denied loopback destination fails with EPERM; the same calls from an identical,
    unattached app go through. Loopback only: 127.0.0.78 is the test's own listener."""
    listener = socket.socket()
    listener.bind(("127.0.0.78", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    a = agent_factory(env={"RAMPART_ENFORCE": "auto"})
    a.policy.write_text(
        "policies:\n"
        "  - id: go-no-shell\n    kind: process\n    action: block\n"
        "    match: {name: [sh, dash, bash]}\n"
        "  - id: go-no-internal\n    kind: network\n    action: block\n"
        f"    match: {{dest: [127.0.0.78/32], port: [{port}]}}\n"
    )
    a.start()
    try:
        if a.control("enforce.status")["mechanism"] == "off":
            pytest.skip(f"no kernel enforcement here: {a.control('enforce.status')}")
        binary = go_build("vulnapp")
        protected, base = start_app(spawn, binary, tmp_path)
        _other, other_base = start_app(spawn, binary, tmp_path)
        res = attach(a, protected.pid)
        assert res.returncode == 0, res.stderr
        rows = a.control("enforce.status")["processes"]
        assert [(r["pid"], r["runtime"], r["explicit"]) for r in rows] == [
            (protected.pid, "golang", False)
        ]

        marker = tmp_path / "shell-ran"
        code, body = get(base, "/exec", cmd=f"touch {marker}")
        assert code == 500 and "signal: killed" in body, (code, body)
        assert not marker.exists()  # killed before the new image ran an instruction
        code, body = get(base, "/connect", host="127.0.0.78", port=str(port))
        assert code == 500 and "operation not permitted" in body, (code, body)
        # the protected app keeps serving
        assert get(base, "/health") == (200, "ok")

        # an identical, unattached app is untouched
        assert get(other_base, "/exec", cmd=f"touch {marker}")[0] == 200
        assert marker.exists()
        assert get(other_base, "/connect", host="127.0.0.78", port=str(port)) == (
            200,
            "connected",
        )

        blocks = a.wait_rows(2, "pid = ? AND blocked = 1", (protected.pid,))
        by_policy = {e["policy_id"]: e for e in blocks}
        assert set(by_policy) == {"go-no-shell", "go-no-internal"}, blocks
        assert all(e["runtime"] == "golang" for e in blocks)
        assert by_policy["go-no-internal"]["hook"] == "kernel.connect"
        # detach takes the app out of kernel policy
        assert attach(a, protected.pid).stdout.startswith("already attached")
        res = rasp_attach("--pid", str(protected.pid), "--socket", str(a.socket), "--detach")
        assert res.returncode == 0, res.stderr
        assert a.control("enforce.status")["processes"] == []
        assert get(base, "/connect", host="127.0.0.78", port=str(port)) == (200, "connected")
    finally:
        listener.close()


def test_storm_every_record_accounted(go_build: GoBuild, spawn: Any, tmp_path: Path) -> None:
    """A storm of sink records (60,000 os.Remove calls in one request, ~38 MB of records
    into a 4 MiB ring, no wakeup per record): every record is either read or counted as a
    ring drop, none vanishes. The reader is the probe's own (GoUprobes in this process), the
    program the real os.Remove one, attached alone with GoUprobes.attach_program."""
    from rasp.golang import offsets as field_offsets
    from rasp.golang import symbols
    from rasp.golang.hooks import ALL_SYMBOLS
    from rasp.golang.uprobes import GoUprobes

    binary = go_build("vulnapp")
    proc, base = start_app(spawn, binary, tmp_path)
    b = symbols.inspect(binary, ALL_SYMBOLS)
    fields = field_offsets.resolve(str(binary), 26, b.has_dwarf).values
    up = GoUprobes()
    up.load()
    try:
        up.attach_program(proc.pid, str(binary), "go_path1", b.offsets["os.Remove"], fields)
        n = 60_000
        assert get(base, "/spin", n=str(n))[0] == 200
        wait_for(lambda: up.received + up.kernel_drops() >= n, 20, "the reader to catch up")
        # n, or a few more: a call that has to grow the goroutine's stack re-enters os.Remove
        # from morestack and is probed twice (docs/go-probe.md, "Probe point")
        total = up.received + up.kernel_drops()
        assert n <= total <= n + 20, (up.received, up.kernel_drops())
        assert up.received > 0 and up.malformed == 0
        records = up.take()
        assert len(records) == up.received
        assert {decode(r)[1][0] for r in records} == {"/nonexistent/rampart-spin"}
        up.detach(proc.pid)
        assert get(base, "/spin", n="100")[0] == 200  # detached: nothing more arrives
        up.flush()
        assert up.received + up.kernel_drops() == total
    finally:
        up.stop()
    assert proc.poll() is None
