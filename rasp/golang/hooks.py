"""Every Go function the probe hooks, declared once: its BPF program, its event, its args.

The index of a hook in HOOKS is the uprobe's attach cookie, which the BPF side copies into
each record (`go_event.hook`). Adding a hook touches its program in bpf/, a row here, and its
test. `symbols` lists the names to resolve, first found wins: an exported wrapper the
compiler inlined into every caller has no symbol left (os.Rename -> os.rename).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: os.O_* flags (syscall values on linux/amd64) for OpenFile's args
_O_FLAGS = (
    (0o1, "O_WRONLY"),
    (0o2, "O_RDWR"),
    (0o100, "O_CREATE"),
    (0o200, "O_EXCL"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4010000, "O_SYNC"),
)


def open_flags(flags: int) -> str:
    names = [name for bit, name in _O_FLAGS if flags & bit == bit]
    if not flags & 0o3:
        names.insert(0, "O_RDONLY")
    return "|".join(names)


def _first(strs: list[str], num: int) -> list[str]:
    return strs[:1]


def _argv(strs: list[str], num: int) -> list[str]:
    """[Cmd.Path, Args[1:]...]: what is exec'd, with the argv the program will see."""
    path, args = strs[0], strs[1:]
    return [path, *args[1:]] if args else [path]


def _open(strs: list[str], num: int) -> list[str]:
    return [strs[0], open_flags(num)]


def _all(strs: list[str], num: int) -> list[str]:
    return list(strs)


def _dial(strs: list[str], num: int) -> list[str]:
    """[host, port, network] of DialContext's (network, "host:port"), as the driver's connect
    events: the host first (the SSRF detector reads args[0]) and the port apart, so a request
    parameter that only chose the port is not taken for the one that chose the target."""
    if len(strs) < 2:
        return list(strs)
    network, address = strs[0], strs[1]
    host, sep, port = address.rpartition(":")
    if not sep:
        return [address, "", network]
    return [host.removeprefix("[").removesuffix("]"), port, network]


def _lookup(strs: list[str], num: int) -> list[str]:
    """[host, network] of lookupIPAddr's (network, host)."""
    return [strs[1], strs[0]] if len(strs) > 1 else list(strs)


@dataclass(frozen=True)
class Hook:
    name: str  # the Go name reported as the event's `hook`
    symbols: tuple[str, ...]  # candidates in the binary, first found wins
    program: str  # BPF function in rasp/golang/bpf/
    kind: str  # event kind (design §4); "" for the request-context hooks
    args: Callable[[list[str], int], list[str]] = _all


_SQL = [
    Hook(f"database/sql.(*{recv}).{method}", (f"database/sql.(*{recv}).{method}",), "go_sql", "sql",
         _first)
    for recv in ("DB", "Conn", "Tx")
    for method in ("QueryContext", "ExecContext", "PrepareContext")
]  # fmt: skip

HOOKS: tuple[Hook, ...] = (
    Hook("net/http.serverHandler.ServeHTTP", ("net/http.serverHandler.ServeHTTP",),
         "go_serve_http", ""),
    Hook("os/exec.(*Cmd).Start", ("os/exec.(*Cmd).Start",), "go_cmd_start", "process", _argv),
    Hook("os.OpenFile", ("os.OpenFile",), "go_open_file", "file", _open),
    Hook("os.Remove", ("os.Remove",), "go_path1", "file"),
    Hook("os.RemoveAll", ("os.RemoveAll", "os.removeAll"), "go_path1", "file"),
    Hook("os.Rename", ("os.Rename", "os.rename"), "go_path2", "file"),
    Hook("net.(*Dialer).DialContext", ("net.(*Dialer).DialContext",), "go_dial", "network",
         _dial),
    Hook("net.(*Resolver).lookupIPAddr", ("net.(*Resolver).lookupIPAddr",), "go_dial", "dns",
         _lookup),
    Hook("net.(*Resolver).LookupHost", ("net.(*Resolver).LookupHost",), "go_lookup_host", "dns",
         _first),
    *_SQL,
)  # fmt: skip

REQUEST_HOOK = 0  # index of ServeHTTP: its records carry the request, not a sink event
#: programs in the object besides the hooks' (go_empty: the benchmark's empty uprobe)
EXTRA_PROGRAMS = ("go_empty",)
PROGRAMS = sorted({h.program for h in HOOKS} | set(EXTRA_PROGRAMS))
ALL_SYMBOLS = [s for h in HOOKS for s in h.symbols]
