"""Path traversal and sensitive files.

A request parameter that ends up in a file path and climbs out of where the app put it
(`../`, an absolute path, their URL-encoded forms), or a file API opening a URL scheme.
Reads of well-known secrets are flagged on their own, more strongly with user input.
"""

from __future__ import annotations

import re

from host_agent.detectors.base import Finding, user_inputs

_TRAVERSAL = re.compile(r"(?:^|[\\/])\.\.(?:[\\/]|$)|%2e%2e|\.\.%2f|%252e", re.I)
_SCHEME = re.compile(r"^(?:file|php|phar|zip|data|expect|glob|jar|netdoc|gopher)://", re.I)
SENSITIVE = re.compile(
    r"^/etc/(?:passwd|shadow|gshadow|sudoers)$|^/proc/(?:self|\d+)/(?:environ|mem|maps|cmdline)$"
    r"|/\.ssh/(?:id_[a-z0-9]+|authorized_keys)$|/\.aws/credentials$|/\.kube/config$"
    r"|/\.bash_history$|^/root/"
)


SCRIPT_EXTENSIONS = frozenset(
    {"php", "php3", "php4", "php5", "php7", "phtml", "phar", "jsp", "jspx", "jspf", "asp",
     "aspx", "ashx", "cgi", "pl"}
)  # fmt: skip
_WRITE_HOOK = re.compile(r"write|put|rename|copy|move|upload|FileOutputStream", re.I)


def _maybe_sensitive(path: str) -> bool:
    """Cheap gate before the SENSITIVE regex (every file event of a request passes here)."""
    return path.startswith(("/etc/", "/proc/", "/root/")) or "/." in path


def _writes(hook: str, args: list[str]) -> bool:
    """Does this file event write? From the hook's name or an fopen-style mode argument."""
    if _WRITE_HOOK.search(hook):
        return True
    return any(
        len(a) <= 4 and a and set(a) <= set("rwaxbt+") and set(a) & set("wax+") for a in args[1:3]
    )


def check(args: list[str], request: object, hook: str = "") -> list[Finding]:
    if not args:
        return []
    path = args[-1] if "rename" in hook or "copy" in hook or "move" in hook else args[0]
    ext = path.rpartition(".")[2].lower()
    if request is not None and ext in SCRIPT_EXTENSIONS and _writes(hook, args):
        return [
            Finding(
                "path.script-write",
                "high",
                "T1505.003",
                f"a server-side script is written during a request: {path}",
            )
        ]
    for name, value in user_inputs(request):
        if value not in path:
            continue
        if _SCHEME.match(value):
            return [
                Finding("path.scheme", "high", "T1005", f"request parameter {name!r} opens a URL "
                        "through a file API", name, value)
            ]  # fmt: skip
        if _TRAVERSAL.search(value) or (value.startswith("/") and path.startswith(value)):
            severity = "critical" if _maybe_sensitive(path) and SENSITIVE.search(path) else "high"
            return [
                Finding(
                    "path.traversal",
                    severity,
                    "T1083",
                    f"request parameter {name!r} leaves the directory the app chose: {path}",
                    name,
                    value,
                )
            ]
    if request is not None and _maybe_sensitive(path) and SENSITIVE.search(path):
        return [
            Finding("path.sensitive", "medium", "T1005", f"sensitive file during a request: {path}")
        ]
    return []
