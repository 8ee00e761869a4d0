"""`rasp-attach` logic: detect the runtime, check the agent, inject, wait for the hello.

Each runtime's attacher lives in its own module (`attach_python.py`, `attach_jvm.py`, …)
and registers itself in ATTACHERS; a runtime without one is detected and reported, and the
command fails with a clear reason instead of trying something half-built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from injector.detect import Detection, NotSupported, detect
from injector.process import ProcessDenied, ProcessError, ProcessGone
from rasp.protocol.client import AgentUnavailable, ControlError, control

# Exit codes (docs/cli.md); 2 is click's usage error.
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_PROCESS = 3  # no such pid, zombie
EXIT_NO_AGENT = 4  # no agent listening on the socket
EXIT_TIMEOUT = 5  # the probe did not say hello in time
EXIT_UNSUPPORTED = 6  # not a supported runtime, or no attacher for it, or it refuses attach
EXIT_DENIED = 7  # permission denied


class AttachError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Attacher(Protocol):
    """One per runtime. `attach` injects the probe and returns without waiting for it:
    the caller waits for the probe's hello at the agent."""

    runtime: str

    def attach(self, target: Detection, socket: Path, timeout: float) -> None: ...

    def detach(self, target: Detection, socket: Path, timeout: float) -> None: ...


#: runtime -> module providing `ATTACHER`; a runtime issue adds its line here
ATTACHER_MODULES: dict[str, str] = {
    "python": "injector.attach_python",
    "jvm": "injector.attach_jvm",
    "php": "injector.attach_php",
    "nodejs": "injector.attach_nodejs",
    "golang": "injector.attach_golang",
}


def attacher_for(runtime: str) -> Attacher | None:
    module = ATTACHER_MODULES.get(runtime)
    if module is None:
        return None
    return importlib.import_module(module).ATTACHER  # type: ignore[no-any-return]


@dataclass
class Outcome:
    detection: Detection
    already: bool
    probe: dict[str, Any]


def identify(pid: int, runtime: str = "auto") -> Detection:
    try:
        det = detect(pid)
    except ProcessGone:
        raise AttachError(EXIT_PROCESS, f"pid {pid}: no such process") from None
    except ProcessDenied as e:
        raise AttachError(EXIT_DENIED, str(e)) from None
    except NotSupported as e:
        raise AttachError(EXIT_UNSUPPORTED, str(e)) from None
    except ProcessError as e:
        raise AttachError(EXIT_PROCESS, str(e)) from None
    if runtime != "auto" and runtime != det.runtime:
        raise AttachError(
            EXIT_UNSUPPORTED,
            f"pid {pid} runs {det.runtime} ({det.evidence}), not {runtime}",
        )
    if det.refusal:
        raise AttachError(EXIT_UNSUPPORTED, f"pid {pid} ({det.runtime}): {det.refusal}")
    return det


def _probe_of(socket: Path, pid: int) -> dict[str, Any] | None:
    for row in control(socket, "ps"):
        if row["pid"] == pid and row["state"] == "connected":
            return row  # type: ignore[no-any-return]
    return None


def attach(pid: int, runtime: str, socket: Path, timeout: float) -> Outcome:
    det = identify(pid, runtime)
    attacher = attacher_for(det.runtime)
    if attacher is None:
        version = f" {det.version}" if det.version else ""
        raise AttachError(
            EXIT_UNSUPPORTED,
            f"pid {pid} runs {det.runtime}{version} ({det.evidence}), "
            f"but live attach for {det.runtime} is not available in this version",
        )
    in_agent = getattr(attacher, "attach_in_agent", None)
    if in_agent is not None:  # Go: the agent attaches uprobes itself, no hello to wait for
        try:
            row = in_agent(det, socket, timeout)
        except AgentUnavailable as e:
            raise AttachError(EXIT_NO_AGENT, f"{e} (start it with `rasp-agent run`)") from None
        except ControlError as e:
            raise AttachError(EXIT_FAIL, f"pid {pid}: {e}") from None
        return Outcome(det, already=bool(row.get("already")), probe=row)
    try:
        existing = _probe_of(socket, pid)
        if existing is not None:
            return Outcome(det, already=True, probe=existing)
        control(socket, "attach.expect", {"pid": pid, "runtime": det.runtime})
        attacher.attach(det, socket, timeout)
        probe = control(
            socket, "attach.wait", {"pid": pid, "timeout": timeout}, timeout=timeout + 5
        )
    except AgentUnavailable as e:
        raise AttachError(EXIT_NO_AGENT, f"{e} (start it with `rasp-agent run`)") from None
    except ControlError as e:
        code = EXIT_TIMEOUT if "no hello" in str(e) else EXIT_FAIL
        raise AttachError(code, f"pid {pid}: {e}") from None
    return Outcome(det, already=bool(probe.get("already_running")), probe=probe)


def detach(pid: int, runtime: str, socket: Path, timeout: float) -> Detection:
    """Unloads the probe where the runtime allows it (the JVM: original bytecode restored)."""
    det = identify(pid, runtime)
    attacher = attacher_for(det.runtime)
    if attacher is None:
        raise AttachError(
            EXIT_UNSUPPORTED,
            f"pid {pid}: detach for {det.runtime} is not available in this version",
        )
    try:
        attacher.detach(det, socket, timeout)
    except AgentUnavailable as e:
        raise AttachError(EXIT_NO_AGENT, f"{e} (start it with `rasp-agent run`)") from None
    except ControlError as e:
        raise AttachError(EXIT_FAIL, f"pid {pid}: {e}") from None
    return det
