"""The process cache's logic on synthetic driver events (no BPF): exec/fork/exit, pid trees of
processes that are gone, the keep-after-exit window, the bound, and the DNS query parser."""

from __future__ import annotations

import struct
from typing import Any

from driver import events as ev
from host_agent.proccache import NS_PER_TICK, ProcessCache


def event(dt: int, pid: int, ppid: int, comm: str, **kw: Any) -> ev.DriverEvent:
    return ev.DriverEvent(
        data_type=dt,
        ts_ns=0,
        pid=pid,
        tid=pid,
        ppid=ppid,
        pgid=pid,
        sid=pid,
        uid=kw.pop("uid", 1000),
        euid=1000,
        gid=1000,
        pns=1,
        nspid=pid,
        start_time_ns=kw.pop("start_ns", pid * 1000 * NS_PER_TICK),
        cgroup_id=0,
        comm=comm,
        nodename="host",
        args=kw.pop("args", []),
        fields=kw,
    )


# pids far above pid_max, so no /proc entry can answer for them
A, B, C = 90_000_001, 90_000_002, 90_000_003


def chain(cache: ProcessCache) -> None:
    """A (init-like root) → fork B → B execs /usr/bin/sh → fork C → C execs /usr/bin/id."""
    cache.apply(event(ev.DT_EXECVE, A, A, "server", args=["server"], run_path="/srv/server"))
    cache.apply(
        event(ev.DT_FORK, A, A, "server", child_pid=B, child_ppid=A, child_start_time_ns=5 * 10**9)
    )
    cache.apply(event(ev.DT_EXECVE, B, A, "sh", args=["sh", "-c", "id"], run_path="/usr/bin/sh"))
    cache.apply(
        event(ev.DT_FORK, B, A, "sh", child_pid=C, child_ppid=B, child_start_time_ns=6 * 10**9)
    )
    cache.apply(event(ev.DT_EXECVE, C, B, "id", args=["id"], run_path="/usr/bin/id"))


def test_tree_exe_and_cmdline_come_from_events_of_processes_that_are_gone() -> None:
    cache = ProcessCache()
    chain(cache)
    facts = cache.process_fields(C)
    assert facts is not None
    assert facts["pid_tree"] == f"{C}.id<{B}.sh<{A}.server"
    assert facts["exe"] == "/usr/bin/id"  # no /proc entry: the exec's path
    assert facts["cmdline"] == "id" and facts["ppid"] == B and facts["uid"] == 1000
    assert cache.process_fields(90_000_999) is None


def test_fork_copies_the_parent_until_the_child_execs() -> None:
    cache = ProcessCache()
    cache.apply(event(ev.DT_EXECVE, A, 1, "python3", args=["python3", "app.py"], run_path="/p"))
    cache.apply(
        event(ev.DT_FORK, A, 1, "python3", child_pid=B, child_ppid=A, child_start_time_ns=10**9)
    )
    child = cache.get(B)
    assert child is not None
    assert (child.exe, child.argv, child.comm, child.source) == (
        "/p",
        ["python3", "app.py"],
        "python3",
        "fork",
    )
    assert child.start_time == 10**9 // NS_PER_TICK


def test_prctl_renames_in_the_tree() -> None:
    cache = ProcessCache()
    chain(cache)
    cache.apply(event(ev.DT_PRCTL, B, A, "sh", new_name="kworker/0:1"))
    assert cache.pid_tree(C) == f"{C}.id<{B}.kworker/0:1<{A}.server"


def test_exited_entries_stay_for_keep_s_then_go() -> None:
    cache = ProcessCache(keep_s=60)
    chain(cache)
    cache.apply(event(ev.DT_EXIT, C, B, "id", exit_code=0))
    entry = cache.get(C)
    assert entry is not None and entry.exited
    assert cache.sweep(entry.exited + 30) == 0 and cache.get(C) is not None
    assert cache.sweep(entry.exited + 61) == 1 and cache.get(C) is None
    assert cache.get(B) is not None  # alive: never swept


def test_a_reused_pid_is_not_swept_by_its_predecessors_exit() -> None:
    cache = ProcessCache(keep_s=1)
    chain(cache)
    cache.apply(event(ev.DT_EXIT, C, B, "id"))
    gone_at = cache.get(C).exited  # type: ignore[union-attr]
    # the pid comes back as a new process before the sweep
    cache.apply(
        event(ev.DT_EXECVE, C, B, "cat", args=["cat"], run_path="/usr/bin/cat", start_ns=99 * 10**9)
    )
    cache.sweep(gone_at + 5)
    assert cache.get(C) is not None and cache.get(C).comm == "cat"  # type: ignore[union-attr]


def test_bounded_exited_first() -> None:
    cache = ProcessCache(max_entries=3)
    chain(cache)  # A, B, C
    cache.apply(event(ev.DT_EXIT, B, A, "sh"))
    cache.apply(event(ev.DT_EXECVE, 90_000_004, C, "x", args=["x"], run_path="/x"))
    assert len(cache) == 3
    assert cache.get(B) is None  # the exited one went first, though A is older
    assert cache.get(A) is not None
    cache.apply(event(ev.DT_EXECVE, 90_000_005, C, "y", args=["y"], run_path="/y"))
    assert len(cache) == 3 and cache.get(A) is None  # then the least recently updated
    assert cache.evicted == 2


def dns_packet(name: str, qtype: int = 28) -> bytes:
    header = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + q + struct.pack(">HH", qtype, 1)


def test_dns_query_parser() -> None:
    assert ev.dns_query(dns_packet("www.example.com")) == ("www.example.com", 28, 0)
    assert ev.dns_query(dns_packet("a.b")[:-6]) == ("", 0, 0)  # cut in the name
    assert ev.dns_query(b"\0" * 12 + b"\xc0\x0c" + b"\0" * 4) == ("", 0, 0)  # a pointer
    assert ev.dns_query(b"short") == ("", 0, 0)


def test_argv_split() -> None:
    assert ev.split_argv(b"ls\0-l\0/tmp\0") == ["ls", "-l", "/tmp"]
    assert ev.split_argv(b"") == []
