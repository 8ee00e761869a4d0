"""Who is connected: one record per probe process, and waiters for a probe's hello."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from injector.process import ProcessError, ProcessInfo, join_cmdline, pid_tree, read_process

if TYPE_CHECKING:
    from host_agent.server import PeerConnection

KEEP_GONE = 1000  # disconnected probes remembered for `ps`
PROCESS_REFRESH_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ProbeRecord:
    pid: int
    uid: int
    runtime: str
    runtime_version: str
    probe_version: str
    mode: str
    hooks: list[str]
    nspid: int
    #: the probe's hello said it was already running (a reconnect, or a repeated attach)
    already_running: bool = False
    connected_at: int = field(default_factory=now_ms)
    last_seen: int = field(default_factory=now_ms)
    state: str = "connected"  # connected | disconnected | exited
    reason: str = ""
    events: int = 0  # traces received from this probe
    ignored: int = 0  # dropped by an `ignore` policy in the agent
    heartbeat: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)  # in force, per the probe
    pushed_policy: str = ""  # uuid we last pushed
    process: dict[str, Any] = field(default_factory=dict)  # enrichment, see `refresh_process`
    process_read_at: float = 0.0
    conn: PeerConnection | None = None
    #: the driver's process cache (host_agent/hostdriver.py) when it runs: pid -> facts or None
    facts: Callable[[int], dict[str, Any] | None] | None = None

    def refresh_process(self, force: bool = False) -> None:
        """Refresh the facts at most every PROCESS_REFRESH_S: from the driver's process cache
        when it runs (it knows processes that are already gone), else from /proc; keep the
        last facts once the process is gone."""
        mono = time.monotonic()
        if not force and mono - self.process_read_at < PROCESS_REFRESH_S:
            return
        self.process_read_at = mono
        if self.facts is not None:
            cached = self.facts(self.pid)
            if cached is not None:
                self.process = cached
                return
        try:
            info = read_process(self.pid)
        except ProcessError:
            return
        self.process = process_fields(info)

    def row(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "pid": self.pid,
            "nspid": self.nspid,
            "uid": self.uid,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "probe_version": self.probe_version,
            "mode": self.mode,
            "already_running": self.already_running,
            "state": self.state,
            "reason": self.reason,
            "since": self.connected_at,
            "last_seen": self.last_seen,
            "hooks": len(self.hooks),
            "events": self.events,
            "ignored": self.ignored,
            "sent": hb.get("sent", 0),
            "drops": hb.get("dropped", 0),
            "dropped_by": hb.get("dropped_by", {}),
            "blocked": hb.get("blocked", 0),
            "policy": self.policies.get("block", ""),
            "policy_pushed": self.pushed_policy,
            "exe": self.process.get("exe", ""),
            "container_id": self.process.get("container_id", ""),
        }


def process_fields(info: ProcessInfo) -> dict[str, Any]:
    """The `process` object of an event (design §4)."""
    out: dict[str, Any] = {
        "exe": info.exe,
        "cmdline": join_cmdline(info.cmdline),
        "ppid": info.ppid,
        "uid": info.uid,
        "container_id": info.container_id,
        "pid_tree": pid_tree(info.pid),
    }
    if info.nspid != info.pid:
        out["nspid"] = info.nspid
    return out


class Registry:
    def __init__(self) -> None:
        self.probes: OrderedDict[int, ProbeRecord] = OrderedDict()
        self._waiters: dict[int, list[asyncio.Future[ProbeRecord]]] = {}
        #: told ("add" | "gone", pid, runtime) as probes come and go (kernel enforcement)
        self.listeners: list[Callable[[str, int, str], None]] = []

    def connected(self) -> list[ProbeRecord]:
        return [r for r in self.probes.values() if r.conn is not None]

    def add(self, rec: ProbeRecord) -> ProbeRecord | None:
        """Register a probe after its hello; returns the record it replaces, if connected."""
        old = self.probes.pop(rec.pid, None)
        self.probes[rec.pid] = rec
        for fut in self._waiters.pop(rec.pid, []):
            if not fut.done():
                fut.set_result(rec)
        self._trim()
        for listener in self.listeners:
            listener("add", rec.pid, rec.runtime)
        return old if old is not None and old.conn is not None else None

    def gone(self, rec: ProbeRecord, state: str, reason: str) -> None:
        rec.conn = None
        if rec.state != "exited":
            rec.state = state
        if reason and not rec.reason:
            rec.reason = reason
        if self.probes.get(rec.pid) is rec:  # not a connection a newer one replaced
            for listener in self.listeners:
                listener("gone", rec.pid, rec.runtime)

    def _trim(self) -> None:
        while len(self.probes) > KEEP_GONE:
            for pid, r in self.probes.items():
                if r.conn is None:
                    del self.probes[pid]
                    break
            else:
                return

    async def wait_hello(self, pid: int, timeout: float) -> ProbeRecord:
        rec = self.probes.get(pid)
        if rec is not None and rec.conn is not None:
            return rec
        fut: asyncio.Future[ProbeRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(pid, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            waiters = self._waiters.get(pid, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(pid, None)
