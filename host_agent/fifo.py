"""The probe transport for JVMs without Unix-domain sockets (JDK 8-15): a FIFO pair per pid.

JDK 8-15 cannot open a Unix socket, and TCP on loopback has no SO_PEERCRED: any local
process could connect and claim a pid. Instead, when `rasp-attach` attaches such a JVM it
asks the agent (`attach.fifo`, a root-only control command) for a channel bound to that one
pid: a directory `<socket dir>/fifo/<pid>/` owned by the agent (mode 0711: others may
traverse it, never create, rename or replace anything in it) holding two FIFOs owned by the
JVM's uid/gid with mode 0600:

- `up`: probe → agent frames (the agent reads; the probe opens it write-only);
- `down`: agent → probe frames (policy tables, errors; the probe opens it read-only).

Who may speak: the kernel lets only the JVM's uid (and root) open the FIFOs, and the frames
are taken as coming from the pid the pair was made for — the same rules as a socket peer
(the hello's pid must be that pid or its namespace pid; `mode: attached` needs the attach
record). At the hello the agent also checks that the bound pid holds `up` open
(/proc/<pid>/fd), so a pair whose JVM has not opened it speaks for no one. Another process
of the same uid could open the FIFOs too; it could equally ptrace the JVM and make it send
anything (same uid, no Yama here), so that adds no power a socket peer of that uid lacks.

One session = one pair of FIFO inodes: when a session ends (the probe closed `up`, the
agent refused or superseded it, the agent stops), both FIFOs are unlinked and, while the
pid lives, made anew at the same paths. The probe's old descriptors then point at orphaned
inodes: its next write fails (EPIPE) and its reader sees end-of-file, so it reconnects
(opens the paths again) and says hello, exactly as after a socket closed. A half-written
frame of an old session can never leak into a new one. When the pid is gone, or the agent
stops, the directory is removed: nothing is left behind. So is it when the session ends
after the probe said `exit` (detached, or its JVM shutting down): that probe will not open
the paths again, and a later attach asks for a new pair. For a JVM in a container the
directory is bound into its mount namespace (injector/container.py): same inodes, so none
of the above changes.

The agent holds `up` with O_RDONLY|O_NONBLOCK (epoll reports nothing until a writer has
come, and end-of-file once every writer left) and `down` with O_RDWR|O_NONBLOCK (never
blocks, never ENXIO; the probe's read-only open never waits while the agent lives).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host_agent.server import PeerConnection
from injector.process import ProcessError, start_time

if TYPE_CHECKING:
    from host_agent.daemon import Agent

log = logging.getLogger("rampart.fifo")

READ_CHUNK = 64 << 10
WATCH_S = 5.0  # how often a pair checks that its pid still lives


class FifoError(Exception):
    pass


def fifo_root(socket: Path) -> Path:
    return socket.parent / "fifo"


def clear_stale(socket: Path) -> None:
    """At agent start: pairs left by an agent that died cannot be served; remove them."""
    root = fifo_root(socket)
    if root.is_dir() and not root.is_symlink() and root.stat().st_uid == os.geteuid():
        shutil.rmtree(root, ignore_errors=True)


class FifoTransport(asyncio.Transport):
    """The part of asyncio.Transport a PeerConnection uses, over one session's two FIFOs."""

    def __init__(self, pair: FifoPair, up: int, down: int) -> None:
        super().__init__()
        self.pair = pair
        self.up = up
        self.down = down
        self._buf = bytearray()
        self._closing = False
        self._reading = True
        self._writing = False
        self.protocol: FifoPeer | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"fifo": str(self.pair.dir)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the connection itself refuses a peer past WRITE_BUFFER_LIMIT

    def get_write_buffer_size(self) -> int:
        return len(self._buf)

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._buf += data
        self._flush()

    def _flush(self) -> None:
        loop = self.pair.loop
        while self._buf:
            try:
                n = os.write(self.down, self._buf)
            except BlockingIOError:
                break  # the probe reads slowly: wait until the FIFO drains
            except OSError as e:
                log.warning("pid %d: writing to the probe's FIFO: %s", self.pair.pid, e)
                self._buf.clear()
                break
            del self._buf[:n]
        if self._buf and not self._writing:
            self._writing = True
            loop.add_writer(self.down, self._flush)
        elif not self._buf and self._writing:
            self._writing = False
            loop.remove_writer(self.down)

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self.pair.loop.remove_reader(self.up)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self.pair.loop.add_reader(self.up, self.pair.readable)

    def close(self) -> None:
        """End this session (refused, superseded, timed out, agent stopping)."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            if self._buf:  # the error frame that says why, best effort
                os.write(self.down, self._buf)
        self.pair.end_session(self)

    def abort(self) -> None:
        self.close()

    def probe_left(self) -> bool:
        """Did this session's probe say `exit` (detach, JVM shutdown)?"""
        peer = self.protocol
        return peer is not None and peer.probe is not None and peer.probe.state == "exited"


class FifoPeer(PeerConnection):
    """A PeerConnection whose peer is the pid its FIFO pair was made for (no SO_PEERCRED)."""

    def __init__(self, agent: Agent, pair: FifoPair) -> None:
        super().__init__(agent)
        self.pair = pair

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, FifoTransport)
        self.transport = transport
        self.peer_pid, self.peer_uid = self.pair.pid, self.pair.uid
        self.agent.connections.add(self)
        self._arm(self.agent.settings.hello_timeout, "timeout", "no frame received in time")
        if self.agent.paused_globally:
            self.pause("backlog")

    @property
    def who(self) -> str:
        return f"fifo peer pid={self.peer_pid} uid={self.peer_uid}"

    def _hello(self, msg: Any) -> None:
        if not self.pair.holder_has_up():
            self.refuse("unauthorized", f"pid {self.pair.pid} does not hold its FIFO open")
            return
        super()._hello(msg)

    def _second_hello(self, msg: Any) -> None:
        # On a second attach the JVM probe says hello again on its live stream (a socket
        # probe reconnects instead; for a FIFO, closing and reopening `up` would race the
        # holder check below). A probe that did reopen `up` before the agent read the
        # end-of-file lands here too: same inode, one stream. The holder check runs again in
        # _hello, so this is a re-hello from the bound pid, not a protocol error: refusing it
        # would end the session and lose the frames written behind it.
        self._hello(msg)


class FifoPair:
    """The FIFO channel bound to one pid; serves one session at a time."""

    def __init__(self, agent: Agent, pid: int, uid: int, gid: int) -> None:
        self.agent = agent
        self.loop = asyncio.get_running_loop()
        self.pid, self.uid, self.gid = pid, uid, gid
        self.start_time = start_time(pid)
        self.dir = fifo_root(agent.settings.socket) / str(pid)
        self.transport: FifoTransport | None = None
        self.closed = False
        self._ino = (0, 0)
        self._watch: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- set-up

    def create(self) -> None:
        root = self.dir.parent
        root.mkdir(mode=0o711, exist_ok=True)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise FifoError(f"{root} is not a directory of the agent's own, closed to writes")
        if self.dir.exists() or self.dir.is_symlink():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o711)
        os.chmod(self.dir, 0o711)  # the umask may have cut it
        self._new_session()
        self._watch = self.loop.call_later(WATCH_S, self._check_alive)

    def _check_alive(self) -> None:
        """A JVM that died without ever connecting (or after detach) leaves no files."""
        if self.closed:
            return
        if not self.alive():
            self.close()
            return
        self._watch = self.loop.call_later(WATCH_S, self._check_alive)

    def _new_session(self) -> None:
        up, down = self.dir / "up", self.dir / "down"
        for p in (up, down):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
            os.mkfifo(p, 0o600)
            # the directory is ours and closed to others: no one can swap the path meanwhile
            os.chown(p, self.uid, self.gid)
            os.chmod(p, 0o600)
        up_fd = os.open(up, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        down_fd = os.open(down, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        st = os.fstat(up_fd)
        self._ino = (st.st_dev, st.st_ino)
        self.transport = FifoTransport(self, up_fd, down_fd)
        self.loop.add_reader(up_fd, self.readable)

    # ----------------------------------------------------------------- sessions

    def readable(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        try:
            data = os.read(t.up, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            log.warning("pid %d: reading its FIFO: %s", self.pid, e)
        if t.protocol is None:
            if not data:
                return  # nothing yet
            t.protocol = FifoPeer(self.agent, self)
            t.protocol.connection_made(t)
        if not data:  # every writer left: the probe closed or died
            t._closing = True
            self.end_session(t)
            return
        t.protocol.data_received(data)

    def end_session(self, t: FifoTransport) -> None:
        if t is not self.transport:
            return
        self.transport = None
        self.loop.remove_reader(t.up)
        if t._writing:
            self.loop.remove_writer(t.down)
        os.close(t.up)
        os.close(t.down)
        left = t.probe_left()
        if t.protocol is not None:
            t.protocol.connection_lost(None)
        if self.closed:
            return
        if left or not self.alive():  # no one will open these paths again
            self.close()
            return
        try:
            self._new_session()
        except OSError as e:
            log.warning("pid %d: cannot renew its FIFO pair: %s", self.pid, e)
            self.close()

    def alive(self) -> bool:
        try:
            return start_time(self.pid) == self.start_time
        except ProcessError:
            return False

    def holder_has_up(self) -> bool:
        """Does the bound pid itself hold this session's `up` FIFO open?"""
        fds = Path(f"/proc/{self.pid}/fd")
        try:
            for fd in os.scandir(fds):
                with contextlib.suppress(OSError):
                    st = os.stat(fd.path)
                    if (st.st_dev, st.st_ino) == self._ino:
                        return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        """The pid is gone, detached or the agent stops: end the session, remove the files."""
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
        if self.transport is not None:
            self.transport.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.agent.fifos.pop(self.pid, None)


def open_pair(agent: Agent, pid: int) -> Path:
    """`attach.fifo`: the pair for `pid` (made on first use, reused after); its directory."""
    for other in list(agent.fifos.values()):  # JVMs that died before they ever connected
        if not other.alive():
            other.close()
    pair = agent.fifos.get(pid)
    t = pair.transport if pair is not None else None
    left = t is not None and t.probe_left()  # detached, its session not ended yet: renew
    if pair is not None and not pair.closed and pair.alive() and not left:
        return pair.dir
    if pair is not None:
        pair.close()
    try:
        st = os.stat(f"/proc/{pid}")
    except FileNotFoundError:
        raise FifoError(f"no process {pid}") from None
    pair = FifoPair(agent, pid, st.st_uid, st.st_gid)
    try:
        pair.create()
    except OSError as e:
        shutil.rmtree(pair.dir, ignore_errors=True)
        raise FifoError(f"cannot make the FIFO pair for pid {pid}: {e}") from None
    agent.fifos[pid] = pair
    log.info("FIFO pair for pid %d (uid %d) at %s", pid, pair.uid, pair.dir)
    return pair.dir
