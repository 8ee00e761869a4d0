"""Kernel enforcement (host_agent/enforce.py) with real BPF programs, a real agent and real
victims: a Python process and a static Go binary, protected by pid, whose connect to a
denied loopback destination fails with EPERM and whose denied commands are killed before
they run, while the same calls from unprotected processes go through.

Loopback only: the denied destination is 127.0.0.77 (a listener of the test's own), so an
unprotected connect really succeeds and a protected one really would have.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent.enforce import DEFAULT_OBJECT, cgroup2_root
from tests.agentproc import AgentProc, wait_for
from tests.integration.pyprobe import rasp_attach

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    pytest.mark.skipif(not DEFAULT_OBJECT.exists(), reason=f"{DEFAULT_OBJECT}: run `make setup`"),
]

REPO = Path(__file__).resolve().parents[2]
VICTIM = REPO / "tests" / "apps" / "enforce" / "victim.py"
DENIED_HOST = "127.0.0.77"


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the denied address: an allowed connect gets through to it."""
    s = socket.socket()
    s.bind((DENIED_HOST, 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


def policy_text(port: int, names: tuple[str, ...] = ("touch",)) -> str:
    return f"""
policies:
  - id: enf-deny-port
    kind: network
    action: block
    match: {{dest: [{DENIED_HOST}/32], port: [{port}]}}
  - id: enf-deny-exec
    kind: process
    action: block
    match: {{name: [{", ".join(repr(n) for n in names)}]}}
"""


class Victim:
    """A line-protocol victim (tests/apps/enforce/victim.py or the Go twin)."""

    def __init__(self, spawn, argv: list[str]) -> None:
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.pid = self.proc.pid

    def ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        assert out, f"victim {self.pid} died (rc {self.proc.poll()})"
        return json.loads(out)


def start_agent(agent_factory, port: int, env: dict[str, str] | None = None) -> AgentProc:
    a = agent_factory(env={"RAMPART_ENFORCE": "auto", **(env or {})})
    a.policy.write_text(policy_text(port))
    a.start()
    st = a.control("enforce.status")
    assert st["mechanism"] != "off", st
    return a


def assert_blocked_calls(v: Victim, tmp_path: Path, port: int) -> None:
    denied = v.ask(f"connect {DENIED_HOST} {port}")
    assert denied["errno"] == 1, denied  # EPERM
    assert v.ask(f"connect {DENIED_HOST} {port + 1 if port < 65535 else port - 1}").get(
        "errno"
    ) in (111, None)  # another port of the same host: not denied (refused or accepted)
    assert v.ask(f"udp {DENIED_HOST} {port}")["errno"] == 1  # sendmsg4 (Go: UDP connect)
    marker = tmp_path / f"ran-{v.pid}"
    killed = v.ask(f"run touch {marker}")
    assert killed == {"rc": -9}, killed  # the child died of SIGKILL...
    assert not marker.exists()  # ...before touch ran
    assert v.ask("run /bin/true") == {"rc": 0}  # an allowed program runs
    # through a shell: sh is allowed, its touch (a grandchild: ancestors are walked) is not
    deep = tmp_path / f"deep-{v.pid}"
    res = v.ask(f"run /bin/sh -c /bin/true;touch${{IFS}}{deep};/bin/true")
    assert res == {"rc": 0}, res  # the shell went on after its child was killed
    assert not deep.exists()


def stored_blocks(a: AgentProc, pid: int, n: int) -> list[dict]:
    return a.wait_rows(n, "pid = ? AND blocked = 1", (pid,))


def test_python_victim_blocked_unprotected_untouched(
    agent_factory, spawn, listener: int, tmp_path: Path
) -> None:
    a = start_agent(agent_factory, listener)
    v = Victim(spawn, [sys.executable, str(VICTIM)])
    other = Victim(spawn, [sys.executable, str(VICTIM)])
    res = a.cli("enforce", "protect", str(v.pid), "--runtime", "python", "--socket", str(a.socket))
    assert res.returncode == 0, res.stderr
    assert "protected" in res.stdout

    assert_blocked_calls(v, tmp_path, listener)

    # the same calls from an unprotected process go through
    assert other.ask(f"connect {DENIED_HOST} {listener}") == {"ok": True}
    marker = tmp_path / "unprotected"
    assert other.ask(f"run touch {marker}") == {"rc": 0}
    assert marker.exists()

    rows = stored_blocks(a, v.pid, 3)
    by_hook = {(r["hook"], r["policy_id"]) for r in rows}
    assert ("kernel.connect", "enf-deny-port") in by_hook
    assert ("kernel.sendmsg", "enf-deny-port") in by_hook
    assert ("kernel.execve", "enf-deny-exec") in by_hook
    for r in rows:
        assert r["blocked"] is True and r["runtime"] == "python" and r["source"] == "enforce"
    conn = next(r for r in rows if r["hook"] == "kernel.connect")
    assert conn["kind"] == "network" and conn["args"] == [f"{DENIED_HOST}:{listener}"]
    ex = next(r for r in rows if r["hook"] == "kernel.execve")
    assert ex["kind"] == "process"
    assert ex["args"][0].endswith("/touch") and ex["args"][1:] == [
        "touch",
        str(f"{tmp_path}/ran-{v.pid}"),
    ]
    assert ex["enforce"]["signal"] == 9 and ex["enforce"]["ppid"] == v.pid
    # nothing was recorded for the unprotected process
    assert a.rows("pid = ? AND blocked = 1", (other.pid,)) == []

    shown = a.cli("events", "--store", str(a.store), "--pid", str(v.pid))
    assert "BLOCKED:enf-deny-port" in shown.stdout and "BLOCKED:enf-deny-exec" in shown.stdout
    st = a.control("stats")["enforce"]
    assert st["blocked"]["connect4"] >= 1 and st["blocked"]["exec_kill"] == 2  # direct, via sh
    assert st["by_policy"]["enf-deny-exec"] == 2
    ps = {r["pid"]: r for r in a.control("ps")}
    assert ps[v.pid]["enforce"] == st["mechanism"]
    assert "enforce: " in a.cli("status", "--socket", str(a.socket)).stdout


def test_go_victim_blocked(agent_factory, spawn, go_build, listener: int, tmp_path: Path) -> None:
    a = start_agent(agent_factory, listener)
    binary = go_build("enforcevictim")
    v = Victim(spawn, [str(binary)])
    other = Victim(spawn, [str(binary)])
    assert a.control("enforce.protect", pid=v.pid, runtime="golang")["runtime"] == "golang"

    assert_blocked_calls(v, tmp_path, listener)
    assert other.ask(f"connect {DENIED_HOST} {listener}") == {"ok": True}

    rows = stored_blocks(a, v.pid, 3)
    assert {r["runtime"] for r in rows} == {"golang"}
    assert {r["policy_id"] for r in rows} == {"enf-deny-port", "enf-deny-exec"}


def test_policy_reload_changes_enforcement(agent_factory, spawn, listener: int, tmp_path) -> None:
    a = start_agent(agent_factory, listener)
    v = Victim(spawn, [sys.executable, str(VICTIM)])
    a.control("enforce.protect", pid=v.pid, runtime="python")
    assert v.ask(f"connect {DENIED_HOST} {listener}")["errno"] == 1
    assert v.ask("run /bin/true") == {"rc": 0}

    # now `true` is denied and the port is not
    a.policy.write_text(policy_text(listener + 1, names=("true",)).replace("enf-", "enf2-"))
    res = a.cli("policy", "reload", "--socket", str(a.socket))
    assert res.returncode == 0, res.stderr
    assert v.ask(f"connect {DENIED_HOST} {listener}") == {"ok": True}
    assert v.ask("run /bin/true") == {"rc": -9}
    row = stored_blocks(a, v.pid, 2)[-1]
    assert row["policy_id"] == "enf2-deny-exec"

    # a policy the kernel cannot enforce for golang is refused, the one in force stays
    a.policy.write_text(
        "policies:\n  - id: go-regex\n    runtime: golang\n    kind: process\n"
        "    action: block\n    match: {args: curl}\n"
    )
    res = a.cli("policy", "reload", "--socket", str(a.socket))
    assert res.returncode != 0
    assert "policy.yaml:2: policies.0" in res.stderr and "kernel" in res.stderr
    assert v.ask("run /bin/true") == {"rc": -9}  # still in force


def test_unprotect_and_exit_restore(agent_factory, spawn, listener: int) -> None:
    a = start_agent(agent_factory, listener)
    v = Victim(spawn, [sys.executable, str(VICTIM)])
    a.control("enforce.protect", pid=v.pid, runtime="python")
    assert v.ask(f"connect {DENIED_HOST} {listener}")["errno"] == 1
    res = a.cli("enforce", "unprotect", str(v.pid), "--socket", str(a.socket))
    assert res.returncode == 0, res.stderr
    assert v.ask(f"connect {DENIED_HOST} {listener}") == {"ok": True}

    a.control("enforce.protect", pid=v.pid, runtime="python")
    assert [p["pid"] for p in a.control("enforce.status")["processes"]] == [v.pid]
    v.proc.kill()
    v.proc.wait()
    # the kernel dropped it at exit (sched_process_exit): a recycled pid is not protected
    wait_for(lambda: a.control("enforce.status")["processes"] == [], 10, "exit cleanup")


def test_attached_runtime_is_protected_until_it_exits(
    agent_factory, spawn, listener: int, tmp_path: Path
) -> None:
    """kernel_enforce lists python: attaching the probe protects the process; its exit
    unprotects it."""
    a = start_agent(agent_factory, listener, env={"RAMPART_KERNEL_ENFORCE": '["python"]'})
    v = Victim(spawn, [sys.executable, str(VICTIM)])
    assert v.ask(f"connect {DENIED_HOST} {listener}") == {"ok": True}  # not yet protected
    rasp_attach(a, v.pid)
    wait_for(lambda: a.control("enforce.status")["processes"], 10, "protection on attach")
    assert v.ask(f"connect {DENIED_HOST} {listener}")["errno"] == 1
    ps = {r["pid"]: r for r in a.control("ps")}
    assert ps[v.pid]["state"] == "connected" and ps[v.pid]["enforce"]
    v.proc.stdin.close()
    v.proc.wait(10)
    wait_for(lambda: a.control("enforce.status")["processes"] == [], 10, "unprotect on exit")


def _cgroup_prog_ids(root: Path) -> set[int]:
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(root)], capture_output=True, text=True, check=True
    ).stdout
    rows = json.loads(out) if out.strip() else []  # bpftool 7.1 prints a bare newline for none
    return {p["id"] for p in rows if p.get("name", "").startswith("rpe_")}


def test_agent_exit_detaches_everything(agent_factory, listener: int) -> None:
    root = cgroup2_root()
    assert root is not None and shutil.which("bpftool")
    # Other agents on the machine (a developer's, another worktree's tests) may have their own
    # programs on the root: ours are the ones that appeared with this agent.
    before = _cgroup_prog_ids(root)
    a = start_agent(agent_factory, listener)
    ours = _cgroup_prog_ids(root) - before
    st = a.control("enforce.status")
    assert st["mechanism"] == "cgroup+tracepoint" and st["cgroup"] == str(root)
    assert len(ours) >= 4, ours  # connect4/6, sendmsg4/6 on the cgroup-v2 root
    assert a.stop() == 0
    assert not ours & _cgroup_prog_ids(root)
    progs = json.loads(
        subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    )
    assert not ours & {p["id"] for p in progs}  # not loaded either
    assert "kernel enforcement stopped" in a.log_text()


def test_off_setting_and_lsm_path(agent_factory, spawn, listener: int) -> None:
    off = agent_factory(env={"RAMPART_ENFORCE": "off"}).start()
    st = off.control("enforce.status")
    assert st["mechanism"] == "off" and "setting" in st["reason"]
    with pytest.raises(Exception, match="kernel enforcement is off"):
        off.control("enforce.protect", pid=os.getpid(), runtime="python")
    off.stop()

    a = agent_factory(env={"RAMPART_ENFORCE": "lsm"})
    a.policy.write_text(policy_text(listener))
    a.start()
    st = a.control("enforce.status")
    if st["mechanism"] == "off":
        assert "BPF LSM refused" in st["reason"]
        pytest.skip(f"BPF LSM programs do not load on this kernel: {st['reason']}")
    assert st["mechanism"] == "lsm"
    v = Victim(spawn, [sys.executable, str(VICTIM)])
    a.control("enforce.protect", pid=v.pid, runtime="python")
    assert v.ask(f"connect {DENIED_HOST} {listener}")["errno"] == 1
    assert v.ask("run touch /nonexistent-rampart-marker")["errno"] == 1  # execve: EPERM
