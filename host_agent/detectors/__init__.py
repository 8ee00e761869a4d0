"""Attack detectors run by the agent on every finished event.

Each detector looks at one kind of sink: SQL (`sql`), commands (`process`), files (`file`),
outbound connections and lookups (`network`, `dns`). What they find is added to the stored
event (`detections`, and the rule ids in `alerts`). Hooks never import detectors; probes
block synchronously from policies, detectors add context-rich alerts after the fact.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from host_agent.detectors import deser, host, path, shell, sql, ssrf
from host_agent.detectors.base import Finding

__all__ = ["Detectors", "Finding"]


class Detectors:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def check(
        self, kind: str, hook: str, args: list[str], request: Any, stack: list[str] = ()
    ) -> list[Finding]:
        if kind == "sql":
            found = sql.check(args[0], request, hook) if args else []
        elif kind == "deserialization":
            found = deser.check_deserialization(hook, args)
        elif kind == "naming":
            found = deser.check_naming(args)
        elif kind == "process":
            found = deser.check_exec_stack(stack)
            if request is not None:
                found += shell.check(hook, args, request)
        elif request is None:
            return []  # the remaining detectors correlate with request input
        elif kind == "file":
            found = path.check(args, request, hook)
        elif kind in ("network", "dns"):
            found = ssrf.check(kind, args, request)
        else:
            return []
        for f in found:
            self.counts[f.rule] += 1
        return found

    def check_host(self, event: dict[str, Any], lookup: host.Lookup) -> list[Finding]:
        """Host rules over a driver event (`runtime: kernel`)."""
        found = host.check(event, lookup)
        for f in found:
            self.counts[f.rule] += 1
        return found
