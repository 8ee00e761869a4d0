"""Policy tables pushed by the agent: block and filter rules, per-hook quotas.

Pure logic, no I/O: unit-tested in tests/unit/test_python_probe_rules.py. A table frame
replaces the whole table of its kind (docs/protocol.md). Regexes use the subset common to
every runtime, so Python's `re` evaluates them the way the agent and other probes do.
"""

from __future__ import annotations

import re
from time import monotonic as _monotonic

DEFAULT_PER_MINUTE = 12000  # Elkeid's default per hook and minute


class Rule:
    __slots__ = ("args_re", "hook", "kind", "policy_id", "runtimes", "stack_re")

    def __init__(self, spec: dict) -> None:
        self.policy_id = spec["policy_id"]
        rt = spec.get("runtime")
        self.runtimes = tuple(rt) if rt else None
        self.kind = spec.get("kind")
        self.hook = spec.get("hook")
        m = spec.get("match") or {}
        self.args_re = re.compile(m["args"]) if m.get("args") else None
        self.stack_re = re.compile(m["stack"]) if m.get("stack") else None

    def matches(self, hook: str, kind: str, args: list, stack: list) -> bool:
        if self.runtimes is not None and "python" not in self.runtimes:
            return False
        if self.kind is not None and kind != self.kind:
            return False
        if self.hook is not None and hook != self.hook:
            return False
        if self.args_re is not None and not self.args_re.search(" ".join(args)):
            return False
        if self.stack_re is not None:
            search = self.stack_re.search
            return any(search(f) for f in stack)
        return True


class RuleTable:
    """An ordered list of rules; `first_match` gives the policy id of the first that matches.

    Rules are indexed by hook (rules without a hook apply to all), so an event of a hook that
    no rule names costs one dict lookup."""

    __slots__ = ("by_hook", "empty", "rules", "uuid", "wants_stack")

    def __init__(self, uuid: str = "", specs: list = ()) -> None:
        self.uuid = uuid
        self.rules = [Rule(s) for s in specs]
        self.rules = [r for r in self.rules if r.runtimes is None or "python" in r.runtimes]
        self.empty = not self.rules
        self.by_hook: dict = {}
        anyhook = [r for r in self.rules if r.hook is None]
        for r in self.rules:
            if r.hook is not None:
                self.by_hook.setdefault(r.hook, [])
        for hook, lst in self.by_hook.items():
            lst.extend(r for r in self.rules if r.hook == hook or r.hook is None)
        self.by_hook[None] = anyhook
        self.wants_stack = any(r.stack_re is not None for r in self.rules)

    def candidates(self, hook: str) -> list:
        got = self.by_hook.get(hook)
        return got if got is not None else self.by_hook[None]

    def first_match(self, hook: str, kind: str, args: list, stack: list):
        for r in self.candidates(hook):
            if r.matches(hook, kind, args, stack):
                return r.policy_id
        return None


class Quotas:
    """Per-hook calls per minute, in fixed one-minute windows; `hook: "*"` is the default."""

    __slots__ = ("counts", "default", "limits", "uuid", "window")

    def __init__(self, uuid: str = "", specs: list = ()) -> None:
        self.uuid = uuid
        self.limits = {}
        self.default = DEFAULT_PER_MINUTE
        for q in specs:
            if q["hook"] == "*":
                self.default = q["per_minute"]
            else:
                self.limits[q["hook"]] = q["per_minute"]
        self.counts: dict = {}
        self.window = 0.0

    def allow(self, hook: str, now=None) -> bool:
        if now is None:
            now = _monotonic()
        if now - self.window >= 60.0:
            self.window = now
            self.counts = {}
        counts = self.counts
        n = counts.get(hook, 0) + 1
        counts[hook] = n
        return n <= self.limits.get(hook, self.default)
