"""Python glue for `native_agent.js`: inject the Node.js native layer into one live node
process with Frida.

The script is loaded, started (it hooks libuv's sink entry points and opens a socketpair,
the "channel"), then *eternalized* and the Frida session detached: the hooks keep running
inside node, and the JS layer (`lib/native.js`) reads the channel. `load()` returns the fd
of the JS layer's end and its socket inode so the JS layer can check it takes the right fd.
Frida's helper process and `/tmp/frida-*` directories are cleaned up as for the PHP probe
(`rasp.php.php_agent.frida_tmp_cleanup`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasp.php.php_agent import ProbeLoadError, frida_tmp_cleanup

AGENT_JS = Path(__file__).with_name("native_agent.js")
#: how long a second attach waits for a stopping native layer (it checks its channel every
#: 0.5 s)
STOPPING_WAIT_S = 1.5

__all__ = ["NativeLoaded", "ProbeLoadError", "ask", "load", "running"]


@dataclass
class NativeLoaded:
    pid: int
    #: the JS layer's end of the channel in the target, and its inode (`socket:[ino]`)
    fd: int
    channel_ino: int
    hooks: list[str]
    missing: list[str]
    elapsed_ms: float
    already: bool = False
    logs: list[str] = field(default_factory=list)

    def for_js(self) -> dict[str, Any]:
        """What the JS layer's start() gets as `native`."""
        return {"fd": self.fd, "ino": self.channel_ino, "hooks": self.hooks}


def poke_name(pid: int) -> str:
    return f"rampart-node-native-{pid}"


def running(pid: int) -> bool:
    """Whether a native layer listens in `pid` (read in the target's network namespace)."""
    want = " @" + poke_name(pid)
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            return any(line.rstrip().endswith(want) for line in f)
    except OSError:
        return False


def ask(pid: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running native layer's info (channel fd, hooks), or None if nobody answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect("\0" + poke_name(pid))
            # Abstract names are not owned: any local user could bind this one first and hand
            # us an fd of the target's that is not our channel (e.g. an app connection the JS
            # layer would then read from). Only the target itself may answer.
            cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", cred)[0] != pid:
                return None
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
    try:
        return json.loads(data)  # type: ignore[no-any-return]
    except ValueError:
        return None


def channel_ino(pid: int, fd: int) -> int:
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError as e:
        raise ProbeLoadError(f"pid {pid}: the native layer's fd {fd} is gone ({e})") from None
    if not link.startswith("socket:["):
        raise ProbeLoadError(f"pid {pid}: fd {fd} is not the native layer's channel ({link})")
    return int(link[8:-1])


def _already(pid: int, t0: float) -> NativeLoaded | None:
    if not running(pid):
        return None
    # a layer whose reader went away (JS layer stopped) unhooks itself within 0.5 s
    deadline = time.monotonic() + STOPPING_WAIT_S
    while True:
        got = ask(pid)
        if got is not None and got.get("fd", -1) >= 0:
            with contextlib.suppress(ProbeLoadError):
                fd = int(got["fd"])
                return NativeLoaded(
                    pid,
                    fd,
                    channel_ino(pid, fd),
                    list(got.get("hooks", [])),
                    list(got.get("missing", [])),
                    (time.monotonic() - t0) * 1000,
                    already=True,
                )
        if not running(pid) or time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def load(pid: int, timeout: float = 10) -> NativeLoaded:
    """Inject and start the native layer in `pid` (or find the one running there)."""
    import frida  # 150 MB of native code: only loaded by the attacher that needs it

    t0 = time.monotonic()
    found = _already(pid, t0)
    if found is not None:
        return found
    logs: list[str] = []
    with frida_tmp_cleanup():
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
        try:
            script = session.create_script(AGENT_JS.read_text(), name="rampart-node-native")

            def on_message(message: dict[str, Any], _data: Any) -> None:
                if message.get("type") == "error":
                    logs.append(f"error: {message.get('description')}")

            script.on("message", on_message)
            script.load()
            info = script.exports_sync.start()
            script.eternalize()
        except frida.RPCException as e:
            raise ProbeLoadError(f"pid {pid}: native layer failed to start: {e}") from None
        except Exception as e:  # frida raises several types when the target goes away
            if not os.path.exists(f"/proc/{pid}"):
                raise ProbeLoadError(f"pid {pid}: exited during attach", gone=True) from None
            raise ProbeLoadError(f"pid {pid}: {type(e).__name__}: {e}") from None
        finally:
            with contextlib.suppress(Exception):
                session.detach()
    fd = int(info["fd"])
    return NativeLoaded(
        pid=pid,
        fd=fd,
        channel_ino=channel_ino(pid, fd),
        hooks=list(info["hooks"]),
        missing=list(info["missing"]),
        elapsed_ms=(time.monotonic() - t0) * 1000,
        logs=logs,
    )
