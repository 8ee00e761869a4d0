"""Live attach to a HotSpot JVM in pure Python: the Attach API's wire protocol, no second JVM.

What the JDK's own `VirtualMachine.attach` + `loadAgent` do, in ~40 ms instead of ~300 ms
(docs/jvm-probe.md has the figures):

1. The JVM starts its attach listener lazily. If `/tmp/.java_pid<nspid>` (the JVM's /tmp,
   reached through /proc/<pid>/root) is not a socket yet, create `.attach_pid<nspid>` in the
   JVM's working directory (or its /tmp), send SIGQUIT, and wait for the socket. The JVM's
   signal handler sees the file and starts the listener instead of printing a thread dump.
2. Connect to the socket and send `1\\0load\\0instrument\\0false\\0<jar>=<args>\\0`: protocol
   version 1, command `load`, the JPLIS library `instrument`, not an absolute path, and the
   agent jar with its options. The reply is a status line (0 = the command ran) and the
   command's result (`return code: N` on JDK 9+, `N` on JDK 8; 0 = agentmain returned).
3. Remove the `.attach_pid` file we created, whatever happened.

SIGQUIT is only sent (when no listener runs yet) to a process that is a JVM *ready* for it:
libjvm mapped, a thread named "Signal Dispatcher" running (it is started late in JVM
start-up, and never with -Xrs), SIGQUIT caught (SigCgt). Anything else would kill the process
or make it print a thread dump: an uncaught SIGQUIT terminates and dumps core. A JVM started
with -Xrs starts its listener at start-up instead, so it is attached without a signal.
-XX:+DisableAttachMechanism is refused earlier, by detection (Detection.refusal), without
touching the process.

HotSpot checks the peer of the attach socket (and JDK 8 the owner of the .attach_pid file):
same effective uid/gid as the JVM (JDK 9+ also accepts root). So when we run as root and the
JVM as another user, the file is created and the socket connected with our effective ids
switched to the JVM's (setegid/seteuid, restored right after). `rasp-attach` is a
single-threaded process, so the switch cannot leak into another thread's work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import socket as socketlib
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from injector import container
from injector.attach import EXIT_DENIED, EXIT_FAIL, EXIT_UNSUPPORTED, AttachError
from injector.detect import Detection
from injector.process import PROC
from rasp.protocol.client import control

#: The agent jar `make setup` builds (scripts/build.d/30-jvm-agent.sh).
# published by scripts/build.d/30-jvm-agent.sh (copy + rename: never rewritten under a JVM)
AGENT_JAR = Path(__file__).resolve().parents[1] / "build/jvm/rampart-jvm-agent.jar"

SIGNAL_DISPATCHER = "Signal Dispatch"  # "Signal Dispatcher", cut to 15 chars in comm
_SIGQUIT_BIT = 1 << (signal.SIGQUIT - 1)
_REPLY_CAP = 64 << 10


class JvmAttacher:
    runtime = "jvm"

    def __init__(self, jar: Path = AGENT_JAR) -> None:
        self.jar = jar

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        # JDK 8-15 have no Unix-domain sockets: the agent makes a FIFO pair bound to this pid
        # (host_agent/fifo.py); `jvm_transport: fifo` takes that route on every JDK
        fifo: Path | None = None
        forced = control(socket, "ping", timeout=timeout).get("jvm_transport") == "fifo"
        if forced or self.spec_version(target, timeout) < 16:
            fifo = Path(control(socket, "attach.fifo", {"pid": target.pid}, timeout=timeout)["dir"])
        sock_in, fifo_in = self._paths_in(target.pid, socket, fifo)
        options = f"action=attach;socket={_quote(sock_in)}"
        if fifo_in is not None:
            options += f";fifo={_quote(fifo_in)}"
        self.load(target, options, timeout)

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        self.load(target, "action=detach", timeout)
        # in a container: the keeper unmounts the socket (and the FIFO pair) and removes the
        # private directory; the detached probe uses neither
        with contextlib.suppress(container.ContainerError):
            if container.is_foreign(target.pid):
                container.release(target.pid)

    def _paths_in(self, pid: int, socket: Path, fifo: Path | None) -> tuple[str, str | None]:
        """The agent socket and the FIFO pair's directory as the JVM sees them: bound into a
        container's root (injector/container.py), the same ones on every attach (a running
        probe keeps the paths it started with)."""
        try:
            if not container.is_foreign(pid):
                return str(socket), None if fifo is None else str(fifo)
            placed = container.placed(pid, socket, fifo)
        except container.ContainerError as e:
            raise AttachError(EXIT_FAIL, str(e)) from None
        return placed.socket(socket), placed.fifo if fifo is not None else None

    def spec_version(self, target: Detection, timeout: float) -> int:
        """The JVM's `java.specification.version` as a major number (1.8 -> 8), asked of
        its attach listener (`properties`), so no guess from paths."""
        reply = self._request(target, ["properties"], timeout).decode("utf-8", "replace")
        for line in reply.splitlines():
            if line.startswith("java.specification.version="):
                value = line.split("=", 1)[1].strip().removeprefix("1.")
                major = value.split(".")[0]
                if major.isdigit():
                    return int(major)
        raise AttachError(EXIT_FAIL, f"pid {target.pid}: the JVM did not tell its version")

    def load(self, target: Detection, options: str, timeout: float) -> str:
        """Loads the agent jar into the JVM with `options`; returns the JVM's reply text."""
        jar = self.jar.resolve()
        if not jar.is_file():
            raise AttachError(EXIT_FAIL, f"JVM agent jar {jar} is missing: run `make setup`")
        data = jar.read_bytes()  # with our own ids: the JVM's user may not read it
        reply = self._request(
            target, ["load", "instrument", "false"], timeout, (jar, data, options)
        )
        return _check_reply(target.pid, reply)

    def _request(
        self,
        target: Detection,
        command: list[str],
        timeout: float,
        agent: tuple[Path, bytes, str] | None = None,
    ) -> bytes:
        """Starts the listener if needed and sends one command; `agent` (jar, its bytes,
        options) appends `<jar as the JVM sees it>=<options>` to a `load`."""
        pid = target.pid
        ids = _ids(pid)
        with _as_user(ids.uid, ids.gid):
            if agent is not None:
                jar, data, options = agent
                command = [*command, f"{jar_in_target(pid, jar, data)}={options}"]
            sock_path = start_listener(pid, ids.nspid, timeout)
            try:
                return _request(sock_path, command, timeout)
            except ConnectionRefusedError:
                # A socket file nobody listens on: left by a JVM that died with the same
                # pid. HotSpot recreates its socket when a trigger comes and the file is
                # gone, so remove the dead one and start the listener properly.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sock_path)
                sock_path = start_listener(pid, ids.nspid, timeout)
                return _request(sock_path, command, timeout)


ATTACHER = JvmAttacher()


# ------------------------------------------------------------------------------ the jar


def jar_in_target(pid: int, jar: Path, data: bytes) -> str:
    """The agent jar's path as the JVM sees it.

    Our jar itself when the JVM sees the same file at the same path (same mount namespace,
    or a container with it mounted) and its user may read it. Otherwise a copy in the JVM's
    /tmp named
    by the jar's content, written with our effective ids already switched to the JVM's. The
    copy stays: the JVM reads classes from it for as long as it runs.

    The JVM's /tmp is reached through /proc/<pid>/root: a container may have made `tmp` a
    symlink, which would resolve against *our* root, so it is opened as a directory with
    O_NOFOLLOW and the file is created relative to it (O_EXCL, O_NOFOLLOW), then renamed.
    """
    # readable by the JVM's user at that path (we run with its ids here): the same content
    # there is the same jar; a jar under a directory that user cannot traverse (/root/...),
    # or not there at all (a container), gets copied
    with contextlib.suppress(OSError), open(f"{PROC}/{pid}/root{jar}", "rb") as f:
        if f.read(len(data) + 1) == data:
            return str(jar)
    name = f"rampart-jvm-agent-{hashlib.sha256(data).hexdigest()[:16]}.jar"
    try:
        tmp = os.open(f"{PROC}/{pid}/root/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise AttachError(EXIT_FAIL, f"pid {pid}: cannot open the JVM's /tmp: {e}") from None
    try:
        with contextlib.suppress(OSError):
            st = os.stat(name, dir_fd=tmp, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
                return f"/tmp/{name}"  # copied by an earlier attach (the name is the content)
        part = f".{name}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(part, flags, 0o644, dir_fd=tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(part, name, src_dir_fd=tmp, dst_dir_fd=tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part, dir_fd=tmp)
            raise
    except OSError as e:
        raise AttachError(EXIT_FAIL, f"pid {pid}: cannot copy the agent jar in: {e}") from None
    finally:
        os.close(tmp)
    return f"/tmp/{name}"


# ------------------------------------------------------------------------------ readiness


def check_ready(pid: int) -> None:
    """Raises AttachError unless `pid` is a JVM that will handle SIGQUIT as an attach request."""
    base = f"{PROC}/{pid}"
    try:
        maps = Path(f"{base}/maps").read_bytes()
        status = Path(f"{base}/status").read_text()
        cmdline = Path(f"{base}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        raise AttachError(3, f"pid {pid}: no such process") from None
    except PermissionError:
        raise AttachError(EXIT_DENIED, f"pid {pid}: permission denied reading {base}") from None
    if b"/libjvm.so" not in maps:
        raise AttachError(EXIT_UNSUPPORTED, f"pid {pid}: libjvm.so is not mapped (not a JVM yet)")
    if b"-Xrs" in cmdline or b"-XX:+ReduceSignalUsage" in cmdline:
        raise AttachError(
            EXIT_UNSUPPORTED, f"pid {pid}: started with -Xrs: it does not handle SIGQUIT, no attach"
        )
    caught = _status_field(status, "SigCgt")
    if caught is None or not int(caught, 16) & _SIGQUIT_BIT:
        raise AttachError(
            EXIT_UNSUPPORTED,
            f"pid {pid}: the JVM does not catch SIGQUIT (still starting, or -Xrs): "
            "not signalling it",
        )
    if not _has_thread(pid, SIGNAL_DISPATCHER):
        raise AttachError(
            EXIT_UNSUPPORTED,
            f"pid {pid}: the JVM has no Signal Dispatcher thread yet (still starting): "
            "try again in a moment",
        )


def _has_thread(pid: int, name: str) -> bool:
    try:
        tids = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            if Path(f"{PROC}/{pid}/task/{tid}/comm").read_text().rstrip("\n") == name:
                return True
        except OSError:
            continue  # a thread that just ended
    return False


def _status_field(status: str, name: str) -> str | None:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None


class _Ids:
    def __init__(self, nspid: int, uid: int, gid: int) -> None:
        self.nspid, self.uid, self.gid = nspid, uid, gid


def _ids(pid: int) -> _Ids:
    """The pid in the JVM's own namespace (NStgid's last field: the JVM names its files
    with it) and its effective uid/gid."""
    status = Path(f"{PROC}/{pid}/status").read_text()
    nstgid = _status_field(status, "NStgid")
    nspid = int(nstgid.split()[-1]) if nstgid else pid
    uids = (_status_field(status, "Uid") or "0 0").split()
    gids = (_status_field(status, "Gid") or "0 0").split()
    return _Ids(nspid, int(uids[1]), int(gids[1]))


@contextlib.contextmanager
def _as_user(uid: int, gid: int) -> Iterator[None]:
    """Effective uid/gid of the JVM for the file and the connect (see the module doc)."""
    my_uid, my_gid = os.geteuid(), os.getegid()
    if my_uid == uid and my_gid == gid:
        yield
        return
    if my_uid != 0:
        raise AttachError(
            EXIT_DENIED,
            f"the JVM runs as uid {uid}; attach as that user or as root (we are uid {my_uid})",
        )
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(my_uid)
        os.setegid(my_gid)


# ------------------------------------------------------------------------------ listener


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def start_listener(pid: int, nspid: int, timeout: float) -> str:
    """The path (from our namespace) of the JVM's attach socket, starting the listener if
    needed. Leaves no .attach_pid file behind."""
    sock_path = f"{PROC}/{pid}/root/tmp/.java_pid{nspid}"
    if _is_socket(sock_path):
        # a listener from an earlier attach, or one the JVM started at start-up (it does
        # with -Xrs, as it cannot be signalled): no signal needed
        return sock_path
    check_ready(pid)
    trigger = _create_trigger(pid, nspid)
    try:
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not _is_socket(sock_path):
            if time.monotonic() > deadline:
                raise AttachError(
                    5,
                    f"pid {pid}: the JVM did not start its attach listener within {timeout}s "
                    "(is attach disabled, e.g. -XX:+DisableAttachMechanism in a flags file?)",
                )
            if not os.path.exists(f"{PROC}/{pid}"):
                raise AttachError(3, f"pid {pid}: the JVM exited during attach")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(trigger)
    return sock_path


def _create_trigger(pid: int, nspid: int) -> str:
    """`.attach_pid<nspid>` where HotSpot looks: its working directory first, then /tmp."""
    last: OSError | None = None
    for d in (f"{PROC}/{pid}/cwd", f"{PROC}/{pid}/root/tmp"):
        if d.endswith("/tmp") and not stat.S_ISDIR(os.lstat(d).st_mode):
            continue  # a container's /tmp symlink would resolve against our root: not there
        path = f"{d}/.attach_pid{nspid}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            return path
        except OSError as e:  # read-only or foreign cwd: try /tmp
            last = e
    code = EXIT_DENIED if last and last.errno in (errno.EACCES, errno.EPERM) else EXIT_FAIL
    raise AttachError(code, f"pid {pid}: cannot create the attach trigger file: {last}")


def _request(sock_path: str, args: list[str], timeout: float) -> bytes:
    s = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path)
        except ConnectionRefusedError:
            raise
        except PermissionError as e:
            raise AttachError(EXIT_DENIED, f"attach socket {sock_path}: {e}") from None
        except OSError as e:
            raise AttachError(EXIT_FAIL, f"attach socket {sock_path}: {e}") from None
        # protocol version "1", then exactly three arguments, each NUL-terminated
        args = [*args, "", "", ""][:4]
        s.sendall(b"1\0" + b"".join(a.encode() + b"\0" for a in args))
        chunks: list[bytes] = []
        size = 0
        while size < _REPLY_CAP:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except TimeoutError:
        raise AttachError(5, f"the JVM did not answer on {sock_path} within {timeout}s") from None
    finally:
        s.close()


def _check_reply(pid: int, reply: bytes) -> str:
    text = reply.decode("utf-8", "replace")
    lines = text.splitlines()
    if not lines or not lines[0].strip().lstrip("-").isdigit():
        raise AttachError(EXIT_FAIL, f"pid {pid}: unexpected attach reply {text[:200]!r}")
    if int(lines[0]) != 0:
        raise AttachError(EXIT_FAIL, f"pid {pid}: attach refused: {' '.join(lines[1:])[:300]}")
    result = lines[1].strip() if len(lines) > 1 else "0"
    code = result.removeprefix("return code:").strip()
    if code.lstrip("-").isdigit() and int(code) != 0:
        raise AttachError(
            EXIT_FAIL,
            f"pid {pid}: the agent failed to start (return code {code}); "
            "its reason is on the JVM's stderr",
        )
    if not code.lstrip("-").isdigit():
        raise AttachError(EXIT_FAIL, f"pid {pid}: the agent failed to load: {result[:300]}")
    return text


def _quote(value: str) -> str:
    """Agent options are `key=value;...`: percent-encode what would split them."""
    return quote(value, safe="/._-~+,@:")
