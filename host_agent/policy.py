"""Policy files (design §5): loading with precise errors, matching, and the frames probes get.

A policy set is immutable; a reload builds a new one and swaps it in only if it loaded
cleanly, so a bad file never replaces the policy in force. Its uuid is derived from the
normalised content, so probes (which echo it in heartbeats) and the agent agree on what is
in force, and reloading an unchanged file yields the same uuid.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from host_agent.yamlfile import ConfigError, load, loads, unique_ids, validate
from rasp.protocol.schema import (
    Block,
    BlockData,
    Filter,
    FilterData,
    Kind,
    Quota,
    QuotaData,
    QuotaFrame,
    Rule,
    RuleMatch,
    Runtime,
)

_NAMESPACE = uuid.UUID("6f1c2a8e-3d5b-4c1e-9a7f-52616d706172")  # "Rampar" in the tail
DEFAULT_QUOTA_PER_MINUTE = 12_000  # Elkeid's default per hook and minute


def _regex(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"invalid regex {v!r}: {e}") from None
    return v


#: match fields the kernel evaluates (host_agent/enforce.py, docs/enforcement.md)
KERNEL_NET_FIELDS = ("dest", "port")
KERNEL_EXEC_FIELDS = ("path", "path_prefix", "name")
#: runtimes whose probes cannot block in-process: only the kernel blocks for them
NO_IN_PROBE_BLOCKING = frozenset({"golang"})


class MatchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    args: str | None = Field(None, description="regex searched in the args joined by spaces")
    stack: str | None = Field(None, description="regex searched in each stack frame")
    # kernel-enforced subset (kind network / process, action block): no regexes in the kernel
    dest: list[str] | None = Field(None, description="destination CIDRs (IPv4 or IPv6)")
    port: list[int] | None = Field(None, description="destination ports (any when absent)")
    path: list[str] | None = Field(None, description="exec'd program, exact absolute path")
    path_prefix: list[str] | None = Field(None, description="exec'd program path prefix")
    name: list[str] | None = Field(None, description="exec'd program basename, exact")

    _check = field_validator("args", "stack")(_regex)

    @field_validator("dest")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        for c in v or ():
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError as e:
                raise ValueError(f"{c!r} is not a CIDR or address: {e}") from None
        return v

    @field_validator("port")
    @classmethod
    def _ports(cls, v: list[int] | None) -> list[int] | None:
        for p in v or ():
            if not 0 < p < 65536:
                raise ValueError(f"port {p} out of range 1-65535")
        return v

    @field_validator("path")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or ():
            if not p.startswith("/") or len(p.encode()) >= 256:
                raise ValueError(f"{p!r}: an absolute path of less than 256 bytes")
        return v

    @field_validator("path_prefix")
    @classmethod
    def _prefixes(cls, v: list[str] | None) -> list[str] | None:
        for p in v or ():
            if not p.startswith("/") or len(p.encode()) >= 64:
                raise ValueError(f"{p!r}: an absolute path prefix of less than 64 bytes")
        return v

    @field_validator("name")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        for n in v or ():
            if not n or "/" in n or len(n.encode()) >= 64:
                raise ValueError(f"{n!r}: a file name without '/', 1 to 63 bytes")
        return v

    def kernel_fields(self) -> list[str]:
        return [f for f in (*KERNEL_NET_FIELDS, *KERNEL_EXEC_FIELDS) if getattr(self, f)]


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    runtime: Runtime | list[Runtime] | None = None
    kind: Kind | None = None
    hook: str | None = Field(None, min_length=1)
    match: MatchSpec | None = None
    action: Literal["block", "alert", "ignore"]
    description: str = ""

    @model_validator(mode="after")
    def _kernel_subset(self) -> PolicySpec:
        """Kernel match fields: a block rule of the matching kind, with nothing the kernel
        cannot evaluate beside them (docs/enforcement.md)."""
        m = self.match
        kf = m.kernel_fields() if m else []
        if not kf:
            return self
        assert m is not None
        if m.args or m.stack:
            raise ValueError(
                f"match.{kf[0]} is evaluated in the kernel, which cannot run the args/stack "
                "regexes: put them in a separate policy"
            )
        if self.action != "block":
            raise ValueError(f"match.{kf[0]} works with action: block only (kernel enforcement)")
        net = [f for f in kf if f in KERNEL_NET_FIELDS]
        exe = [f for f in kf if f in KERNEL_EXEC_FIELDS]
        if net and exe:
            raise ValueError(f"match.{net[0]} and match.{exe[0]}: one kind per policy")
        if net and self.kind != "network":
            raise ValueError(f"match.{net[0]} needs kind: network")
        if exe and self.kind != "process":
            raise ValueError(f"match.{exe[0]} needs kind: process")
        if net and not m.dest:
            raise ValueError("match.port needs match.dest (use ::/0 and 0.0.0.0/0 for any)")
        if self.hook is not None:
            raise ValueError("a kernel-enforced policy has no hook (the kernel hook is fixed)")
        return self


class QuotaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    hook: str = Field("*", min_length=1)
    runtime: Runtime | list[Runtime] | None = None
    per_minute: int = Field(ge=0)


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    policies: list[PolicySpec] = Field(default_factory=list)
    quotas: list[QuotaSpec] = Field(default_factory=list)


def _runtimes(r: str | list[str] | None) -> tuple[str, ...] | None:
    if r is None:
        return None
    return (r,) if isinstance(r, str) else tuple(r)


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    action: str
    runtimes: tuple[str, ...] | None
    kind: str | None
    hook: str | None
    args_re: re.Pattern[str] | None
    stack_re: re.Pattern[str] | None
    spec: PolicySpec
    #: evaluated in the kernel only (dest/port/path/name): not pushed to probes, not matched
    #: against events here
    kernel: bool = False

    def applies_to(self, runtime: str) -> bool:
        return self.runtimes is None or runtime in self.runtimes

    def matches(
        self, runtime: str, kind: str, hook: str, args: list[str], stack: list[str]
    ) -> bool:
        if self.kernel:
            return False
        if self.runtimes is not None and runtime not in self.runtimes:
            return False
        if self.kind is not None and kind != self.kind:
            return False
        if self.hook is not None and hook != self.hook:
            return False
        if self.args_re is not None and not self.args_re.search(" ".join(args)):
            return False
        return self.stack_re is None or any(self.stack_re.search(f) for f in stack)

    def rule(self) -> Rule:
        m = self.spec.match
        return Rule(
            policy_id=self.id,
            runtime=list(self.runtimes) if self.runtimes else None,
            kind=self.kind,  # type: ignore[arg-type]
            hook=self.hook,
            match=RuleMatch(args=m.args if m else None, stack=m.stack if m else None),
        )


@dataclass(frozen=True)
class PolicySet:
    uuid: str
    source: str
    policies: tuple[Policy, ...] = ()
    quotas: tuple[QuotaSpec, ...] = ()
    by_action: dict[str, tuple[Policy, ...]] = field(default_factory=dict)

    def evaluate(
        self, runtime: str, kind: str, hook: str, args: list[str], stack: list[str]
    ) -> tuple[bool, list[str]]:
        """(ignored, ids of alert/block policies that match). Block policies that match an
        event the probe did not block still raise an alert: the call went through."""
        hits: list[str] = []
        for p in self.policies:
            if p.matches(runtime, kind, hook, args, stack):
                if p.action == "ignore":
                    return True, []
                hits.append(p.id)
        return False, hits

    def frames_for(self, runtime: str) -> list[Any]:
        """The filter, block and quota tables for one probe of `runtime`."""
        filters = [p.rule() for p in self.by_action.get("ignore", ()) if p.applies_to(runtime)]
        blocks = [
            p.rule()
            for p in self.by_action.get("block", ())
            if p.applies_to(runtime) and not p.kernel
        ]
        quotas = [
            Quota(hook=q.hook, per_minute=q.per_minute)
            for q in self.quotas
            if q.runtime is None or runtime in _runtimes(q.runtime)  # type: ignore[operator]
        ]
        if not any(q.hook == "*" for q in quotas):
            quotas.append(Quota(hook="*", per_minute=DEFAULT_QUOTA_PER_MINUTE))
        return [
            Filter(data=FilterData(uuid=self.uuid, filters=filters)),
            Block(data=BlockData(uuid=self.uuid, blocks=blocks)),
            QuotaFrame(data=QuotaData(uuid=self.uuid, quotas=quotas)),
        ]


def _build(spec: PolicyFile, source: str) -> PolicySet:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    policies = tuple(
        Policy(
            id=p.id,
            action=p.action,
            runtimes=_runtimes(p.runtime),
            kind=p.kind,
            hook=p.hook,
            args_re=re.compile(p.match.args) if p.match and p.match.args else None,
            stack_re=re.compile(p.match.stack) if p.match and p.match.stack else None,
            spec=p,
            kernel=bool(p.match and p.match.kernel_fields()),
        )
        for p in spec.policies
    )
    by_action: dict[str, tuple[Policy, ...]] = {}
    for action in ("block", "alert", "ignore"):
        by_action[action] = tuple(p for p in policies if p.action == action)
    return PolicySet(
        uuid=str(uuid.uuid5(_NAMESPACE, canonical)),
        source=source,
        policies=policies,
        quotas=tuple(spec.quotas),
        by_action=by_action,
    )


def empty() -> PolicySet:
    return _build(PolicyFile(), "(none)")


def _parse(data: Any, lines: dict, source: str) -> PolicySet:
    spec = validate(PolicyFile, data, lines, source, "a `policies:` list")
    unique_ids([p.id for p in spec.policies], "policies", lines, source, "policy id")
    for i, p in enumerate(spec.policies):
        problem = _unenforceable(p)
        if problem:
            raise ConfigError(source, f"policies.{i}: {problem}", lines.get(("policies", i)))
    return _build(spec, source)


def _unenforceable(p: PolicySpec) -> str:
    """A block rule scoped to a runtime that only the kernel can block for (golang), which
    the kernel cannot enforce: refused rather than silently not enforced."""
    if p.action != "block" or p.runtime is None:
        return ""
    runtimes = _runtimes(p.runtime) or ()
    kernel_only = [r for r in runtimes if r in NO_IN_PROBE_BLOCKING]
    if not kernel_only or (p.match and p.match.kernel_fields()):
        return ""
    return (
        f"block policy {p.id!r} names runtime {kernel_only[0]}, whose processes are blocked by "
        "the kernel only, and the kernel cannot enforce it: use kind network with match.dest/"
        "port or kind process with match.path/path_prefix/name (docs/enforcement.md)"
    )


def load_policy(path: str | Path) -> PolicySet:
    """Load and check a policy file; raises ConfigError naming file and line."""
    data, lines = load(path)
    return _parse(data, lines, str(path))


def loads_policy(text: str, source: str = "<policy>") -> PolicySet:
    data, lines = loads(text, source)
    return _parse(data, lines, source)
