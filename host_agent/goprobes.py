"""The Go probe, agent side: uprobes attached per Go process, records turned into events.

The agent (root, long-lived) owns the uprobes; `rasp-attach --pid P` on a Go process only asks
for them (control command `golang.attach`, root-only like every control command). Per
process: resolve the hooked functions in /proc/P/exe (rasp/golang/symbols.py), the struct
offsets (DWARF or table), attach, and register a ProbeRecord so `rasp-agent ps` shows it.
Records are read on the ring-buffer thread and drained on the event loop; each becomes a
normal trace (`runtime: golang`, `hook` the Go name) through the same pipeline as socket
probes, with the request the goroutine was serving. A process that exits is detached within
REAP_S.

Kernel-side enforcement joins here: `on_attached` / `on_detached` listeners are called with
the pid when a Go process comes under the probe and when it leaves it (detach or exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from host_agent.registry import ProbeRecord, now_ms
from host_agent.server import ControlFailure
from injector.process import ProcessError, start_time
from rasp.golang import offsets as field_offsets
from rasp.golang import symbols
from rasp.golang.detectcfg import KernelDetect, kernel_detect
from rasp.golang.hooks import ALL_SYMBOLS, HOOKS, REQUEST_HOOK
from rasp.golang.records import RULES, decode
from rasp.golang.uprobes import GoProbeError, GoUprobes
from rasp.protocol.schema import Request, Trace, TraceData

if TYPE_CHECKING:
    from host_agent.daemon import Agent

log = logging.getLogger("rampart.golang")

PROBE_VERSION = "uprobe-1"
REAP_S = 1.0
REQUESTS_KEPT = 4096  # per process: request id -> Request, oldest forgotten first


class GoTarget:
    def __init__(self, pid: int, start: int, binary: symbols.GoBinary, record: ProbeRecord):
        self.pid = pid
        self.start = start
        self.binary = binary
        self.record = record
        self.requests: OrderedDict[int, Request] = OrderedDict()
        self.offsets_source = ""
        self.missing: list[str] = []
        self.failed: dict[str, str] = {}
        self.detect = KernelDetect()


def _request(strs: list[str]) -> Request:
    method, path, query, remote, host = (strs + [""] * 5)[:5]
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    return Request(
        method=method, url=url, remote_addr=remote, params=parse_qs(query, keep_blank_values=True)
    )


class GoProbes:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.uprobes: GoUprobes | None = None
        self.targets: dict[int, GoTarget] = {}
        #: called with the pid once its uprobes are attached / removed (detach or exit): the
        #: place where kernel-side enforcement (host_agent/enforce.py) can protect the process
        self.on_attached: list[Callable[[int], None]] = []
        self.on_detached: list[Callable[[int], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._reaper: asyncio.TimerHandle | None = None
        self.events = 0
        self.errors = 0
        self.truncated = 0

    # ------------------------------------------------------------------ attach / detach

    async def attach(self, pid: int) -> dict[str, Any]:
        """Attach the hooks to Go process `pid`; a second call is a no-op saying so. Reading
        the binary (symbols, DWARF: about a second for a 10 MB binary) runs on a worker
        thread, so the agent keeps serving its probes meanwhile."""
        if pid in self.targets:
            return {**self._row(self.targets[pid]), "already": True}
        try:
            start = start_time(pid)
        except ProcessError as e:
            raise ControlFailure(str(e)) from None
        binary, offsets, by_hook, missing = await asyncio.to_thread(_resolve, pid)
        if pid in self.targets:  # attached by a concurrent request meanwhile
            return {**self._row(self.targets[pid]), "already": True}
        if start_time_or_none(pid) != start:
            raise ControlFailure(f"pid {pid}: the process exited while its binary was read")
        self._ensure_loaded()
        assert self.uprobes is not None
        try:
            result = self.uprobes.attach(pid, binary.path, by_hook, offsets.values)
        except GoProbeError as e:
            raise ControlFailure(f"pid {pid}: {e}") from None
        if not result.attached:
            first = next(iter(result.failed.items()), ("", "?"))
            raise ControlFailure(f"pid {pid}: no uprobe could be attached ({first[0]}: {first[1]})")
        record = ProbeRecord(
            pid=pid,
            uid=_uid(pid),
            runtime="golang",
            runtime_version=binary.version,
            probe_version=PROBE_VERSION,
            mode="uprobes",
            hooks=result.attached,
            nspid=pid,
            state="attached",
        )
        record.facts = getattr(self.agent.driver, "facts", None)
        record.refresh_process(force=True)
        target = GoTarget(pid, start, binary, record)
        target.offsets_source = offsets.source
        target.missing = missing
        target.failed = result.failed
        self.targets[pid] = target
        self.agent.registry.probes[pid] = record
        self.push_detect(target)
        log.info(
            "golang: pid %d (%s) attached, %d hooks, offsets from %s%s",
            pid,
            binary.version,
            len(result.attached),
            offsets.source,
            f"; missing {', '.join(missing)}" if missing else "",
        )
        self._notify(self.on_attached, pid)
        return {**self._row(target), "already": False}

    def push_detect(self, target: GoTarget | None = None) -> None:
        """Put the detection rules in block mode into the kernel for one process (all when
        None): at attach, and when the rules are reloaded."""
        rules = getattr(self.agent, "rules", None)  # None: an agent without detection rules
        if self.uprobes is None or rules is None:
            return
        for t in [target] if target is not None else list(self.targets.values()):
            t.detect = kernel_detect(rules.detect_rules(t.record.process.get("exe", "")))
            for note in t.detect.notes:
                log.warning("golang: pid %d: %s", t.pid, note)
            try:
                self.uprobes.set_detect(t.pid, t.detect.config())
            except GoProbeError as e:
                self.errors += 1
                log.error("golang: %s", e)

    def detach(self, pid: int, reason: str = "detached") -> dict[str, Any]:
        target = self.targets.get(pid)
        if target is None:
            raise ControlFailure(f"pid {pid}: no Go probe attached")
        if self.uprobes is not None:
            self.uprobes.flush()
            self._drain()  # events recorded before the detach are not lost
            self.uprobes.detach(pid)
        del self.targets[pid]
        target.record.state = "exited" if reason == "exited" else "detached"
        target.record.reason = reason
        self._notify(self.on_detached, pid)
        return {"pid": pid, "detached": True, "reason": reason}

    def _notify(self, listeners: list[Callable[[int], None]], pid: int) -> None:
        for fn in listeners:
            try:
                fn(pid)
            except Exception:  # a listener must not break attach/detach
                log.exception("golang: listener %r failed for pid %d", fn, pid)

    def _row(self, t: GoTarget) -> dict[str, Any]:
        return {
            **t.record.row(),
            "hooks": len(t.record.hooks),
            "hook_names": list(t.record.hooks),
            "missing": list(t.missing),
            "failed": dict(t.failed),
            "offsets": t.offsets_source,
            "stripped": t.binary.stripped,
            "module": t.binary.module,
            "detect": {"kernel": list(t.detect.rules), "notes": list(t.detect.notes)},
        }

    def rows(self) -> list[dict[str, Any]]:
        return [self._row(t) for t in self.targets.values()]

    # ------------------------------------------------------------------ running

    def _ensure_loaded(self) -> None:
        if self.uprobes is not None and self.uprobes.loaded:
            return
        self._loop = asyncio.get_running_loop()
        up = GoUprobes(notify=self._wake)
        try:
            up.load()
        except GoProbeError as e:
            raise ControlFailure(str(e)) from None
        self.uprobes = up
        self._reaper = self._loop.call_later(REAP_S, self._reap)

    def _wake(self) -> None:
        """Ring-buffer thread: records are waiting; drain them on the loop."""
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is stopping
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self.uprobes is None:
            return
        for raw in self.uprobes.take():
            try:
                self._record(raw)
            except Exception:  # one bad record never stops the probe
                self.errors += 1
                log.exception("golang: cannot process a record")

    def _record(self, raw: bytes) -> None:
        e, strs, truncated = decode(raw)
        target = self.targets.get(e.tgid)
        if target is None or e.hook >= len(HOOKS):
            return
        if e.hook == REQUEST_HOOK:
            target.requests[e.req_id] = _request(strs)
            while len(target.requests) > REQUESTS_KEPT:
                target.requests.popitem(last=False)
            return
        hook = HOOKS[e.hook]
        if not hook.kind:
            return
        self.truncated += truncated  # a string longer than a record slot (511 bytes)
        request = target.requests.get(e.req_id) if e.req_id else None
        trace = Trace(
            pid=e.tgid,
            runtime="golang",
            runtime_version=target.binary.version,
            probe_version=PROBE_VERSION,
            time=now_ms(),
            data=TraceData(
                hook=hook.name,
                kind=hook.kind,  # type: ignore[arg-type]
                args=hook.args(strs, e.num) if strs else [],
                request=request,
                blocked=bool(e.blocked),
                policy_id=RULES.get(e.rule) if e.blocked else None,
            ),
        )
        target.record.last_seen = trace.time
        target.record.refresh_process()
        self.events += 1
        self.agent.pipeline.submit(target.record, trace)

    def _reap(self) -> None:
        """Detach processes that exited (or whose pid now names another process)."""
        for pid, t in list(self.targets.items()):
            try:
                alive = start_time(pid) == t.start
            except ProcessError:
                alive = False
            if not alive:
                log.info("golang: pid %d exited; uprobes removed", pid)
                self.detach(pid, reason="exited")
        if self._loop is not None and self.uprobes is not None:
            self._reaper = self._loop.call_later(REAP_S, self._reap)

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for pid in list(self.targets):
            self.detach(pid, reason="agent stopped")
        if self.uprobes is not None:
            self.uprobes.stop()
            self.uprobes = None

    def stats(self) -> dict[str, Any]:
        up = self.uprobes
        return {
            "attached": sorted(self.targets),
            "events": self.events,
            "errors": self.errors,
            "truncated": self.truncated,
            "received": up.received if up else 0,
            "kernel_drops": up.kernel_drops() if up else 0,
            "queue_drops": up.queue_drops if up else 0,
        }


def _resolve(
    pid: int,
) -> tuple[symbols.GoBinary, field_offsets.FieldOffsets, dict[int, int], list[str]]:
    """The binary of `pid`, its struct offsets, hook index -> entry offset, and the hooks
    whose functions it does not contain (ControlFailure when it cannot be probed at all)."""
    try:
        binary = symbols.inspect(symbols.process_binary(pid), ALL_SYMBOLS)
    except symbols.SymbolError as e:
        raise ControlFailure(f"pid {pid}: {e}") from None
    minor = (symbols.parse_version(binary.version) or (1, 26))[1]
    offsets = field_offsets.resolve(binary.path, minor, binary.has_dwarf)
    by_hook: dict[int, int] = {}
    missing: list[str] = []
    for i, hook in enumerate(HOOKS):
        off = next((binary.offsets[s] for s in hook.symbols if s in binary.offsets), None)
        if off is None:
            missing.append(hook.name)
        else:
            by_hook[i] = off
    if not by_hook:
        raise ControlFailure(f"pid {pid}: none of the hooked Go functions is in {binary.path}")
    return binary, offsets, by_hook, missing


def start_time_or_none(pid: int) -> int | None:
    try:
        return start_time(pid)
    except ProcessError:
        return None


def _uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1
