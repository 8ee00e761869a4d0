"""Detection rules file: per-rule overrides and the whitelist (docs/detection.md).

Loaded and reloaded like the policy file: errors name file and line, and a bad file on
reload keeps the rules in force.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from host_agent.detectors.base import Finding
from host_agent.detectors.catalog import RULES
from host_agent.yamlfile import load, loads, unique_ids, validate
from rasp.protocol.schema import DETECT_RULES, Block, BlockData, DetectExempt, DetectRule

_NAMESPACE = uuid.UUID("0b5e2d1c-9a4f-4c1e-8d33-5f0e6a7b2c19")  # block-table uuids with rules

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
    # "block" needs the check inside the probe, on the app's thread: only the rules probes
    # carry a check for (DETECT_RULES) may block; the file refuses the others
    action: Literal["alert", "block"] = "alert"

    _id = field_validator("id")(_known)

    @model_validator(mode="after")
    def _blockable(self) -> RuleOverride:
        if self.action == "block" and self.id not in DETECT_RULES:
            raise ValueError(
                f"rule {self.id!r} cannot block (probes check only {', '.join(DETECT_RULES)} "
                "on the app's thread); use action: alert"
            )
        return self


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

    def detect_rules(self, exe: str) -> list[DetectRule]:
        """The block-mode rules for a probe whose process runs `exe` ("" when unknown), with
        the whitelist entries that concern them as exemptions. The process condition is
        settled here: an entry for another program is left out, one for this program (or an
        unknown one: exempting too much never blocks a whitelisted finding) drops it."""
        out = []
        for rid, o in sorted(self.overrides.items()):
            if o.action != "block" or not o.enabled:
                continue
            exempt = []
            for w in self.whitelist:
                e = w.entry
                if e.rule not in ("*", rid):
                    continue
                if e.process and exe and not fnmatch.fnmatchcase(exe, e.process):
                    continue
                exempt.append(
                    DetectExempt(
                        request_path=e.request_path,
                        args=e.args,
                        path=glob_regex(e.path) if e.path else None,
                    )
                )
            out.append(DetectRule(rule=rid, exempt=exempt))
        return out


def with_detect(frames: list[Any], detect: list[DetectRule]) -> tuple[list[Any], str]:
    """The policy's frames with `detect` added to its block table, and that table's uuid
    (derived from the policy's and the rules', so it changes when either does)."""
    out: list[Any] = []
    block_uuid = ""
    for f in frames:
        if isinstance(f, Block):
            canonical = msgspec.json.encode(detect).decode()
            block_uuid = str(uuid.uuid5(_NAMESPACE, f.data.uuid + canonical))
            f = Block(data=BlockData(uuid=block_uuid, blocks=f.data.blocks, detect=detect))
        out.append(f)
    return out, block_uuid


_REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}/")


def glob_regex(glob: str) -> str:
    """An anchored regex in the syntax common to Python, Java and JavaScript that matches what
    fnmatch.fnmatchcase(name, glob) matches (`*` crosses `/`, as it does there)."""
    out = ["^"]
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append("[\\s\\S]*")
        elif c == "?":
            out.append("[\\s\\S]")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")  # no closing bracket: a literal "[", as fnmatch reads it
                continue
            body = glob[i:j].replace("\\", "\\\\")
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        elif c in _REGEX_SPECIAL:
            out.append("\\" + c)
        else:
            out.append(c)
    out.append("$")
    return "".join(out)


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
