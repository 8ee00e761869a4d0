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


def check(args: list[str], request: object) -> list[Finding]:
    if not args:
        return []
    path = args[0]
    for name, value in user_inputs(request):
        if value not in path:
            continue
        if _SCHEME.match(value):
            return [
                Finding("path.scheme", "high", "T1005", f"request parameter {name!r} opens a URL "
                        "through a file API", name, value)
            ]  # fmt: skip
        if _TRAVERSAL.search(value) or (value.startswith("/") and path.startswith(value)):
            severity = "critical" if SENSITIVE.search(path) else "high"
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
    if SENSITIVE.search(path) and request is not None:
        return [
            Finding("path.sensitive", "medium", "T1005", f"sensitive file during a request: {path}")
        ]
    return []
