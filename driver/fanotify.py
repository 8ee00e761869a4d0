"""Fallback source of exec paths and sensitive file writes when the eBPF driver cannot load:
fanotify (CONFIG_FANOTIFY, ctypes over libc), next to the proc connector.

The proc connector gives pids only (its exec facts are read from /proc, which races with
processes that exit at once); fanotify gives the *file*: the kernel opens the file being
exec'd with FMODE_EXEC, which raises FAN_OPEN_EXEC in the exec'ing process (same tgid before
and after the exec), and the event carries an fd of that file, whose path we read from
/proc/self/fd/<fd> even when the process is already gone. notes/platform-facts.md §4.7.

- **exec**: one `DriverEvent` (data_type 59, hook "fanotify", `run_path` = the file) per exec.
  The kernel also opens the script's interpreter (binfmt_script) and the ELF interpreter
  (`PT_INTERP`, ld.so) for exec in the same process; those follow-ups are recognised (we read
  the first page of the exec'd file from the event fd) and folded into `interpreter`, not
  reported as execs of their own.
- **writes**: FAN_CLOSE_WRITE (a file opened for writing was closed) under a
  `driver_open_paths` prefix → data_type 2 (`open`), `write: true`. Matched on the resolved
  path. fanotify cannot tell the open flags at FAN_OPEN time (the event fd is ours, opened
  O_RDONLY), so reads of sensitive files are not reported in this mode.

**The events are read in a child process** (`python -m driver.fanotify FD PID`), never in the
agent: every event hands the reader a new fd of the file, and closing an fd drops *all* the
process's fcntl locks on that file (POSIX). In the agent, an event for its own SQLite store
(`events.db-shm`, written by the agent or by a reader) thus released the agent's locks; the next
reader, seeing none, truncated the shared-memory file under the agent's mapping: SIGBUS. The
child reads the paths (and the exec'd file's first page) and sends records over a pipe.

Needs CAP_SYS_ADMIN (fanotify_init refuses with EPERM otherwise). The queue is the kernel's
default (16384 events, no FAN_UNLIMITED_QUEUE): an overflow arrives as FAN_Q_OVERFLOW and is
counted. Every event fd is closed, also for skipped events (the agent's own pid). The event
fds are opened by the kernel with FMODE_NONOTIFY, so reading them raises no events of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from driver import events as ev

FAN_CLOSE_WRITE = 0x00000008
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_CLASS_NOTIF, FAN_CLOEXEC, FAN_NONBLOCK = 0x0, 0x1, 0x2
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
FAN_NOFD = -1
AT_FDCWD = -100
O_LARGEFILE, O_CLOEXEC = 0o100000, 0o2000000
FANOTIFY_METADATA_VERSION = 3
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
_META = struct.Struct("=IBBHQii")
# child -> agent record: mask, pid, len(path), len(interpreter); then the two strings.
# An overflow is a record with FAN_Q_OVERFLOW; an unreadable path is an empty one.
_REC = struct.Struct("=QiHH")
PATH_MAX_BYTES = 4096

#: where binaries run from and droppers write: the root filesystem, and the usual tmpfs
#: mounts when they are filesystems of their own. A filesystem mark covers every mount of
#: that filesystem (bind mounts too); other filesystems (container overlays, NFS) are not
#: covered (docs/driver.md).
MARKED_PATHS = ("/", "/tmp", "/var/tmp", "/dev/shm", "/run")
EXPECT_LIMIT = 4096  # pids with an interpreter open still expected (bounded)
PT_INTERP = 3


class FanotifyError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_char_p,
    ]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


def follow_up(fd: int) -> str:
    """The file the kernel will open for exec next in this exec: the ELF interpreter of a
    dynamic ELF (PT_INTERP), or the interpreter of a `#!` script; "" for neither."""
    try:
        head = os.pread(fd, 4096, 0)
    except OSError:
        return ""
    if head.startswith(b"#!"):
        # as binfmt_script reads it: up to the newline, and a NUL ends it too (a NUL left in
        # would make every later path call raise ValueError, on the reader thread)
        line = head[2:].split(b"\n", 1)[0].split(b"\0", 1)[0].strip()
        return line.split()[0].decode("utf-8", "replace") if line else ""
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
        return ""
    phoff = struct.unpack_from("<Q", head, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    for i in range(min(phnum, 64)):
        off = phoff + i * phentsize
        if off + 56 > len(head):
            break
        if struct.unpack_from("<I", head, off)[0] == PT_INTERP:
            p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<QQQQ", head, off + 8)
            try:
                raw = os.pread(fd, min(p_filesz, 4096), p_offset)
            except OSError:
                return ""
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return ""


class Fanotify:
    """Same reading interface as `driver.proc_connector.ProcConnector`: start, take, flush,
    stats, stop. Decoded `DriverEvent`s, in the order the kernel queued them."""

    def __init__(
        self,
        open_paths: list[str] | None = None,
        notify: Callable[[], None] | None = None,
        queue_limit: int = 200_000,
    ) -> None:
        self.open_paths = tuple(open_paths or ())
        self.notify = notify or (lambda: None)
        self.queue_limit = queue_limit
        self.self_pid = os.getpid()
        self.marked: list[str] = []
        self._fd = -1  # the pipe from the reader process
        self._child: subprocess.Popen[bytes] | None = None
        self._buf = bytearray()
        self._queue: deque[ev.DriverEvent] = deque()
        self._lock = threading.Lock()  # one reader at a time: keeps the kernel's order
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._expect: dict[int, str] = {}  # pid -> resolved path of the interpreter to come
        self._node = os.uname().nodename
        self.received = 0
        self.overflows = 0  # FAN_Q_OVERFLOW: the kernel queue was full, events were lost
        self.dropped = 0  # our queue was full
        self.skipped_self = 0
        self.unreadable = 0  # the path of the fd could not be read
        self.errors = 0  # events that could not be processed (counted, skipped)

    @property
    def mask(self) -> int:
        return FAN_OPEN_EXEC | (FAN_CLOSE_WRITE if self.open_paths else 0)

    def start(self) -> None:
        libc = _libc()
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK
        fd = libc.fanotify_init(flags, os.O_RDONLY | O_LARGEFILE | O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            why = "needs CAP_SYS_ADMIN" if err == errno.EPERM else os.strerror(err)
            raise FanotifyError(f"fanotify refused ({why})")
        seen: set[int] = set()
        failed: list[str] = []
        for path in MARKED_PATHS:
            try:
                dev = os.stat(path).st_dev
            except OSError:
                continue
            if dev in seen:
                continue
            # a filesystem mark, else (a filesystem without an fsid) a mount mark
            for how in (FAN_MARK_FILESYSTEM, FAN_MARK_MOUNT):
                rc = libc.fanotify_mark(fd, FAN_MARK_ADD | how, self.mask, AT_FDCWD, path.encode())
                if rc == 0:
                    seen.add(dev)
                    self.marked.append(path)
                    break
            else:
                failed.append(f"{path}: {os.strerror(ctypes.get_errno())}")
        if not self.marked:
            os.close(fd)
            raise FanotifyError(f"fanotify marks refused ({'; '.join(failed)})")
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "driver.fanotify", str(fd), str(self.self_pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                pass_fds=(fd,),
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                env={**os.environ, "RAMPART_DISABLE": "1"},  # never a target of auto-attach
            )
        except OSError as e:
            raise FanotifyError(f"fanotify reader process did not start ({e})") from None
        finally:
            os.close(fd)  # the child holds it: event fds must never be opened in the agent
        assert self._child.stdout is not None
        self._fd = self._child.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._thread = threading.Thread(target=self._read_loop, name="fanotify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self._lock:
            self._fd = -1
            child, self._child = self._child, None
        if child is not None:
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set() and self._fd >= 0:
            if poller.poll(200) and self._read() > 0:
                self.notify()

    def flush(self) -> int:
        """Read what the kernel has queued, now, on the caller's thread."""
        return self._read()

    def _read(self) -> int:
        n = 0
        with self._lock:
            while self._fd >= 0:
                try:
                    data = os.read(self._fd, 64 * 1024)
                except BlockingIOError:
                    break
                except OSError:
                    break
                if not data:  # the reader process is gone: say so once, read nothing more
                    self.errors += 1
                    self._fd = -1
                    break
                self._buf += data
                n += self._parse()
        return n

    def _parse(self) -> int:
        n = 0
        off = 0
        buf = self._buf
        while off + _REC.size <= len(buf):
            mask, pid, plen, ilen = _REC.unpack_from(buf, off)
            end = off + _REC.size + plen + ilen
            if end > len(buf):
                break  # the rest of this record comes with the next read
            path = buf[off + _REC.size : off + _REC.size + plen].decode("utf-8", "replace")
            nxt = buf[off + _REC.size + plen : end].decode("utf-8", "replace")
            off = end
            try:
                if mask & FAN_Q_OVERFLOW:
                    self.overflows += 1
                    continue
                self.received += 1
                if pid == self.self_pid:
                    self.skipped_self += 1
                    continue
                if not path:
                    self.unreadable += 1
                    continue
                for e in self._events(mask, path, nxt, pid):
                    if len(self._queue) >= self.queue_limit:
                        self.dropped += 1
                        continue
                    self._queue.append(e)
                    n += 1
            except (OSError, ValueError, struct.error):
                # one odd file must not end the reader thread (and blind the fallback)
                self.errors += 1
        del buf[:off]
        return n

    def _events(self, mask: int, path: str, nxt: str, pid: int) -> list[ev.DriverEvent]:
        out = []
        ts = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if mask & FAN_OPEN_EXEC:
            e = self._exec(pid, path, nxt, ts)
            if e is not None:
                out.append(e)
        if mask & FAN_CLOSE_WRITE and path.startswith(self.open_paths):
            e = self._event(ev.DT_OPEN, pid, ts)
            e.args = [path, "close_write"]
            e.fields = {"filename": path, "write": True}
            out.append(e)
        return out

    def _exec(self, pid: int, path: str, nxt: str, ts: int) -> ev.DriverEvent | None:
        expected = self._expect.pop(pid, None)
        if nxt:
            if len(self._expect) >= EXPECT_LIMIT:  # execs that failed after the open
                self._expect.pop(next(iter(self._expect)))
            self._expect[pid] = os.path.realpath(nxt)
        if expected == path:
            # the interpreter of the exec just reported: folded into it, not an exec of its own
            return None
        e = self._event(ev.DT_EXECVE, pid, ts)
        e.comm = os.path.basename(path)[:15]
        e.args = [path]
        e.fields = {"run_path": path}
        if nxt:
            e.fields["interpreter"] = nxt
        return e

    def _event(self, dt: int, pid: int, ts: int) -> ev.DriverEvent:
        return ev.bare_event(dt, pid, ts, self._node, hook="fanotify")

    def take(self) -> list[Any]:
        out = []
        q = self._queue
        while q:
            out.append(q.popleft())
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "marked": list(self.marked),
            "received": self.received,
            "queued": len(self._queue),
            "overflows": self.overflows,
            "dropped": self.dropped,
            "skipped_self": self.skipped_self,
            "unreadable": self.unreadable,
            "errors": self.errors,
        }


def _reader(fan_fd: int, agent_pid: int) -> None:
    """The child's loop: fanotify events -> records on stdout. Only os calls: this process
    owns the event fds, so closing them cannot touch the agent's file locks."""
    out = sys.stdout.fileno()
    me = os.getpid()
    poller = select.poll()
    poller.register(fan_fd, select.POLLIN)
    while True:
        if not poller.poll(1000):
            if os.getppid() != agent_pid:  # the agent is gone
                return
            continue
        try:
            data = os.read(fan_fd, 64 * 1024)
        except BlockingIOError:
            continue
        recs = []
        off = 0
        while off + _META.size <= len(data):
            length, vers, _r, _mlen, mask, fd, pid = _META.unpack_from(data, off)
            if length < _META.size or vers != FANOTIFY_METADATA_VERSION:
                break
            off += length
            path = nxt = b""
            try:
                if fd >= 0 and pid not in (agent_pid, me):
                    try:
                        link = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
                        path = link.encode("utf-8", "surrogateescape")[:PATH_MAX_BYTES]
                    except OSError:
                        pass
                    if path and mask & FAN_OPEN_EXEC:
                        nxt = follow_up(fd).encode("utf-8", "replace")[:PATH_MAX_BYTES]
            finally:
                if fd >= 0:  # FAN_NOFD for overflows
                    os.close(fd)
            if pid == me:
                continue  # our own opens (there should be none): not the agent's business
            recs.append(_REC.pack(mask, pid, len(path), len(nxt)) + path + nxt)
        if recs:
            blob = memoryview(b"".join(recs))
            try:
                while blob:
                    blob = blob[os.write(out, blob) :]
            except BrokenPipeError:
                return


if __name__ == "__main__":
    _reader(int(sys.argv[1]), int(sys.argv[2]))
