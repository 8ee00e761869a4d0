"""The process cache: pid → exe, argv, parent, start time, uid, container — fed by the driver.

Built from a /proc scan when the driver starts, then kept current by the driver's exec, fork,
exit and prctl(PR_SET_NAME) events. Entries stay `keep_s` seconds after their process exits,
so an event from a process that is already gone (a short-lived command, a probe that sent
its last frames and exited) is still enriched with its exe, command line and ancestry.
Bounded: past `max_entries`, exited entries go first (oldest exit first), then the least
recently updated. Runs on the agent's event loop thread only (no locks).

Elkeid's `pid_tree` ("pid.comm<ppid.comm<…") is built from the cache's parent links; a link
the cache does not know (a process older than the scan that raced it) is read from /proc
once and cached.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from driver import events as ev
from injector.process import (
    PID_TREE_DEPTH,
    ProcessError,
    container_id,
    join_cmdline,
    read_process,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK


def ns_to_ticks(ns: int) -> int:
    """start_boottime (ns) → the clock ticks /proc/<pid>/stat reports as start_time."""
    return ns // NS_PER_TICK


@dataclass(slots=True)
class ProcEntry:
    pid: int
    ppid: int
    start_time: int  # clock ticks since boot, as /proc/<pid>/stat
    comm: str
    exe: str = ""
    argv: list[str] = field(default_factory=list)
    uid: int = -1
    euid: int = -1
    container_id: str = ""
    nspid: int = 0
    cwd: str = ""  # read from /proc at exec when the process is still there
    exited: float = 0.0  # time.monotonic() of the exit, 0 while alive
    source: str = "proc"  # proc | exec | fork: where the facts came from


class ProcessCache:
    def __init__(self, max_entries: int = 32768, keep_s: float = 60.0) -> None:
        self.max_entries = max_entries
        self.keep_s = keep_s
        self._e: OrderedDict[int, ProcEntry] = OrderedDict()
        self._gone: deque[tuple[float, int, int]] = deque()  # (exit time, pid, start)
        self._containers: dict[int, str] = {}  # cgroup id -> container id
        self.evicted = 0
        self.proc_reads = 0
        #: process_fields() results while nothing in the cache changes: under a storm of
        #: events from a few processes each would otherwise walk the same pid tree again
        self._fields_memo: dict[int, dict[str, Any] | None] = {}
        self._generation = 0
        #: exec path -> realpath, for processes gone before their exec is applied (most
        #: short-lived commands): a few lstat calls each, the same few paths again and again.
        #: Forgotten at every sweep, so a changed symlink is followed within seconds.
        self._realpaths: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._e)

    # ------------------------------------------------------------------ filling

    def scan(self) -> int:
        """Add every process in /proc (those already known are refreshed)."""
        n = 0
        for name in os.listdir("/proc"):
            if name.isdigit() and self._from_proc(int(name)) is not None:
                n += 1
        return n

    def _from_proc(self, pid: int) -> ProcEntry | None:
        self.proc_reads += 1
        try:
            info = read_process(pid)
        except ProcessError:
            return None
        e = ProcEntry(
            pid=pid,
            ppid=info.ppid,
            start_time=info.start_time,
            comm=info.comm,
            exe=info.exe,
            argv=info.cmdline,
            uid=info.uid,
            euid=info.euid,
            container_id=info.container_id,
            nspid=info.nspid,
        )
        self._put(e)
        return e

    @property
    def generation(self) -> int:
        """Changes whenever anything in the cache does (memos of what it says key on it)."""
        return self._generation

    def changed(self) -> None:
        """Something in an entry changed (also for whoever edits an entry in place)."""
        self._fields_memo.clear()
        self._generation += 1

    def _put(self, e: ProcEntry) -> None:
        self.changed()
        self._e[e.pid] = e
        self._e.move_to_end(e.pid)
        while len(self._e) > self.max_entries:
            self._evict_one()

    def _evict_one(self) -> None:
        while self._gone:
            _t, pid, start = self._gone.popleft()
            old = self._e.get(pid)
            if old is not None and old.exited and old.start_time == start:
                del self._e[pid]
                self.evicted += 1
                return
        self.changed()
        self._e.popitem(last=False)
        self.evicted += 1

    def sweep(self, now: float | None = None) -> int:
        """Forget processes that exited more than keep_s ago."""
        now = time.monotonic() if now is None else now
        self._realpaths.clear()
        n = 0
        while self._gone and now - self._gone[0][0] > self.keep_s:
            _t, pid, start = self._gone.popleft()
            old = self._e.get(pid)
            if old is not None and old.exited and old.start_time == start:
                del self._e[pid]
                n += 1
        if n:
            self.changed()
        return n

    def _container(self, pid: int, cgroup_id: int, parent: ProcEntry | None) -> str:
        if cgroup_id in self._containers:
            return self._containers[cgroup_id]
        if os.path.exists(f"/proc/{pid}"):
            cid = container_id(pid)
            self._containers[cgroup_id] = cid
            if len(self._containers) > self.max_entries:
                self._containers.pop(next(iter(self._containers)))
            return cid
        return parent.container_id if parent else ""

    def apply(self, e: ev.DriverEvent) -> ProcEntry | None:
        """Update the cache from one driver event; returns the entry of the event's process."""
        dt = e.data_type
        if dt == ev.DT_EXECVE:
            return self._exec(e)
        if dt == ev.DT_FORK:
            self._fork(e)
            return self._e.get(e.pid)
        if dt == ev.DT_EXIT:
            cur = self._e.get(e.pid)
            if cur is not None and not cur.exited:
                self.changed()
                cur.exited = time.monotonic()
                self._gone.append((cur.exited, cur.pid, cur.start_time))
            return cur
        cur = self.lookup(e.pid)
        if dt == ev.DT_PRCTL and cur is not None:
            self.changed()
            cur.comm = e.fields.get("new_name", cur.comm)
        return cur

    def _exec(self, e: ev.DriverEvent) -> ProcEntry:
        parent = self._e.get(e.ppid)
        path = e.fields.get("run_path", "")
        try:
            # the kernel's resolved path, symlinks followed, as /proc/<pid>/exe everywhere else
            exe = os.readlink(f"/proc/{e.pid}/exe").removesuffix(" (deleted)")
        except OSError:
            # gone already: the path it exec'd. "/proc/self/…" (an exec through a file
            # descriptor) is the *target's* self, never resolved in the agent's own /proc
            if path.startswith(("/proc/self/", "/proc/thread-self/")):
                exe = f"/proc/{e.pid}/" + path.split("/", 3)[3]
            else:
                exe = self._realpath(path) if path.startswith("/") else path
        try:
            cwd = os.readlink(f"/proc/{e.pid}/cwd")
        except OSError:
            cwd = ""
        entry = ProcEntry(
            pid=e.pid,
            ppid=e.ppid,
            start_time=ns_to_ticks(e.start_time_ns),
            comm=e.comm,
            exe=exe,
            argv=list(e.args),
            uid=e.uid,
            euid=e.euid,
            container_id=self._container(e.pid, e.cgroup_id, parent),
            nspid=e.nspid or e.pid,
            cwd=cwd,
            source="exec",
        )
        self._put(entry)
        return entry

    def _realpath(self, path: str) -> str:
        real = self._realpaths.get(path)
        if real is None:
            if len(self._realpaths) >= 1024:
                self._realpaths.clear()
            real = self._realpaths[path] = os.path.realpath(path)
        return real

    def _fork(self, e: ev.DriverEvent) -> None:
        child = e.fields["child_pid"]
        parent = self._e.get(e.pid)
        self._put(
            ProcEntry(
                pid=child,
                ppid=e.fields["child_ppid"],
                start_time=ns_to_ticks(e.fields["child_start_time_ns"]),
                comm=e.comm,
                exe=parent.exe if parent else "",
                argv=list(parent.argv) if parent else [],
                uid=e.uid,
                euid=e.euid,
                container_id=parent.container_id if parent else "",
                source="fork",
            )
        )

    # ------------------------------------------------------------------ reading

    def get(self, pid: int) -> ProcEntry | None:
        return self._e.get(pid)

    def lookup(self, pid: int) -> ProcEntry | None:
        """The cached entry, or one read from /proc now (and cached)."""
        e = self._e.get(pid)
        return e if e is not None else self._from_proc(pid)

    def pid_tree(self, pid: int, depth: int = PID_TREE_DEPTH) -> str:
        parts: list[str] = []
        cur = pid
        while cur > 0 and len(parts) < depth:
            e = self.lookup(cur)
            if e is None:
                break
            parts.append(f"{cur}.{e.comm}")
            if cur == 1 or e.ppid == cur:
                break
            cur = e.ppid
        return "<".join(parts)

    def process_fields(self, pid: int) -> dict[str, Any] | None:
        """The `process` object of an event (design §4), from the cache; None if unknown.
        A new dict each call (the caller may keep it); computed once while nothing changes."""
        memo = self._fields_memo
        if pid in memo:
            out = memo[pid]
            return dict(out) if out is not None else None
        gen = self._generation
        out = self._process_fields(pid)
        if gen == self._generation and len(memo) < 4096:  # else the walk changed the cache
            memo[pid] = dict(out) if out is not None else None
        return out

    def _process_fields(self, pid: int) -> dict[str, Any] | None:
        e = self._e.get(pid)
        if e is None:
            return None
        out: dict[str, Any] = {
            "exe": e.exe,
            "cmdline": join_cmdline(e.argv),
            "ppid": e.ppid,
            "uid": e.uid,
            "container_id": e.container_id,
            "pid_tree": self.pid_tree(pid),
        }
        if e.nspid and e.nspid != pid:
            out["nspid"] = e.nspid
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._e),
            "exited_kept": len(self._gone),
            "evicted": self.evicted,
            "proc_reads": self.proc_reads,
        }
