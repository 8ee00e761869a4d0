"""Rampart's CPython probe: stdlib only, runs inside any CPython 3.8-3.13.

SDK use, at app start::

    import rampart_probe
    rampart_probe.start()            # socket: RAMPART_SOCKET or /run/rampart/probe.sock

`rasp-attach --pid PID` loads the same package into a running interpreter and calls
`attach(socket)`. Starting twice is a no-op; a second attach makes the running probe
reconnect and say a fresh hello with `already_running: true`. See docs/python-probe.md.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

from . import accel
from .core import DEFAULT_SOCKET, PROBE_VERSION, Probe, RampartBlocked

__all__ = ["PROBE_VERSION", "RampartBlocked", "attach", "probe", "start", "stop"]
__version__ = PROBE_VERSION

_probe = None
_lock = threading.Lock()


def _flag(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    if v is None:
        return default
    return v.strip().lower() not in ("0", "false", "no", "off", "")


def start(socket_path=None, mode: str = "sdk", audit=None):
    """Start the probe once per process and return it.

    `audit=False` (or RAMPART_PYTHON_AUDIT=0) leaves the PEP 578 audit hook out: unlike the
    wrappers it can never be removed from the interpreter once added."""
    global _probe
    from .hooks import MODULES

    with _lock:
        if _probe is not None:
            if mode == "attached":
                _probe.kick(mode)
            return _probe
        path = socket_path or os.environ.get("RAMPART_SOCKET") or DEFAULT_SOCKET
        if audit is None:
            audit = _flag("RAMPART_PYTHON_AUDIT", True)
        p = Probe(path, mode)
        if audit:
            accel.install(p)  # the hot path in C when this interpreter has it; never raises
        for modname in MODULES:
            if modname.endswith(".audit") and not audit:
                continue
            try:
                mod = importlib.import_module(modname)
                p.hooks.extend(mod.install(p))
            except Exception:
                p.missing.append(modname.rsplit(".", 1)[1])
        p.start_thread()
        _probe = p
        return p


def attach(socket_path: str):
    """Entry point of the live-attach bootstrap (injector/attach_python.py)."""
    return start(socket_path, mode="attached")


def probe():
    """The running probe, or None."""
    return _probe


def stop() -> None:
    """Uninstall every hook (the audit hook is muted), restore patched attributes, and say
    exit to the agent. The probe can be started again afterwards."""
    global _probe
    from . import patching
    from .hooks import MODULES

    with _lock:
        p = _probe
        if p is None:
            return
        for modname in MODULES:
            mod = sys.modules.get(modname)
            if mod is not None:
                try:
                    mod.uninstall()
                except Exception:
                    pass
        patching.stop_watching()
        patching.restore_all()
        p.enabled = False
        p.shutdown()
        _probe = None
