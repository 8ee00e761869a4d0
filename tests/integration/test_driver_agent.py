"""The driver inside the real agent: host events in the store, the process cache joined to
RASP events of processes that are already gone, the fallback when the driver cannot load."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rasp.protocol.client import control
from tests.agentproc import REPO, AgentProc, wait_for
from tests.integration.pyprobe import APPS, children, get, rasp_attach

pytestmark = pytest.mark.integration

PY = "/usr/bin/python3"
VICTIM = str(REPO / "tests" / "apps" / "driver" / "victim.py")
MY_COMM = Path("/proc/self/comm").read_text().strip()


def driver_agent(
    agent_factory: Callable[..., AgentProc], mode: str = "on", **env: str
) -> AgentProc:
    return agent_factory(env=env, args=["--driver", mode])


def test_host_events_are_stored_with_the_process_tree(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = driver_agent(agent_factory).start()
    me = os.getpid()
    # a command that lives long enough for the agent to read its cwd
    subprocess.run(
        ["/bin/sh", "-c", "/bin/echo rampart-agent-marker; sleep 1"],
        capture_output=True,
        check=True,
        cwd="/tmp",
    )
    rows = agent.wait_rows(
        1, "runtime = 'kernel' AND json_extract(event, '$.args[1]') = 'rampart-agent-marker'"
    )
    e = rows[0]
    pid = e["pid"]
    assert e["kind"] == "process" and e["hook"] == "sched_process_exec"
    assert e["data_type"] == 59 and e["source"] == "driver" and e["event"] == "execve"
    assert e["args"] == ["/bin/echo", "rampart-agent-marker"]
    d = e["driver"]
    sh = d["ppid"]
    assert d["pid"] == d["tgid"] == pid and d["comm"] == "echo"
    assert d["exe"] == os.path.realpath("/bin/echo") and d["run_path"] == "/bin/echo"
    assert d["nodename"] == os.uname().nodename
    proc = e["process"]
    assert proc["pid_tree"].startswith(f"{pid}.echo<{sh}.sh<{me}.{MY_COMM}<")
    assert proc["exe"] == os.path.realpath("/bin/echo")
    assert proc["cmdline"] == "/bin/echo rampart-agent-marker"
    assert proc["ppid"] == sh and proc["container_id"] == ""
    (shell,) = agent.wait_rows(
        1, "runtime = 'kernel' AND pid = ? AND hook = ?", (sh, "sched_process_exec")
    )
    assert shell["driver"]["cwd"] == "/tmp" and shell["driver"]["ppid"] == me

    # a connect to a loopback port we listen on: stored as kind network
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        subprocess.run([PY, VICTIM, "connect", "127.0.0.1", str(port)], check=True)
        (c,) = agent.wait_rows(
            1, "kind = 'network' AND json_extract(event, '$.driver.dport') = ?", (port,)
        )
    assert c["hook"] == "connect" and c["data_type"] == 42 and c["args"] == ["127.0.0.1", str(port)]
    assert c["process"]["cmdline"].startswith(f"{PY} {VICTIM} connect")

    # fork and exit feed the cache but are not stored by default
    assert agent.rows("json_extract(event, '$.data_type') IN (57, 60)") == []

    # the CLI shows them with --runtime kernel
    res = agent.cli(
        "events",
        "--store",
        str(agent.store),
        "--runtime",
        "kernel",
        "--json",
        "--kind",
        "network",
        "--limit",
        "1000",
    )
    assert res.returncode == 0, res.stderr
    assert any(json.loads(x)["driver"].get("dport") == port for x in res.stdout.splitlines())


def test_policies_apply_to_host_events(agent_factory: Callable[..., AgentProc]) -> None:
    agent = driver_agent(agent_factory)
    agent.policy.write_text(
        "policies:\n"
        "  - {id: memfd-seen, kind: file, hook: memfd_create, action: alert}\n"
        "  - {id: quiet-echo, kind: process, match: {args: rampart-ignored}, action: ignore}\n"
    )
    agent.start()
    subprocess.run([PY, VICTIM, "memfd", "rampart-policy"], check=True)
    subprocess.run(["/bin/echo", "rampart-ignored"], capture_output=True, check=True)
    subprocess.run(["/bin/echo", "rampart-kept"], capture_output=True, check=True)
    (m,) = agent.wait_rows(
        1, "hook = 'memfd_create' AND json_extract(event, '$.args[0]') = ?", ("rampart-policy",)
    )
    assert m["alerts"] == ["memfd-seen"] and m["runtime"] == "kernel"
    agent.wait_rows(1, "json_extract(event, '$.args[1]') = 'rampart-kept'")
    assert agent.rows("json_extract(event, '$.args[1]') = 'rampart-ignored'") == []


def _sdk_victim_while_agent_is_stopped(agent: AgentProc, marker: str) -> int:
    """Run an SDK probe that sends hello + one trace and exits, and reap it, all while the
    agent is stopped: when the agent reads the hello, the process is gone from /proc."""
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        p = subprocess.Popen([PY, VICTIM, "sdk", str(agent.socket), marker])
        p.wait(30)
        assert p.returncode == 0
        assert not Path(f"/proc/{p.pid}").exists()
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    return p.pid


def test_event_of_a_process_already_gone_is_enriched_from_the_cache(
    agent_factory: Callable[..., AgentProc],
) -> None:
    agent = driver_agent(agent_factory).start()
    me = os.getpid()
    pid = _sdk_victim_while_agent_is_stopped(agent, "rampart-join")
    (e,) = agent.wait_rows(1, "runtime = 'python' AND pid = ?", (pid,))
    assert e["args"] == ["rampart-join"]
    proc = e["process"]
    assert proc["exe"] == os.path.realpath(PY)
    assert proc["cmdline"] == f"{PY} {VICTIM} sdk {agent.socket} rampart-join"
    assert proc["pid_tree"].startswith(f"{pid}.python3<{me}.{MY_COMM}<")
    assert proc["ppid"] == me and proc["uid"] == os.getuid()


def test_without_the_driver_such_a_process_cannot_be_told(
    agent_factory: Callable[..., AgentProc],
) -> None:
    # the contrast: /proc alone knows nothing of a process that is gone
    agent = agent_factory(args=["--no-driver"]).start()
    pid = _sdk_victim_while_agent_is_stopped(agent, "rampart-nojoin")
    wait_for(lambda: "cannot read the peer process" in agent.log_text(), 10, "the refusal")
    assert agent.rows("pid = ?", (pid,)) == []


def test_fallback_when_the_driver_cannot_load(
    agent_factory: Callable[..., AgentProc], tmp_path: Path, spawn: Any
) -> None:
    missing = str(tmp_path / "missing.bpf.o")
    agent = driver_agent(agent_factory, "auto", RAMPART_DRIVER_OBJECT=missing).start()
    log = agent.log_text()
    assert f"driver not started: BPF object {missing} not found" in log
    assert "exec/fork/exit from the proc connector" in log
    status = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
    # as root, fanotify runs beside it (tests/integration/test_driver_fanotify.py)
    assert status["driver"]["mode"] == "proc-connector+fanotify"
    assert "not found" in status["driver"]["reason"]
    # exec events still reach the store (fewer fields: read from /proc when they arrive)
    victim = spawn(["/bin/sleep", "30"])
    (e,) = agent.wait_rows(
        1, "runtime = 'kernel' AND pid = ? AND hook = 'proc_connector'", (victim.pid,)
    )
    assert e["data_type"] == 59
    assert e["args"] == ["/bin/sleep", "30"]
    assert e["process"]["pid_tree"].startswith(f"{victim.pid}.sleep<{os.getpid()}.")
    # probes still work
    with agent.probe(runtime="python") as p:
        p.hello()
        p.trace("os.system", "process", ["fallback"])
        (t,) = agent.wait_rows(1, "runtime = 'python'")
    assert t["process"]["pid_tree"].startswith(f"{os.getpid()}.")

    # `--driver on` refuses to start without it, with the reason
    strict = driver_agent(agent_factory, "on", RAMPART_DRIVER_OBJECT=missing)
    strict.start(wait=False)
    assert strict.proc is not None
    assert strict.proc.wait(30) == 1
    assert f"cannot start: BPF object {missing} not found" in strict.log_text()


def test_agent_not_root_falls_back_and_says_why() -> None:
    """The real agent as uid 65534: no BPF; one log line says why and what it does instead."""
    with tempfile.TemporaryDirectory(prefix="rampart-nobody-") as d:
        os.chown(d, 65534, 65534)
        _run_as_nobody(Path(d))


def _run_as_nobody(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPART_")}
    cmd = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        sys.executable, "-m", "host_agent.cli", "run",
        "--socket", str(home / "s.sock"), "--store", str(home / "e.db"),
    ]  # fmt: skip
    agent = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        wait_for(lambda: _pings(home / "s.sock"), 20, "the agent to answer")
    finally:
        agent.send_signal(signal.SIGTERM)
        err = agent.communicate(timeout=30)[1]
    assert agent.returncode == 0, err
    (line,) = [x for x in err.splitlines() if "driver not started" in x]
    assert "needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)" in line
    # this kernel lets an unprivileged process listen to the proc connector; older ones
    # refuse (CAP_NET_ADMIN), and the agent then runs on /proc alone
    assert "exec/fork/exit from the proc connector" in line or "process facts from /proc" in line
    if "proc connector" in line:  # fanotify needs CAP_SYS_ADMIN: refused, said in that line
        assert "fanotify refused (needs CAP_SYS_ADMIN): no exec paths, no file writes" in line


def _pings(sock: Path) -> bool:
    try:
        control(sock, "ping", timeout=1)
        return True
    except Exception:
        return False


def _loaded_dispatchers() -> int:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    return sum(1 for p in json.loads(out.stdout or "[]") if p.get("name") == "rp_sys_enter")


def test_status_and_ps_report_the_driver_and_stop_detaches(
    agent_factory: Callable[..., AgentProc],
) -> None:
    before = _loaded_dispatchers()
    agent = driver_agent(agent_factory).start()
    assert _loaded_dispatchers() == before + 1
    status = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
    d = status["driver"]
    assert d["mode"] == "ebpf" and d["programs"] >= 10 and d["failed"] == {}
    assert d["kernel_drops"] == 0 and d["cache"]["entries"] > 10
    ps = agent.cli("ps", "--socket", str(agent.socket))
    assert "driver: ebpf" in ps.stdout
    assert agent.stop() == 0
    # the kernel frees a program once its last link and fd are gone (after an RCU grace)
    wait_for(lambda: _loaded_dispatchers() == before, 10, "the programs to be unloaded")
    assert "driver stopped" in agent.log_text()


def test_rasp_event_of_a_live_attached_python_app_carries_its_pid_tree(
    agent_factory: Callable[..., AgentProc], spawn: Any, tmp_path: Path
) -> None:
    """The join the driver exists for: a real CPython app, attached live with rasp-attach,
    hits a sink; its RASP event carries the kernel-side ancestry of its process."""
    agent = agent_factory(env={"RAMPART_DRIVER": "on"}).start()
    me = os.getpid()
    app_py = str(APPS / "http_server_app.py")
    # parent (python) -> sh, which execs the app in place: app.python < parent.python < us
    parent_code = (
        "import subprocess, sys; "
        "sh = ['/bin/sh', '-c', 'exec \"$0\" \"$1\"', sys.executable, sys.argv[1]]; "
        "sys.exit(subprocess.Popen(sh).wait())"
    )
    parent = spawn([sys.executable, "-c", parent_code, app_py], stdout=subprocess.PIPE)
    app = 0
    try:
        line = parent.stdout.readline().decode()
        assert line.startswith("ready "), line
        (app,) = children(parent.pid)
        rasp_attach(agent, app)
        target = tmp_path / "note.txt"
        target.write_text("hello")
        assert get(int(line.split()[1]), "/read", path=str(target))[0] == 200
        (e,) = agent.wait_rows(
            1, "runtime = 'python' AND pid = ? AND json_extract(event, '$.args[0]') = ?",
            (app, str(target)),
        )  # fmt: skip
        assert e["hook"] == "open"
        proc = e["process"]
        comm = Path(sys.executable).name[:15]
        assert proc["pid_tree"].startswith(f"{app}.{comm}<{parent.pid}.{comm}<{me}.{MY_COMM}<")
        assert proc["ppid"] == parent.pid
        assert proc["exe"] == os.path.realpath(sys.executable)
        assert proc["cmdline"] == f"{sys.executable} {app_py}"
    finally:
        if app:  # the parent reaps it; killing the parent first would orphan it
            os.kill(app, signal.SIGKILL)
        parent.wait(30)


STORM = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.connect(("127.0.0.1", int(sys.argv[1])))
"""


def test_a_connect_storm_is_stored_whole_as_counted_rows(
    agent_factory: Callable[..., AgentProc],
) -> None:
    """20,000 identical UDP connects: every record reaches the store, as rows that carry how
    many identical records each one stands for; `rasp-agent events` and status show it."""
    agent = driver_agent(agent_factory).start()
    n = 20_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        storm = subprocess.Popen([PY, "-c", STORM, str(port), str(n)])
        assert storm.wait(60) == 0
    where = "pid = ? AND kind = 'network' AND json_extract(event, '$.driver.dport') = ?"

    def total() -> int:
        return sum(r.get("count", 1) for r in agent.rows(where, (storm.pid, port)))

    wait_for(lambda: total() >= n, 60, f"{n} connects accounted for")
    rows = agent.rows(where, (storm.pid, port))
    assert total() == n
    assert len(rows) < n  # storms fold: a batch holds many identical records
    folded = [r for r in rows if r.get("count", 1) > 1]
    assert folded and all(r["last_ts"] >= r["ts"] for r in folded)
    assert all(r["args"] == ["127.0.0.1", str(port)] for r in rows)
    status = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
    d = status["driver"]
    assert d["aggregated"] + d["summarized"] >= n - len(rows) and d["kernel_drops"] == 0
    assert "identical records folded in" in agent.cli("ps", "--socket", str(agent.socket)).stdout
    common = ["--store", str(agent.store), "--pid", str(storm.pid), "--limit", "100000"]
    res = agent.cli("events", *common, "--json")
    assert res.returncode == 0, res.stderr
    shown = [json.loads(x) for x in res.stdout.splitlines()]
    assert sum(e.get("count", 1) for e in shown if e["kind"] == "network") == n
    text = agent.cli("events", *common).stdout
    assert f" x{folded[0]['count']} until " in text
