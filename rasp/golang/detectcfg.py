"""The block-mode detection rules of a Go process, as the kernel check applies them.

The agent sends every probe its rules in block mode with their whitelist exemptions
(host_agent/rules.py `detect_rules`); the Go probe's check runs in the kernel
(bpf/go_detect.h) and reads them from the `go_detect_cfg` map, per pid. The kernel cannot run
a regex, so an exemption is applied there only when it is a request path written as a literal
(`^/x$`: exactly that path; `^/x`: paths starting with it), at most GO_EXEMPTS of them. A rule
with any other exemption (`args`, `path`, another regex) is left out of the kernel's table: it
is never blocked for that process (a whitelisted finding must never be blocked), the agent
still detects and alerts, and the reason is in `notes` (shown by `rasp-agent ps --json`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rasp.golang.records import GO_EX_MAX, GO_EXEMPTS, RULES, go_detect_cfg
from rasp.protocol.schema import DetectRule

CODES = {rule: code for code, rule in RULES.items()}
_SPECIAL = frozenset("\\.^$|?*+()[]{}")


@dataclass
class KernelDetect:
    rules: list[str] = field(default_factory=list)  # in block mode in the kernel
    notes: list[str] = field(default_factory=list)  # why a rule is not
    exempts: list[tuple[str, bool, str]] = field(default_factory=list)  # (path, prefix, rule)

    def config(self) -> go_detect_cfg | None:
        if not self.rules:
            return None
        cfg = go_detect_cfg()
        for r in self.rules:
            cfg.rules |= 1 << CODES[r]
        by_path: dict[tuple[str, bool], int] = {}
        for path, prefix, rule in self.exempts:
            by_path[(path, prefix)] = by_path.get((path, prefix), 0) | 1 << CODES[rule]
        for i, ((path, prefix), bits) in enumerate(by_path.items()):
            ex = cfg.ex[i]
            ex.rules, ex.prefix, ex.len, ex.path = bits, int(prefix), len(path), path.encode()
        cfg.nexempt = len(by_path)
        return cfg


def literal_path(regex: str) -> tuple[str, bool] | None:
    """(path, prefix) of an anchored literal request-path regex, or None."""
    if not regex.startswith("^"):
        return None
    body, prefix = regex[1:], True
    if body.endswith("$") and not body.endswith("\\$"):
        body, prefix = body[:-1], False
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():
            out.append(body[i + 1])
            i += 2
            continue
        if c in _SPECIAL:
            return None
        out.append(c)
        i += 1
    path = "".join(out)
    if not path or len(path.encode()) >= GO_EX_MAX:
        return None
    return path, prefix


def kernel_detect(detect: Iterable[DetectRule]) -> KernelDetect:
    out = KernelDetect()
    for d in detect:
        if d.rule not in CODES:
            continue  # no kernel check for it (sqli.stacked, ...): the agent still alerts
        paths = []
        why = ""
        for e in d.exempt:
            lit = literal_path(e.request_path) if e.request_path else None
            if e.args or e.path or lit is None:
                why = "an exemption other than a literal request path"
                break
            paths.append(lit)
        if not why and len(out.exempts) + len(paths) > GO_EXEMPTS:
            why = f"more than {GO_EXEMPTS} exemptions"
        if why:
            out.notes.append(f"{d.rule}: not blocked in the kernel ({why}); detected by the agent")
            continue
        out.rules.append(d.rule)
        out.exempts += [(p, prefix, d.rule) for p, prefix in paths]
    return out
