"""Loads the C accelerator of the hot path (`_accel`, rasp/python/native/rampart_accel.c).

Built at set-up for the interpreters the repo uses (CPython 3.11); the import system only
finds it when its ABI tag matches the running interpreter, so any other interpreter (and
any failure to load) keeps the pure-Python path. RAMPART_PYTHON_ACCEL=0 forces it off.
An internal error in the accelerator turns it off for the life of the process: `_fallback`
puts the pure-Python audit hook and `Probe.emit` back in place (docs/python-probe.md).
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("rampart.probe")

#: the loaded C module, or None (pure Python)
mod = None
#: why it is not loaded ("disabled", "unavailable: ...", "failed: ...")
status = "not loaded"
_probe = None


def load():
    """The C module, or None. Never raises."""
    global mod, status
    if mod is not None:
        return mod
    v = os.environ.get("RAMPART_PYTHON_ACCEL", "1").strip().lower()
    if v in ("0", "false", "no", "off", ""):
        status = "disabled"
        return None
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        status = "unavailable: built for CPython 3.11 only"
        return None
    try:
        from . import _accel  # type: ignore[attr-defined]
    except Exception as e:  # ImportError, a bad file: the pure-Python path
        status = f"unavailable: {e!r}"
        return None
    mod = _accel
    status = "loaded"
    return mod


def install(probe) -> bool:
    """Put the probe's hot path in C: the audit hook and `probe.emit`. False: pure Python."""
    global _probe, status
    m = load()
    if m is None:
        return False
    from . import context, core
    from .hooks import audit

    if audit._installed:  # the Python hook is in already (permanent): never both
        status = "unavailable: the pure-Python audit hook is installed"
        return False

    table = {
        name: (kind, extract, importing, _FAST.get(extract.__name__, 0), spec)
        for name, spec in audit.EVENTS.items()
        for kind, extract, importing in (spec,)
    }
    cfg = {
        "py_hook": audit._hook,
        "fallback": _fallback,
        "contextvar": context.current,
        "probe_dir": core._PROBE_DIR,
        "normalise": core._s,
        "blocked": core.RampartBlocked,
        "arg_max": core.ARG_MAX,
        "args_max": core.ARGS_MAX,
        "queue_max": core.QUEUE_MAX,
        "table": audit._table,  # C follows it: popped, cleared or replaced entries
    }
    try:
        m.install(probe, table, cfg)
    except Exception as e:
        status = f"failed: {e!r}"
        return False
    _probe = probe
    probe.emit = m.emit  # the instance's emit: C first, Probe._emit_py when Python must decide
    core._c_stack = m.capture_stack
    return True


def active() -> bool:
    return mod is not None and mod.active()


def _fallback(exc) -> None:
    """Called by the C module when it turns itself off after an internal error."""
    global status
    status = f"failed: {exc!r}"
    from . import core

    core._c_stack = None  # the Python stack walk again
    p = _probe
    if p is not None:
        p.__dict__.pop("emit", None)  # back to Probe.emit
        p.hook_failed("accelerator", exc if isinstance(exc, BaseException) else Exception())
    from .hooks import audit

    audit.fallback()


_FAST = {"_system": 1, "_first": 1, "_two": 2, "_open": 3}
