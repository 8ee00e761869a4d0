"""Host rules over driver events (pure logic: events as the driver stores them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from host_agent.detectors import Detectors


def _exec(pid: int, exe: str, ppid: int, args: list[str]) -> dict:
    return {
        "pid": pid,
        "data_type": 59,
        "hook": "sched_process_exec",
        "args": args,
        "process": {"exe": exe, "ppid": ppid},
        "driver": {"ppid": ppid, "run_path": exe},
    }


def parents(table: dict[int, str]):
    return lambda pid: {"exe": table[pid]} if pid in table else None


def rules(event: dict, lookup=lambda _p: None) -> list[str]:
    return [f.rule for f in Detectors().check_host(event, lookup)]


def test_shell_started_by_a_runtime_or_web_server() -> None:
    ev = _exec(2**22 + 1, "/usr/bin/dash", 100, ["sh", "-c", "id"])
    assert rules(ev, parents({100: "/usr/bin/python3.11"})) == ["host.shell-from-runtime"]
    assert rules(ev, parents({100: "/usr/sbin/nginx"})) == ["host.shell-from-runtime"]
    assert rules(ev, parents({100: "/usr/lib/jvm/java-17/bin/java"})) == ["host.shell-from-runtime"]
    # a shell from a terminal or cron is not it
    assert rules(ev, parents({100: "/usr/bin/bash"})) == []
    assert rules(ev, parents({})) == []
    # a runtime starting a non-shell program is not it either
    assert (
        rules(_exec(2**22 + 1, "/usr/bin/git", 100, ["git"]), parents({100: "/usr/bin/node"})) == []
    )


def test_reverse_shell_is_a_shell_with_a_socket_for_stdio() -> None:
    a, b = socket.socketpair()
    try:
        p = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=a, stdout=a)
        try:
            ev = _exec(p.pid, "/usr/bin/dash", os.getpid(), ["/bin/sh", "-c", "read x"])
            assert "host.reverse-shell" in rules(ev)
        finally:
            b.sendall(b"done\n")
            p.wait(10)
    finally:
        a.close()
        b.close()
    # the same shell on pipes is not one
    p = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert rules(_exec(p.pid, "/usr/bin/dash", 1, ["/bin/sh"])) == []
    finally:
        p.communicate(b"x\n", timeout=10)


def test_memfd_exec_ptrace_module_and_privilege() -> None:
    assert rules(_exec(5, "/memfd:payload (deleted)", 1, ["x"])) == ["host.memfd-exec"]
    ptrace = {"pid": 10, "data_type": 101, "hook": "ptrace", "args": [],
              "driver": {"target_pid": 11, "ptrace_request_name": "PTRACE_ATTACH"}}  # fmt: skip
    assert rules(ptrace) == ["host.ptrace"]
    ptrace["driver"]["ptrace_request_name"] = "PTRACE_TRACEME"
    assert rules(ptrace) == []
    module = {"pid": 10, "data_type": 603, "hook": "finit_module", "args": ["x.ko"],
              "driver": {"ko_file": "/tmp/x.ko"}}  # fmt: skip
    assert rules(module) == ["host.module-load"]
    cred = {"pid": 10, "data_type": 604, "hook": "setuid", "args": [], "driver": {"old_uid": 1000}}
    assert rules(cred) == ["host.privilege-escalation"]
    assert rules({"pid": 10, "data_type": 42, "hook": "connect", "args": [], "driver": {}}) == []


def test_interpreter_is_not_taken_for_a_shell() -> None:
    ev = _exec(2**22 + 2, sys.executable, 100, ["python3", "-c", "1"])
    assert rules(ev, parents({100: "/usr/bin/python3"})) == []
