"""What detectors share: the finding they report and the user inputs they correlate with.

Detectors run in the agent on finished events (hooks stay detector-free, style §1). The
strongest signal is *input correlation*: a request parameter that reaches a sink and changes
its structure (SQL tokens, shell tokens, path components, the host of a URL). Parameters
shorter than `MIN_INPUT` are skipped: they match by chance and cannot carry an attack that
changes structure in a meaningful way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MIN_INPUT = 3
MAX_INPUTS = 64  # parameters looked at per request (bounded work per event)


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str  # "sqli.input", "cmdi.input", ...
    severity: str  # low | medium | high | critical
    technique: str  # MITRE ATT&CK id
    message: str
    param: str = ""  # the request parameter that carried the attack, if any
    value: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "severity": self.severity,
            "technique": self.technique,
            "message": self.message,
        }
        if self.param:
            out["param"] = self.param
            out["value"] = self.value[:256]
        return out


def user_inputs(request: Any) -> Iterator[tuple[str, str]]:
    """(name, value) of each request parameter worth correlating."""
    if request is None:
        return
    params = request.params if hasattr(request, "params") else request.get("params") or {}
    n = 0
    for name, values in params.items():
        for v in values:
            if len(v) >= MIN_INPUT:
                yield name, v
                n += 1
                if n >= MAX_INPUTS:
                    return
