"""Live attach to Node.js through its inspector (docs/nodejs-probe.md).

SIGUSR1 makes node open its inspector (a websocket speaking the DevTools protocol); one
`Runtime.evaluate` then `require`s the probe inside the target, and the same expression
schedules `inspector.close()`. While the inspector is open, anyone who can reach its port
can run code in the target, so the window is kept short and its closing is verified: the
port must be gone within 1 s, whether the attach succeeded or not.

Which port: node listens on --inspect-port / --inspect=[host:]port from its command line or
NODE_OPTIONS, else 9229. We never assume: we note the target's listening sockets before the
signal and look for the *new* one that belongs to the target (its inode is one of the
target's fds), so a 9229 held by another process is never mistaken for the target's. If the
port node wants is taken, node fails to open the inspector (it prints "address already in
use" on its own stderr): we report who holds it.

Two layers (docs/nodejs-probe.md): by default the Frida native layer
(`rasp/nodejs/native_agent.py`) goes in first, then the JS layer is started with the native
layer's channel. The native layer failing never fails the JS layer: it is reported on stderr.

The inspector listens in the target's network namespace (a container's loopback), so the
HTTP and websocket work runs in a dedicated thread that first joins that namespace with
setns(2); setns affects only the calling thread, the rest of the injector stays put.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import websocket

from injector import container
from injector.attach import EXIT_FAIL, EXIT_UNSUPPORTED, AttachError
from injector.detect import Detection
from injector.process import PROC, ProcessError, read_process

PROBE = Path(__file__).resolve().parents[1] / "rasp" / "nodejs" / "probe.js"
CLOSER = PROBE.parent / "lib" / "inspector_close.js"
DEFAULT_PORT = 9229
CLOSE_WITHIN = 1.0  # seconds the inspector may stay open after our evaluate's reply
_CLONE_NEWNET = 0x40000000
_TCP_LISTEN = "0A"

# node options that take their value as the next argument (so it is not the script name)
_VALUE_OPTS = {"-r", "--require", "-e", "--eval", "-p", "--print", "--inspect-port",
               "--debug-port", "--import", "--loader", "--experimental-loader", "-C",
               "--conditions", "--title", "--input-type"}  # fmt: skip


@dataclass(frozen=True)
class InspectorOptions:
    disable_sigusr1: bool
    #: the port node will listen on when told (None: default 9229, or node picks; 0: random)
    port: int | None
    #: "--disable-sigusr1 on the command line" / "... in NODE_OPTIONS"
    where: str = ""


def node_options(cmdline: list[str], environ: dict[str, str]) -> list[tuple[str, str]]:
    """(option, where) for node's own options: NODE_OPTIONS first, then the command line up
    to the script (what follows the script belongs to the app, not to node)."""
    out = [(tok, "NODE_OPTIONS") for tok in environ.get("NODE_OPTIONS", "").split()]
    args = cmdline[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        out.append((a, "the command line"))
        if a in _VALUE_OPTS and i + 1 < len(args):
            out.append((f"{a}={args[i + 1]}", "the command line"))
            i += 1
        i += 1
    return out


def _port_of(value: str) -> int | None:
    port = value.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else None


# --inspect-port=N, --inspect=[host:]N, ...: the port node opens its inspector on
_PORT_OPTS = ("--inspect-port", "--debug-port", "--inspect", "--inspect-brk", "--inspect-wait")


def inspector_options(cmdline: list[str], environ: dict[str, str]) -> InspectorOptions:
    disabled, where, port = False, "", None
    for opt, src in node_options(cmdline, environ):
        name, _, value = opt.partition("=")
        if name == "--disable-sigusr1":
            disabled, where = True, f"--disable-sigusr1 in {src}"
        elif name in _PORT_OPTS and value:
            port = _port_of(value)
    return InspectorOptions(disabled, port, where)


def catches_sigusr1(pid: int) -> bool:
    """Has the process installed a SIGUSR1 handler? Node does so early in its start-up; until
    then (or with --disable-sigusr1) the signal's default action would kill the process."""
    try:
        for line in Path(f"{PROC}/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))
    except (OSError, ValueError):
        pass
    return False


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"{PROC}/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


# ------------------------------------------------------------------ listening sockets


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    inode: int


def _hex_addr(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    # /proc prints IPv6 as four host-order 32-bit words
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))


# NETLINK_SOCK_DIAG (linux/sock_diag.h, linux/inet_diag.h): the kernel filters sockets by
# state, so asking for the LISTEN sockets costs the same on a host with 16k connections in
# TIME_WAIT as on an idle one — /proc/<pid>/net/tcp lists them all (~35 ms a read there).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x301
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG_HDR = struct.Struct("=IHHII")
_DIAG_REQ = struct.Struct("=BBBBI48x")  # family, protocol, ext, pad, states, inet_diag_sockid
_TCP_STATE_LISTEN, _TCP_STATE_ESTABLISHED = 10, 1


def _diag_dump(states: int) -> list[tuple[str, int, int, int]]:
    """(local address, local port, remote port, inode) of TCP sockets in `states` (a bit
    mask), in the calling thread's network namespace."""
    out = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2)
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states)
            hdr = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), _SOCK_DIAG_BY_FAMILY,
                                  _NLM_F_REQUEST_DUMP, 1, 0)  # fmt: skip
            nl.send(hdr + body)
            done = False
            while not done:
                buf = nl.recv(1 << 16)
                if not buf:
                    break
                off = 0
                while off + _NLMSG_HDR.size <= len(buf):
                    length, kind = _NLMSG_HDR.unpack_from(buf, off)[:2]
                    if kind == _NLMSG_DONE:
                        done = True
                        break
                    if kind == _NLMSG_ERROR:
                        raise OSError("sock_diag dump refused")
                    m = off + _NLMSG_HDR.size  # struct inet_diag_msg
                    sport, dport = struct.unpack_from(">HH", buf, m + 4)
                    raw = buf[m + 8 : m + 8 + (4 if family == socket.AF_INET else 16)]
                    inode = struct.unpack_from("=I", buf, m + 68)[0]
                    out.append((str(ipaddress.ip_address(raw)), sport, dport, inode))
                    if length < _NLMSG_HDR.size:
                        done = True
                        break
                    off += (length + 3) & ~3
    return out


def _proc_tcp(pid: int) -> list[tuple[str, int, int, int, str]]:
    """(local address, local port, remote port, inode, state) from /proc/<pid>/net/tcp{,6}."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"{PROC}/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            addr, port = f[1].split(":")
            out.append((_hex_addr(addr), int(port, 16), int(f[2].split(":")[1], 16),
                        int(f[9]), f[3]))  # fmt: skip
    return out


def tcp_listeners(pid: int) -> list[Listener]:
    """LISTEN sockets of the target's network namespace (all processes in it)."""
    try:
        rows = in_netns_of(pid, lambda: _diag_dump(1 << _TCP_STATE_LISTEN))
        return [Listener(host, port, inode) for host, port, _, inode in rows]
    except OSError:
        return [Listener(h, p, i) for h, p, _, i, st in _proc_tcp(pid) if st == _TCP_LISTEN]


def socket_inodes(pid: int) -> set[int]:
    out = set()
    fd_dir = f"{PROC}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return out
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"{fd_dir}/{fd}")
            if link.startswith("socket:["):
                out.add(int(link[8:-1]))
    return out


def own_listeners(pid: int) -> set[Listener]:
    inodes = socket_inodes(pid)
    return {s for s in tcp_listeners(pid) if s.inode in inodes}


def holder_of(pid: int, port: int) -> str:
    """Who holds `port` in the target's namespace: "pid N (comm)" when we can tell."""
    inodes = {s.inode for s in tcp_listeners(pid) if s.port == port}
    if not inodes:
        return ""
    for entry in os.listdir(PROC):
        if entry.isdigit() and int(entry) != pid and socket_inodes(int(entry)) & inodes:
            try:
                comm = Path(f"{PROC}/{entry}/comm").read_text().strip()
            except OSError:
                comm = "?"
            return f"pid {entry} ({comm})"
    return "another process"


# ------------------------------------------------------------------ network namespace

_T = TypeVar("_T")


def _netns_ino(pid: int | str) -> int:
    return os.stat(f"{PROC}/{pid}/ns/net").st_ino


def in_netns_of(pid: int, fn: Callable[[], _T]) -> _T:
    """Run fn in a dedicated thread that joined the target's network namespace first."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            if _netns_ino(pid) != _netns_ino("thread-self"):
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"{PROC}/{pid}/ns/net", os.O_RDONLY)
                try:
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise AttachError(
                            EXIT_FAIL,
                            f"cannot enter the network namespace of pid {pid}: {os.strerror(err)}",
                        )
                finally:
                    os.close(fd)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name=f"rampart-netns-{pid}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------ DevTools protocol


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _ws_url(listener: Listener, timeout: float) -> str:
    conn = http.client.HTTPConnection(_connect_host(listener.host), listener.port, timeout=timeout)
    try:
        conn.request("GET", "/json/list")
        targets = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    for t in targets:
        if t.get("webSocketDebuggerUrl"):
            return str(t["webSocketDebuggerUrl"])
    raise AttachError(EXIT_FAIL, f"the inspector on port {listener.port} lists no target")


@dataclass(frozen=True)
class Session:
    """Our DevTools session's socket as the target holds it (its fd number and inode)."""

    fd: int
    inode: int


def session_socket(pid: int, inspector_port: int, client_port: int) -> Session | None:
    """The target's end of our websocket: the connection from `client_port` to the inspector."""
    try:
        rows = in_netns_of(pid, lambda: _diag_dump(1 << _TCP_STATE_ESTABLISHED))
    except OSError:
        rows = [(h, p, d, i) for h, p, d, i, _ in _proc_tcp(pid)]
    for _, sport, dport, inode in rows:
        if sport != inspector_port or dport != client_port:
            continue
        link = f"socket:[{inode}]"
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"{PROC}/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{PROC}/{pid}/fd/{fd}") == link:
                        return Session(int(fd), inode)
    return None


Expression = str | Callable[[Session | None], str]


def evaluate(pid: int, listener: Listener, expression: Expression, timeout: float) -> Any:
    """One Runtime.evaluate over the target's websocket; returns the value or raises.

    `expression` may be a function of our session's socket in the target (see
    rasp/nodejs/lib/inspector_close.js for why the target wants to know it)."""
    url = _ws_url(listener, timeout)
    ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
    try:
        if callable(expression):
            session = session_socket(pid, listener.port, ws.sock.getsockname()[1])
            expression = expression(session)
        ws.send(
            json.dumps(
                {
                    "id": 1,
                    "method": "Runtime.evaluate",
                    "params": {
                        "expression": expression,
                        "includeCommandLineAPI": True,
                        "returnByValue": True,
                    },
                }
            )
        )
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == 1:
                break
    finally:
        # close at once: node's inspector.close() waits for connected sessions to go away
        ws.close()
    if "error" in reply:
        raise AttachError(EXIT_FAIL, f"inspector error: {reply['error'].get('message')}")
    result = reply["result"]
    if "exceptionDetails" in result:
        d = result["exceptionDetails"]
        text = d.get("exception", {}).get("description") or d.get("text", "exception")
        raise AttachError(EXIT_FAIL, f"the probe failed in the target: {text.splitlines()[0]}")
    return result.get("result", {}).get("value")


def close_expression(session: Session | None, base: Path | None = None) -> str:
    """Have the target close its inspector once our session has hung up (not at once: see
    rasp/nodejs/lib/inspector_close.js). `base`: a copy of the probe directory placed in the
    target's root (a container), else ours."""
    arg = json.dumps({"fd": session.fd, "inode": session.inode}) if session else ""
    closer = CLOSER if base is None else base / "lib" / CLOSER.name
    return f"require({json.dumps(str(closer))}).closeWhenIdle({arg})"


def probe_expression(call: str, close: bool, base: Path | None = None) -> Expression:
    """`require` the probe and run `call` on it; in a finally, have the target close its
    inspector once our session has hung up, so it closes even when the probe throws. Should
    the closer itself fail to load, fall back to a plain close after 300 ms."""
    if close:
        return lambda session: _probe_expression(call, close_expression(session, base), base)
    return _probe_expression(call, "", base)


def _probe_expression(call: str, close: str, base: Path | None) -> str:
    closing = (
        f"try {{ {close}; }} catch (e) {{"
        " const i = require('inspector'); setTimeout(() => i.close(), 300); }"
        if close
        else ""
    )
    probe = json.dumps(str(PROBE if base is None else base / PROBE.name))
    return f"(() => {{ try {{ return require({probe}).{call}; }} finally {{ {closing} }} }})()"


# ------------------------------------------------------------------ the attacher


def _wait_new_listener(
    pid: int, before: set[Listener], want: int | None, timeout: float
) -> Listener | None:
    deadline = time.monotonic() + timeout
    while True:
        new = own_listeners(pid) - before
        if want:
            new = {s for s in new if s.port == want}
        if new:
            return min(new, key=lambda s: s.port)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def wait_closed(pid: int, listener: Listener, timeout: float = CLOSE_WITHIN) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not os.path.exists(f"{PROC}/{pid}"):
            return True
        if all(s.inode != listener.inode for s in tcp_listeners(pid)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


LAYERS = ("js", "native")


class NodeAttacher:
    runtime = "nodejs"
    #: how long the last run took from SIGUSR1 to the inspector verified closed (benchmarks)
    last_ms = 0.0
    #: how long the native layer's injection took (Frida attach + load + detach), ms
    last_native_ms = 0.0
    #: which layers `attach` injects (`rasp-attach --layers`)
    layers: tuple[str, ...] = LAYERS

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        opts: dict[str, Any] = {"socket": str(socket), "mode": "attached"}
        # refusals first: a native layer in a process the JS layer cannot join reports nothing
        self.preflight(target.pid)
        base = self._base(target.pid, socket, opts)
        if "native" in self.layers:
            native = self.attach_native(target.pid, timeout)
            if native is not None:
                opts["native"] = native
        value = self.run(target, f"start({json.dumps(opts)})", timeout, base)
        status = value.get("native") if isinstance(value, dict) else None
        if "native" in opts and status not in ("ok", "already"):
            warn(f"pid {target.pid}: native layer not connected to the JS layer: {status}")

    def attach_native(self, pid: int, timeout: float) -> dict[str, Any] | None:
        """Inject the Frida native layer; None (and a warning) when it cannot go in."""
        from rasp.nodejs import native_agent  # frida is heavy: only when asked for

        try:
            loaded = native_agent.load(pid, timeout)
        except native_agent.ProbeLoadError as e:
            if e.gone:
                raise AttachError(EXIT_FAIL, str(e)) from None
            warn(f"native layer not attached ({e}); attaching the JS layer alone")
            return None
        except Exception as e:  # frida missing or broken: the JS layer still goes in
            warn(f"native layer not attached ({type(e).__name__}: {e}); JS layer alone")
            return None
        self.last_native_ms = loaded.elapsed_ms
        return loaded.for_js()

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        base = self._base(target.pid, socket, {})
        self.run(target, "stop()", timeout, base)
        if base is not None:  # stopped: what was placed in its /tmp can go now
            container.release(target.pid)

    def _base(self, pid: int, socket: Path, opts: dict[str, Any]) -> Path | None:
        """None when the target sees our files; in another root (a container), the copy of
        the probe directory placed there, and `opts["socket"]` the agent socket bound in
        (injector/container.py)."""
        try:
            foreign = container.is_foreign(pid)
        except container.ContainerError as e:
            raise AttachError(EXIT_FAIL, str(e)) from None
        if not foreign:
            return None
        try:
            placed = container.place(pid, {"nodejs": PROBE.parent}, socket)
        except container.ContainerError as e:
            raise AttachError(EXIT_FAIL, str(e)) from None
        opts["socket"] = placed.socket(socket)
        return Path(placed.inside) / "nodejs"

    def preflight(self, pid: int) -> InspectorOptions:
        """The refusals that need no signal: raises AttachError, else the inspector options."""
        try:
            info = read_process(pid)
        except ProcessError as e:
            raise AttachError(EXIT_FAIL, str(e)) from None
        opts = inspector_options(info.cmdline, _environ(pid))
        if opts.disable_sigusr1:
            raise AttachError(
                EXIT_UNSUPPORTED,
                f"pid {pid} (nodejs) runs with {opts.where}: its inspector cannot be opened "
                f"from outside; start it with the SDK (node -r {PROBE.parent}/register.js)",
            )
        if not catches_sigusr1(pid):
            raise AttachError(
                EXIT_FAIL,
                f"pid {pid} (nodejs) does not handle SIGUSR1 (yet?): the signal would kill it; "
                "retry once it has started",
            )
        return opts

    def run(self, target: Detection, call: str, timeout: float, base: Path | None = None) -> Any:
        pid = target.pid
        opts = self.preflight(pid)
        before = own_listeners(pid)
        want = opts.port if opts.port else (None if opts.port == 0 else DEFAULT_PORT)
        # an inspector the app opened itself (--inspect): use it, and leave it open
        preexisting = next((s for s in before if want and s.port == want), None)
        if preexisting is not None:
            expr = probe_expression(call, close=False, base=base)
            return in_netns_of(pid, lambda: evaluate(pid, preexisting, expr, timeout))
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGUSR1)
        listener = _wait_new_listener(pid, before, want, min(timeout, 5.0))
        if listener is None:
            port = want or DEFAULT_PORT
            holder = holder_of(pid, port)
            if holder:
                raise AttachError(
                    EXIT_FAIL,
                    f"pid {pid}: node could not open its inspector: port {port} is already "
                    f"in use by {holder}",
                )
            raise AttachError(
                EXIT_FAIL, f"pid {pid}: no inspector came up after SIGUSR1 (port {port})"
            )
        failure: BaseException | None = None
        value = None
        try:
            expr = probe_expression(call, close=True, base=base)
            value = in_netns_of(pid, lambda: evaluate(pid, listener, expr, timeout))
        except BaseException as e:
            failure = e
        if not wait_closed(pid, listener):
            # our expression's close did not run (it never reached the target): try again
            # with a bare close, then say loudly if it still stays open
            with contextlib.suppress(Exception):
                bare = functools.partial(close_expression, base=base)
                in_netns_of(pid, lambda: evaluate(pid, listener, bare, timeout))
            if not wait_closed(pid, listener):
                raise AttachError(
                    EXIT_FAIL,
                    f"pid {pid}: THE INSPECTOR STAYS OPEN on {listener.host}:{listener.port} "
                    "(anyone reaching it can run code in the process); restart the process"
                    + (f"; attach failed: {failure}" if failure else ""),
                )
        self.last_ms = (time.perf_counter() - t0) * 1000
        if failure is not None:
            if isinstance(failure, AttachError):
                raise failure
            raise AttachError(EXIT_FAIL, f"pid {pid}: inspector: {failure}") from failure
        return value


def warn(message: str) -> None:
    print(f"rasp-attach: warning: {message}", file=sys.stderr, flush=True)


ATTACHER = NodeAttacher()
