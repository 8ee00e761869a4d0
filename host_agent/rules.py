"""Detection rules file: per-rule overrides and the whitelist (docs/detection.md).

Loaded and reloaded like the policy file: errors name file and line, and a bad file on
reload keeps the rules in force.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from host_agent.detectors.base import Finding
from host_agent.detectors.catalog import RULES
from host_agent.yamlfile import load, loads, unique_ids, validate

Severity = Literal["low", "medium", "high", "critical"]


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regex {v!r}: {e}") from None
    return v


def _known(rule: str) -> str:
    if rule != "*" and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(sorted(RULES))}")
    return rule


class RuleOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    enabled: bool = True
    severity: Severity | None = None
    # "block" needs the detector inside the probe, on the app's thread; until a probe carries
    # one, the file refuses it rather than pretend
    action: Literal["alert"] = "alert"

    _id = field_validator("id")(_known)


class WhitelistEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rule: str = "*"
    process: str | None = Field(None, description="glob on the process exe")
    path: str | None = Field(None, description="glob on the file path (file events)")
    args: str | None = Field(None, description="regex searched in the args joined by spaces")
    request_path: str | None = Field(None, description="regex searched in the request's URL path")
    reason: str = ""

    _rule = field_validator("rule")(_known)
    _re = field_validator("args", "request_path")(_regex)

    @model_validator(mode="after")
    def _has_condition(self) -> WhitelistEntry:
        if not (self.process or self.path or self.args or self.request_path):
            raise ValueError("a whitelist entry needs process, path, args or request_path")
        return self


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[RuleOverride] = Field(default_factory=list)
    whitelist: list[WhitelistEntry] = Field(default_factory=list)


@dataclass
class _Compiled:
    entry: WhitelistEntry
    args_re: re.Pattern[str] | None
    path_re: re.Pattern[str] | None

    def matches(self, rule: str, exe: str, args: list[str], url: str) -> bool:
        e = self.entry
        if e.rule != "*" and e.rule != rule:
            return False
        if e.process and not fnmatch.fnmatchcase(exe, e.process):
            return False
        if e.path and not (args and fnmatch.fnmatchcase(args[0], e.path)):
            return False
        if self.args_re and not self.args_re.search(" ".join(args)):
            return False
        return not (self.path_re and not self.path_re.search(urlsplit(url).path))


@dataclass
class RuleSet:
    source: str = "(built-in)"
    overrides: dict[str, RuleOverride] = field(default_factory=dict)
    whitelist: list[_Compiled] = field(default_factory=list)
    whitelisted: Counter[str] = field(default_factory=Counter)

    def apply(
        self, findings: list[Finding], exe: str, args: list[str], request: Any
    ) -> list[Finding]:
        """Drop disabled and whitelisted findings; apply severity overrides."""
        url = getattr(request, "url", "") if request is not None else ""
        out = []
        for f in findings:
            o = self.overrides.get(f.rule)
            if o is not None and not o.enabled:
                continue
            if any(w.matches(f.rule, exe, args, url) for w in self.whitelist):
                self.whitelisted[f.rule] += 1
                continue
            if o is not None and o.severity and o.severity != f.severity:
                f = Finding(f.rule, o.severity, f.technique, f.message, f.param, f.value)
            out.append(f)
        return out


def _parse(data: Any, lines: dict, source: str) -> RuleSet:
    spec = validate(RulesFile, data, lines, source, "`rules:` and/or `whitelist:`")
    unique_ids([r.id for r in spec.rules], "rules", lines, source, "rule")
    return RuleSet(
        source=source,
        overrides={r.id: r for r in spec.rules},
        whitelist=[
            _Compiled(
                w,
                re.compile(w.args) if w.args else None,
                re.compile(w.request_path) if w.request_path else None,
            )
            for w in spec.whitelist
        ],
    )


def load_rules(path: str | Path) -> RuleSet:
    data, lines = load(path)
    return _parse(data, lines, str(path))


def loads_rules(text: str, source: str = "<rules>") -> RuleSet:
    data, lines = loads(text, source)
    return _parse(data, lines, source)
