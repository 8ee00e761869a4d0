"""Every rule the detectors can raise, with its defaults. A rules file may override
severity, action and whether a rule is enabled (docs/detection.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    severity: str
    technique: str
    description: str


_RULES = [
    RuleInfo("sqli.input", "critical", "T1190", "request input changes a SQL query's structure"),
    RuleInfo("sqli.stacked", "high", "T1190", "stacked SQL statements"),
    RuleInfo("sqli.union-null", "high", "T1190", "UNION SELECT padded with NULLs"),
    RuleInfo("sqli.time-based", "high", "T1190", "time-based function in a query"),
    RuleInfo("sqli.outfile", "critical", "T1190", "query writes a file (INTO OUTFILE/DUMPFILE)"),
    RuleInfo("sqli.version-comment", "high", "T1190", "MySQL version comment used for evasion"),
    RuleInfo("cmdi.input", "critical", "T1059.004", "request input adds shell syntax to a command"),
    RuleInfo(
        "cmdi.deserialization",
        "critical",
        "T1059",
        "a command runs from inside deserialization or reflection",
    ),
    RuleInfo("path.traversal", "high", "T1083", "request input leaves the intended directory"),
    RuleInfo("path.scheme", "high", "T1005", "request input makes a file API open a URL"),
    RuleInfo("path.sensitive", "medium", "T1005", "a known secret is read during a request"),
    RuleInfo(
        "path.script-write", "high", "T1505.003", "a server-side script is written (web shell)"
    ),
    RuleInfo("ssrf.internal", "high", "T1190", "request input points the app at an internal host"),
    RuleInfo("ssrf.scheme", "high", "T1190", "request input makes the app fetch a non-HTTP URL"),
    RuleInfo("deser.gadget", "critical", "T1190", "a known gadget class is deserialized"),
    RuleInfo(
        "jndi.remote", "critical", "T1190", "a JNDI lookup of a remote ldap/rmi/dns/iiop name"
    ),
]
RULES: dict[str, RuleInfo] = {r.id: r for r in _RULES}
