"""Trace frames become stored events: enrich, evaluate policies, batch, hand to the sinks.

Runs on the event loop thread; the only blocking work (writing) happens in the sinks'
threads. `backlog` tells the server how far the slowest sink is behind, so it can stop
reading from probes instead of buffering without bound (the probes then drop and count).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from host_agent.detectors import Detectors
from host_agent.detectors import host as host_rules
from host_agent.policy import PolicySet
from host_agent.registry import ProbeRecord, now_ms
from host_agent.rules import RuleSet
from host_agent.settings import Settings
from host_agent.sinks import SinkRunner, StoredEvent
from rasp.protocol.schema import Request, Trace

log = logging.getLogger("rampart.pipeline")


def _cap(values: list[str], count: int, length: int) -> list[str]:
    if len(values) > count:
        values = values[:count]
    # max(map(len)) runs in C; a generator here was the pipeline's largest cost
    if values and max(map(len, values)) > length:
        values = [v[:length] for v in values]
    return values


def _signature(hook: str, request: Request | None, param: str) -> str:
    """What makes two alerts "the same attack" for aggregation: where it came in (method,
    URL path, parameter) and which sink it reached."""
    if request is None:
        return hook
    return f"{request.method} {urlsplit(request.url).path} {param} -> {hook}"


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        runners: list[SinkRunner],
        policy: PolicySet,
        rules: RuleSet | None = None,
    ) -> None:
        self.settings = settings
        self.runners = runners
        self.policy = policy
        self.rules = rules or RuleSet()
        #: pid -> process facts (the driver's cache sets it; host rules look up parents)
        self.host_lookup: Callable[[int], dict[str, Any] | None] = lambda _pid: None
        self.detectors = Detectors() if settings.detectors else None
        self._batch: list[StoredEvent] = []
        self._encode = msgspec.json.Encoder().encode
        self._flush_handle: asyncio.TimerHandle | None = None
        self.received = 0
        self.ignored = 0
        self.alerted = 0

    @property
    def backlog(self) -> int:
        """Events not yet written by the slowest sink (including the open batch)."""
        return len(self._batch) + max((r.pending for r in self.runners), default=0)

    def submit(self, probe: ProbeRecord, trace: Trace) -> None:
        s = self.settings
        d = trace.data
        self.received += 1
        probe.events += 1
        args = _cap(d.args, s.args_max, s.arg_cap)
        stack = _cap(d.stack, s.stack_max, s.arg_cap)
        # the runtime announced in the hello, not whatever a later frame claims
        runtime = probe.runtime
        ignored, alerts = self.policy.evaluate(runtime, d.kind, d.hook, args, stack)
        if ignored:
            self.ignored += 1
            probe.ignored += 1
            return
        event: dict[str, Any] = {
            "ts": trace.time or now_ms(),
            # the peer's host pid, checked against SO_PEERCRED (a probe in a container
            # may have sent its namespace pid)
            "pid": probe.pid,
            "runtime": runtime,
            "runtime_version": trace.runtime_version or probe.runtime_version,
            "probe_version": trace.probe_version or probe.probe_version,
            "hook": d.hook,
            "kind": d.kind,
            "args": args,
            "stack": stack,
            "blocked": d.blocked,
            "policy_id": d.policy_id,
            "request": d.request,
            "process": probe.process,
        }
        if d.ret is not None:
            event["ret"] = d.ret
        if d.bypass:
            event["bypass"] = True
        if d.class_id is not None:
            event["class_id"] = d.class_id
            event["method_id"] = d.method_id
        detections: tuple[dict[str, Any], ...] = ()
        signature = ""
        if self.detectors is not None:
            findings = self.detectors.check(d.kind, d.hook, args, d.request, stack)
            if findings:
                findings = self.rules.apply(findings, probe.process.get("exe", ""), args, d.request)
            if findings:
                detections = tuple(f.to_json() for f in findings)
                event["detections"] = list(detections)
                alerts = alerts + [f.rule for f in findings]
                signature = _signature(d.hook, d.request, findings[0].param)
        self._append(event, alerts, detections, signature)

    def submit_host(self, event: dict[str, Any]) -> None:
        """A host event from the driver (runtime "kernel"): same policies, same sinks, and
        the host rules (with the process cache to look up parents). An event that stands
        for `count` identical records (hostdriver.AGGREGATED_TYPES) counts as that many."""
        n = event.get("count", 1)
        self.received += n
        ignored, alerts = self.policy.evaluate(
            event["runtime"], event["kind"], event["hook"], event["args"], event["stack"]
        )
        if ignored:
            self.ignored += n
            return
        detections: tuple[dict[str, Any], ...] = ()
        signature = ""
        if self.detectors is not None and event.get("data_type") in host_rules.DATA_TYPES:
            findings = self.detectors.check_host(event, self.host_lookup)
            if findings:
                exe = event["process"].get("exe", "")
                findings = self.rules.apply(findings, exe, event["args"], None)
            if findings:
                detections = tuple(f.to_json() for f in findings)
                event["detections"] = list(detections)
                alerts = alerts + [f.rule for f in findings]
                signature = f"{event['hook']} {os.path.basename(event['process'].get('exe', ''))}"
        self._append(event, alerts, detections, signature)

    def submit_row(
        self, ts: int, pid: int, kind: str, hook: str, args: list[str], body: bytes, n: int = 1
    ) -> None:
        """A driver event already encoded (HostDriver's socket rows): `body` is its JSON
        object without the closing brace; it stands for `n` records. Same policies as
        submit_host; no host rule reads these events (detectors.host.DATA_TYPES)."""
        self.received += n
        alerts: list[str] = []
        if self.policy.policies:
            ignored, alerts = self.policy.evaluate("kernel", kind, hook, args, [])
            if ignored:
                self.ignored += n
                return
            if alerts:
                self.alerted += 1
                body += b',"alerts":' + self._encode(alerts)
        self._push(
            StoredEvent(
                ts=ts,
                pid=pid,
                runtime="kernel",
                kind=kind,
                hook=hook,
                blocked=False,
                policy_id=None,
                alerted=bool(alerts),
                json=body + b"}",
            )
        )

    def _append(
        self,
        event: dict[str, Any],
        alerts: list[str],
        detections: tuple[dict[str, Any], ...] = (),
        signature: str = "",
    ) -> None:
        if alerts:
            self.alerted += 1
            event["alerts"] = alerts
        self._push(
            StoredEvent(
                ts=event["ts"],
                pid=event["pid"],
                runtime=event["runtime"],
                kind=event["kind"],
                hook=event["hook"],
                blocked=event["blocked"],
                policy_id=event["policy_id"],
                alerted=bool(alerts),
                json=self._encode(event),
                detections=detections,
                signature=signature,
            )
        )

    def _push(self, stored: StoredEvent) -> None:
        s = self.settings
        self._batch.append(stored)
        if len(self._batch) >= s.store_batch:
            self.flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(s.store_flush_ms / 1000, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        for runner in self.runners:
            runner.submit(batch)

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "ignored": self.ignored,
            "alerted": self.alerted,
            "backlog": self.backlog,
            "detections": dict(self.detectors.counts) if self.detectors else {},
            "whitelisted": dict(self.rules.whitelisted),
            "sinks": {
                r.sink.name: {"written": r.written, "failed": r.failed, "errors": r.errors}
                for r in self.runners
            },
        }
