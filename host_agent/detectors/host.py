"""Host rules over the driver's events, with the process tree from the process cache.

Falco-style behaviour rules that need no request: a shell whose stdin/stdout is a socket
(reverse shell), a shell started by a web server or an application runtime, ptrace of another
process, executing from a memfd, loading a kernel module, a privilege change to root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from host_agent.detectors.base import Finding

Lookup = Callable[[int], dict[str, Any] | None]

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "csh", "tcsh", "fish", "busybox"})
# parents that serve requests: a shell below them is how command injection shows on the host
RUNTIMES = re.compile(
    r"^(?:python[\d.]*|java|node|nodejs|php[\d.]*|php-fpm[\d.]*|php-cgi[\d.]*|ruby[\d.]*"
    r"|perl|nginx|apache2|httpd|lighttpd|caddy|uwsgi|gunicorn|uvicorn|tomcat\d*|catalina)$"
)
_PTRACE_REQUESTS = frozenset(
    {"PTRACE_ATTACH", "PTRACE_SEIZE", "PTRACE_POKETEXT", "PTRACE_POKEDATA", "PTRACE_POKEUSR"}
)
_EXEC = 59
_PTRACE = 101
_LOAD_MODULE = 603
_CRED = 604
#: the only data_types `check` looks at: the pipeline skips the rules for the others
DATA_TYPES = frozenset({_EXEC, _PTRACE, _LOAD_MODULE, _CRED})


def _fd_is_socket(pid: int, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    except OSError:
        return False


def _base(path: str) -> str:
    return os.path.basename(path.removesuffix(" (deleted)"))


def check(event: dict[str, Any], lookup: Lookup) -> list[Finding]:
    dt = event.get("data_type")
    fields = event.get("driver") or {}
    pid = event["pid"]
    if dt == _EXEC:
        return _exec(event, fields, pid, lookup)
    if dt == _PTRACE:
        target = fields.get("target_pid", 0)
        request = fields.get("ptrace_request_name", "")
        if (
            target
            and target != pid
            and request
            in {"PTRACE_ATTACH", "PTRACE_SEIZE"}
            | {
                "PTRACE_POKETEXT",
                "PTRACE_POKEDATA",
                "PTRACE_POKEUSR",
            }
        ):
            return [
                Finding(
                    "host.ptrace", "high", "T1055.008", f"{request} on pid {target} by pid {pid}"
                )
            ]
        return []
    if dt == _LOAD_MODULE:
        ko = fields.get("ko_file") or " ".join(event.get("args", [])[:1])
        return [Finding("host.module-load", "high", "T1547.006", f"kernel module load: {ko}")]
    if dt == _CRED:
        return [
            Finding(
                "host.privilege-escalation",
                "critical",
                "T1068",
                f"uid {fields.get('old_uid')} -> 0 through {event.get('hook', '?')}",
            )
        ]
    return []


_FD_PATH = re.compile(r"^/(?:proc/(?:self|thread-self|\d+)/fd|dev/fd)/\d+$")


def _exec(event: dict[str, Any], fields: dict[str, Any], pid: int, lookup: Lookup) -> list[Finding]:
    out: list[Finding] = []
    exe = (event.get("process") or {}).get("exe", "") or fields.get("exe", "")
    run_path = fields.get("run_path", "")
    # fileless: a memfd, or any program run through a file descriptor (its file may be gone)
    if (
        exe.startswith("/memfd:")
        or run_path.startswith(("/memfd:", "memfd:"))
        or (_FD_PATH.match(run_path))
    ):
        out.append(
            Finding("host.memfd-exec", "critical", "T1620", f"exec from memory: {run_path or exe}")
        )
    # the path this exec ran first: by the time the event is read, the process may have
    # exec'd again (`sh -c 'exec prog'`), and the cache then holds the later program
    name = _base(run_path) or _base(exe)
    if name not in SHELLS:
        return out
    if _fd_is_socket(pid, 0) or _fd_is_socket(pid, 1):
        out.append(
            Finding("host.reverse-shell", "critical", "T1059.004", f"{name} with a socket as stdio")
        )
    ppid = fields.get("ppid") or (event.get("process") or {}).get("ppid", 0)
    parent = lookup(ppid) if ppid else None
    parent_name = _base((parent or {}).get("exe", ""))
    if parent_name and RUNTIMES.match(parent_name):
        out.append(
            Finding(
                "host.shell-from-runtime",
                "high",
                "T1059",
                f"{parent_name} (pid {ppid}) started {name}: "
                + " ".join(event.get("args", []))[:200],
            )
        )
    return out
