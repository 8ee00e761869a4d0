"""Facts about a process, read from /proc: the one reader the injector and the agent share.

Reads are cheap (a handful of small files) and race-tolerant: a process can exit between
two reads, so every reader here either returns what it got or raises `ProcessGone`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

PROC = "/proc"
PID_TREE_DEPTH = 12  # as Elkeid's driver: deep enough for shells under servers under init
CMDLINE_CAP = 4096

# Container runtimes name the cgroup after the 64-hex container id:
# docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>, /docker/<id>.
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")


class ProcessError(Exception):
    """A process cannot be read; `reason` is one line for the user."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"pid {pid}: {reason}")
        self.pid = pid
        self.reason = reason


class ProcessGone(ProcessError):
    def __init__(self, pid: int) -> None:
        super().__init__(pid, "no such process")


class ProcessDenied(ProcessError):
    def __init__(self, pid: int, what: str) -> None:
        super().__init__(pid, f"permission denied reading {what}")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    comm: str
    state: str
    #: clock ticks since boot; with the pid it identifies the process across pid reuse
    start_time: int
    exe: str = ""
    cmdline: list[str] = field(default_factory=list)
    uid: int = -1
    euid: int = -1
    gid: int = -1
    egid: int = -1
    #: pid in the innermost pid namespace (equals pid outside containers)
    nspid: int = 0
    container_id: str = ""

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def in_other_pid_ns(self) -> bool:
        return self.nspid != self.pid


def _read(path: str, pid: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        raise ProcessDenied(pid, path) from None


def read_stat(pid: int) -> tuple[str, str, int, int]:
    """(comm, state, ppid, start_time) from /proc/<pid>/stat."""
    raw = _read(f"{PROC}/{pid}/stat", pid)
    # comm may hold spaces and parentheses: it ends at the last ')'.
    lpar, rpar = raw.find(b"("), raw.rfind(b")")
    comm = raw[lpar + 1 : rpar].decode("utf-8", "replace")
    rest = raw[rpar + 2 :].split()
    return comm, rest[0].decode(), int(rest[1]), int(rest[19])


def _status_ids(status: bytes) -> tuple[list[int], list[int], int]:
    uids: list[int] = []
    gids: list[int] = []
    nspid = 0
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            uids = [int(x) for x in line.split()[1:]]
        elif line.startswith(b"Gid:"):
            gids = [int(x) for x in line.split()[1:]]
        elif line.startswith(b"NStgid:"):
            # innermost namespace last; NStgid (not NSpid) because we name processes by tgid
            nspid = int(line.split()[-1])
    return uids, gids, nspid


def read_exe(pid: int) -> str:
    try:
        exe = os.readlink(f"{PROC}/{pid}/exe")
    except FileNotFoundError:
        if not os.path.exists(f"{PROC}/{pid}"):
            raise ProcessGone(pid) from None
        return ""  # kernel thread or zombie: no exe
    except PermissionError:
        raise ProcessDenied(pid, f"{PROC}/{pid}/exe") from None
    return exe.removesuffix(" (deleted)")


def read_cmdline(pid: int) -> list[str]:
    raw = _read(f"{PROC}/{pid}/cmdline", pid)
    if not raw:
        return []
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


def container_id(pid: int) -> str:
    try:
        raw = _read(f"{PROC}/{pid}/cgroup", pid)
    except ProcessError:
        return ""
    found = ""
    for line in raw.decode("utf-8", "replace").splitlines():
        path = line.split(":", 2)[-1]
        for m in _CONTAINER_ID.finditer(path):
            found = m.group(1)
    return found


def read_process(pid: int) -> ProcessInfo:
    """Everything we know about `pid`. Raises ProcessGone / ProcessDenied."""
    if pid <= 0:
        raise ProcessGone(pid)
    comm, state, ppid, start = read_stat(pid)
    uids, gids, nspid = _status_ids(_read(f"{PROC}/{pid}/status", pid))
    try:
        exe = read_exe(pid)
    except ProcessDenied:
        exe = ""
    return ProcessInfo(
        pid=pid,
        ppid=ppid,
        comm=comm,
        state=state,
        start_time=start,
        exe=exe,
        cmdline=read_cmdline(pid),
        uid=uids[0] if uids else -1,
        euid=uids[1] if len(uids) > 1 else -1,
        gid=gids[0] if gids else -1,
        egid=gids[1] if len(gids) > 1 else -1,
        nspid=nspid or pid,
        container_id=container_id(pid),
    )


def start_time(pid: int) -> int:
    return read_stat(pid)[3]


def pid_tree(pid: int, depth: int = PID_TREE_DEPTH) -> str:
    """Ancestry as Elkeid's driver prints it: "pid.comm<ppid.comm<…", innermost first."""
    parts: list[str] = []
    cur = pid
    while cur > 0 and len(parts) < depth:
        try:
            comm, _state, ppid, _start = read_stat(cur)
        except ProcessError:
            break
        parts.append(f"{cur}.{comm}")
        if cur == 1:
            break
        cur = ppid
    return "<".join(parts)


def join_cmdline(argv: list[str], cap: int = CMDLINE_CAP) -> str:
    s = " ".join(argv)
    return s if len(s) <= cap else s[:cap]
