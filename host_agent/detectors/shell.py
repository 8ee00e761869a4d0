"""Command injection: user input that changes a shell command's structure.

Only commands a shell will parse are checked: the hooks that take a command line
(`os.system`, `child_process.exec`, PHP `system`, …) and argv of the form `sh -c SCRIPT`.
An argv passed to execve without a shell is not parsed, so "a; b" in one argument is data.
Within the script, the input is an attack when it brings shell operators, substitutions or
redirections (`;`, `|`, `&&`, `$(`, backticks, `>`, newline) outside quotes the app wrote.
"""

from __future__ import annotations

import os
import re

from host_agent.detectors.base import Finding, user_inputs

#: hooks whose first argument is a command line a shell parses
SHELL_HOOKS = frozenset(
    {
        "os.system",
        "os.popen",
        "child_process.exec",
        "child_process.execSync",
        "system",
        "exec",
        "shell_exec",
        "passthru",
        "popen",
        "proc_open",
        "Runtime.exec",
    }
)
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"})

_OPERATORS = re.compile(r"[;&|\n`<>]|\$\(|\$\{")
# quoted spans the app wrote: input inside them is data (the shell does not split it)
_QUOTED = re.compile(r"'[^']*'|\"(?:[^\"\\$`]|\\.)*\"")


def shell_script(hook: str, args: list[str]) -> str | None:
    """The text a shell will parse for this event, or None when no shell is involved."""
    if not args:
        return None
    if hook in SHELL_HOOKS:
        return args[0]
    # argv form: [/bin/sh, -c, script, ...] (subprocess shell=True, ProcessBuilder("sh","-c",…))
    for i, a in enumerate(args[:-1]):
        if os.path.basename(a) in SHELLS and args[i + 1] == "-c" and i + 2 < len(args):
            return args[i + 2]
    # a joined argv string: "/bin/sh -c 'script'"
    first = args[0].split(" ", 2)
    if len(first) == 3 and os.path.basename(first[0]) in SHELLS and first[1] == "-c":
        return first[2]
    return None


def check(hook: str, args: list[str], request: object) -> list[Finding]:
    script = shell_script(hook, args)
    if script is None:
        return []
    quoted = [m.span() for m in _QUOTED.finditer(script)]
    joined = " ".join(args)
    for name, value in user_inputs(request):
        pos = script.find(value)
        if pos < 0:
            # the input may bring the shell itself ("sh -c id;id" split into an argv by the
            # app): then it wrote the whole script, and its syntax is the attack
            if value in joined and _OPERATORS.search(script):
                ops = _OPERATORS.findall(value)
                if ops:
                    return [_finding(name, value, ops)]
            continue
        end = pos + len(value)
        if any(qs < pos and end < qe for qs, qe in quoted):
            continue  # entirely inside quotes the app wrote
        ops = _OPERATORS.findall(value)
        if ops:
            return [_finding(name, value, ops)]
    return []


def _finding(name: str, value: str, ops: list[str]) -> Finding:
    shown = " ".join(sorted({o.replace("\n", "\\n") for o in ops}))
    return Finding(
        "cmdi.input",
        "critical",
        "T1059.004",
        f"request parameter {name!r} adds shell syntax to a command: {shown}",
        name,
        value,
    )
