"""Sinks seen through PEP 578 audit events (CPython >= 3.8).

Audit events fire in C wherever the call comes from, so they see functions an app bound
before the attach (`from os import system`) that attribute patches miss. A hook cannot be
removed (`sys.addaudithook` is permanent): `uninstall()` empties the table, and the hook
that stays costs one dict lookup per audit event (~135 ns on 3.11, platform-facts §4.2).

The hook name of an event is the audit event's own name (`os.system`, `subprocess.Popen`,
`open`, ...). The interpreter loading its own code is not reported: events raised from
importlib's frames (listdir of sys.path entries, .pyc opens, marshal.loads, exec of module
code), and reads of .py/.pyc files (linecache, tracebacks).
"""

from __future__ import annotations

import sys

from .. import accel, core

NAME = "audit"
_probe = None
_installed = False


def _argv(args):
    if isinstance(args, (str, bytes)):
        return [args]
    try:
        return list(args)
    except TypeError:
        return [args]


def _system(a):
    return [a[0]]


def _popen(a):
    # (executable, args, cwd, env): the argv says what runs; the executable when it differs
    argv = _argv(a[1])
    if a[0] is not None and (not argv or a[0] != argv[0]):
        argv.insert(0, a[0])
    return argv


def _exec(a):  # os.exec: (path, args, env)
    return [a[0], *_argv(a[1])[1:]]


def _spawn(a):  # os.spawn: (mode, path, args, env)
    return [a[1], *_argv(a[2])[1:]]


def _posix_spawn(a):  # (path, argv, env)
    return [a[0], *_argv(a[1])[1:]]


_CODE_SUFFIXES = (".py", ".pyc", b".py", b".pyc")


def _open(a):  # (path, mode, flags); mode is None for os.open
    path, mode, flags = a[0], a[1], a[2]
    if isinstance(path, int):
        return None  # open(fd): the file was reported when it was opened
    if mode is None:
        import os

        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
        mode = "w" if writing else "r"
    elif not any(c in mode for c in "wax+"):
        writing = False
    else:
        writing = True
    if not writing:
        try:
            if path.endswith(_CODE_SUFFIXES):
                return None
        except (AttributeError, TypeError):
            pass
    return [path, mode]


def _first(a):
    return [a[0]]


def _two(a):
    return [a[0], a[1]]


def _connect(a):  # (socket, address)
    addr = a[1]
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        if isinstance(host, str) and ":" in host:
            return [f"[{host}]:{addr[1]}"]
        return [f"{host}:{addr[1]}"]
    return [addr]


def _getaddrinfo(a):  # (host, port, family, type, protocol)
    return [a[0], a[1]]


def _compile(a):  # (source, filename); the source is None/AST for compiles of trees
    src = a[0]
    if not isinstance(src, (str, bytes)):
        src = f"<{type(src).__name__}>"
    return [src, a[1]]


def _exec_code(a):  # (code_object,)
    code = a[0]
    return [getattr(code, "co_filename", "?"), getattr(code, "co_name", "?")]


def _marshal(a):
    data = a[0] if a else b""
    try:
        return [f"<{len(data)} bytes>"]
    except TypeError:
        return ["<data>"]


def _native_import(a):  # (module, filename, sys.path, meta_path, path_hooks)
    if a[1] is None:
        return None  # an import of Python code, or one that is about to look for the module
    return [a[0], a[1]]


#: event -> (kind, args extractor, raised while importing?)  — the hook name is the event
EVENTS = {
    "os.system": ("process", _system, False),
    "subprocess.Popen": ("process", _popen, False),
    "os.exec": ("process", _exec, False),
    "os.spawn": ("process", _spawn, False),
    "os.posix_spawn": ("process", _posix_spawn, False),
    "open": ("file", _open, True),
    "os.remove": ("file", _first, False),
    "os.rename": ("file", _two, False),
    "os.rmdir": ("file", _first, False),
    "os.listdir": ("file", _first, True),
    "os.scandir": ("file", _first, True),
    "shutil.rmtree": ("file", _first, False),
    "socket.connect": ("network", _connect, False),
    "socket.getaddrinfo": ("dns", _getaddrinfo, False),
    "socket.gethostbyname": ("dns", _first, False),
    "compile": ("code", _compile, True),
    "exec": ("code", _exec_code, True),
    "pickle.find_class": ("deserialization", _two, False),
    "marshal.loads": ("deserialization", _marshal, True),
    "ctypes.dlopen": ("library", _first, False),
    "import": ("library", _native_import, False),
}

_table: dict = {}


def _from_importlib() -> bool:
    """True when the audited call comes from importlib (the interpreter loading code)."""
    f = sys._getframe(2)  # 0: here, 1: the audit hook, 2: the caller of the audited call
    fn = f.f_code.co_filename
    return fn.startswith("<frozen importlib") or fn.endswith(
        ("importlib/_bootstrap_external.py", "importlib/_bootstrap.py", "zipimport.py")
    )


def _hook(event, args):
    spec = _table.get(event)
    if spec is None:
        return
    probe = _probe
    if probe is None or not probe.enabled or event in probe.hooks_disabled or core._tls.busy:
        return  # before extracting anything: a muted hook costs a set lookup
    kind, extract, importing = spec
    try:
        if importing and _from_importlib():
            return
        a = extract(args)
        if a is None:
            return
        probe.emit(event, kind, a)
    except core.RampartBlocked:
        raise
    except Exception as e:
        _table.pop(event, None)  # this hook disables itself; the app's call proceeds
        probe.hook_failed(event, e)


def install(probe) -> list:
    global _probe
    _probe = probe
    _table.clear()
    _table.update(EVENTS)
    if not accel.active():  # else the C hook (accel.install) handles these events
        fallback()
    return list(EVENTS)


def fallback() -> None:
    """The pure-Python hook: without the accelerator, or after it turned itself off."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


def uninstall() -> None:
    """Audit hooks are permanent: mute this one (one dict miss per audit event remains)."""
    _table.clear()
    if accel.mod is not None:
        accel.mod.mute()
