"""Python glue for `php_agent.js`: inject the PHP probe into one live process with Frida.

The script is loaded, started (it finds and hooks the sinks), then *eternalized* and the
Frida session detached: the probe keeps running inside PHP with its own connection to the
agent, and nothing of ours stays attached or running once `load()` returns.

Frida writes a helper (~10 MB) into `/tmp/frida-<hash>/` for the injection, starts it as a
daemon and removes neither; `load()` kills the helper it started (found by pid and by a marker
in its environment, never by name: other tools on the host may be using Frida at the same
time) and removes the `/tmp/frida-*` directories no live process runs from.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import frida

AGENT_JS = Path(__file__).with_name("php_agent.js")
CORE_JS = Path(__file__).with_name("php_agent_core.js")
#: the block-mode detection checks, shared with the Node.js probe (docs/detection.md)
DETECT_JS = Path(__file__).resolve().parents[1] / "nodejs" / "lib" / "detect.js"
PROBE_VERSION = "0.1.0"
FRIDA_TMP_GLOB = "/tmp/frida-*"


class ProbeLoadError(Exception):
    """The probe could not be injected; str() is a one-line reason."""

    def __init__(self, reason: str, gone: bool = False, denied: bool = False) -> None:
        super().__init__(reason)
        self.gone = gone
        self.denied = denied


@dataclass
class Loaded:
    pid: int
    #: True when a probe was already running there: nothing injected, it was asked for a hello
    installed: list[str]
    missing: list[str]
    #: frida attach + script load + start + detach, in ms
    elapsed_ms: float
    logs: list[str] = field(default_factory=list)
    already: bool = False
    #: where elapsed_ms went: attach, script (create + load), start (find + hook), detach
    phases: dict[str, float] = field(default_factory=dict)


def poke_name(pid: int) -> str:
    """The abstract Unix socket a running probe listens on (see listenForPokes): named with
    the pid the probe sees for itself, its namespace pid in a container."""
    return f"rampart-php-{pid}"


def _nspid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NStgid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


def running_probe(pid: int) -> bool:
    """Whether a Rampart PHP probe listens in `pid` (read in the target's network namespace)."""
    want = "@" + poke_name(_nspid(pid))
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            return any(line.rstrip().endswith(" " + want) for line in f)
    except OSError:
        return False


def poke(pid: int, timeout: float = 2.0) -> bool:
    """Ask the probe running in `pid` for a fresh hello; False if nobody answered. Abstract
    socket names live in a network namespace: connect from the target's."""
    from injector.attach_nodejs import in_netns_of

    def connect() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect("\0" + poke_name(_nspid(pid)))
            except OSError:
                return False
        return True

    try:
        return in_netns_of(pid, connect)
    except Exception:  # its network namespace cannot be entered: nobody answered
        return False


def source(socket: Path, role: str, runtime_version: str) -> str:
    config: dict[str, Any] = {
        "socket": str(socket),
        "role": role,
        "runtime_version": runtime_version,
        "probe_version": PROBE_VERSION,
    }
    # RASP_PHP_NATIVE=0: read arguments and stacks from JS instead of the C collector (the
    # benchmark's "before"; also what runs when the CModule cannot be compiled)
    if os.environ.get("RASP_PHP_NATIVE") == "0":
        config["native"] = False
    # the core first: its 'use strict' must open the script to apply to all of it
    return (
        CORE_JS.read_text()
        + detect_source()
        + f"const RAMPART = {json.dumps(config)};\n"
        + AGENT_JS.read_text()
    )


def detect_source() -> str:
    """rasp/nodejs/lib/detect.js as `RampartDetect`, in a function scope of its own (its
    top-level names stay out of the agent's); the same text Node.js requires."""
    return (
        "const RampartDetect = (function () {\nconst module = { exports: {} };\n"
        + DETECT_JS.read_text()
        + "\nreturn module.exports;\n})();\n"
    )


# Frida starts its helper with `--background`: it leaves our process group and is reparented,
# and stays alive after we exit. We mark our environment (the helper inherits it) so we can
# tell *our* helpers from those of other Frida users, and become a child subreaper so the
# daemonized helper is reparented to us and we can reap it (PID 1 does not reap on our hosts).
_OWNER_VAR = "RAMPART_FRIDA_OWNER"
_PR_SET_CHILD_SUBREAPER = 36


def _prepare_owner() -> bytes:
    marker = f"{_OWNER_VAR}={os.getpid()}"
    if os.environ.get(_OWNER_VAR) != str(os.getpid()):
        os.environ[_OWNER_VAR] = str(os.getpid())
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return marker.encode()


def _exe_under(pid: str, dirs: list[str]) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return any(exe.startswith(d + "/") for d in dirs)


def _ours(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


@contextlib.contextmanager
def frida_tmp_cleanup() -> Iterator[None]:
    """Remove the /tmp/frida-* dirs and helper processes Frida created for us."""
    marker = _prepare_owner()
    try:
        yield
    finally:
        # The dir name is a hash of the helper, the same for every attach with one Frida
        # version, so "ours" cannot be told by name: every dir no live process runs from goes.
        new = sorted(glob.glob(FRIDA_TMP_GLOB))
        helpers = [
            p
            for p in os.listdir("/proc")
            if p.isdigit() and _exe_under(p, new) and _ours(p, marker)
        ]
        for p in helpers:
            with contextlib.suppress(OSError):
                os.kill(int(p), signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(int(p), 0)
        for d in new:
            # another Frida user's helper running from it: keep the dir
            if not any(_exe_under(p, [d]) for p in os.listdir("/proc") if p.isdigit()):
                shutil.rmtree(d, ignore_errors=True)


def load(
    pid: int, socket: Path, *, role: str = "worker", runtime_version: str = "", timeout: float = 10
) -> Loaded:
    """Inject and start the probe in `pid`; returns which hooks went in and which are missing."""
    logs: list[str] = []
    phases: dict[str, float] = {}
    t0 = time.monotonic()

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        phases[name] = (now - since) * 1000
        return now

    if running_probe(pid) and poke(pid):
        return Loaded(pid, [], [], (time.monotonic() - t0) * 1000, already=True)
    with frida_tmp_cleanup():
        t = time.monotonic()
        try:
            session = frida.attach(pid)
        except frida.ProcessNotFoundError:
            raise ProbeLoadError(f"pid {pid}: no such process", gone=True) from None
        except frida.PermissionDeniedError as e:
            raise ProbeLoadError(f"pid {pid}: permission denied ({e})", denied=True) from None
        except Exception as e:  # NotSupported, Transport, ProcessNotResponding, ...
            if not os.path.exists(f"/proc/{pid}"):
                raise ProbeLoadError(f"pid {pid}: exited during attach", gone=True) from None
            raise ProbeLoadError(f"pid {pid}: frida could not attach: {e}") from None
        t = lap("attach", t)
        try:
            script = session.create_script(
                source(socket, role, runtime_version), name="rampart-php"
            )

            def on_message(message: dict[str, Any], _data: Any) -> None:
                if message.get("type") == "log":
                    logs.append(str(message.get("payload")))
                elif message.get("type") == "error":
                    logs.append(f"error: {message.get('description')}")

            script.on("message", on_message)
            # console.log arrives here, not as a message (Frida's default prints it on our stdout)
            script.set_log_handler(lambda _level, text: logs.append(str(text)))
            script.load()
            t = lap("script", t)
            info = script.exports_sync.start()
            script.eternalize()
            t = lap("start", t)
        except frida.RPCException as e:
            raise ProbeLoadError(f"pid {pid}: probe failed to start: {e}") from None
        except Exception as e:  # frida raises several types when the target goes away
            if not os.path.exists(f"/proc/{pid}"):
                raise ProbeLoadError(f"pid {pid}: exited during attach", gone=True) from None
            raise ProbeLoadError(f"pid {pid}: {type(e).__name__}: {e}") from None
        finally:
            with contextlib.suppress(Exception):
                session.detach()
            lap("detach", t)
    return Loaded(
        pid=pid,
        installed=list(info["installed"]),
        missing=list(info["missing"]),
        elapsed_ms=(time.monotonic() - t0) * 1000,
        logs=logs,
        phases=phases,
    )
