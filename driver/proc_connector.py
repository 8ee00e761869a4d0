"""Fallback source of exec/fork/exit events when the eBPF driver cannot load: the kernel's
proc connector (netlink, CONFIG_PROC_EVENTS; pure Python). notes/platform-facts.md says it
needs CAP_NET_ADMIN; on our 6.18 kernel an agent as uid 65534 received events (observed).

It gives pids only, so the facts (argv, exe, uid) are read from /proc when the event arrives,
which races with processes that exit at once: those get the pid and parent, nothing more.
Same `DriverEvent` shapes as the driver (data_types 59/57/60, and 157 for COMM changes),
with `hook` = "proc_connector" and the fields it could read. Other events (connect, ptrace,
...) need the eBPF driver. notes/platform-facts.md §4.6: 1.6k exec/s with no loss.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from driver import events as ev
from injector.process import ProcessError, read_process

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_COMM = 0x1, 0x2, 0x200
PROC_EVENT_EXIT = 0x80000000
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class ProcConnectorError(Exception):
    pass


class ProcConnector:
    """Same reading interface as `driver.loader.Driver`: start, take, flush, stats, stop."""

    def __init__(self, notify: Callable[[], None] | None = None, queue_limit: int = 200_000):
        self.notify = notify or (lambda: None)
        self.queue_limit = queue_limit
        self._sock: socket.socket | None = None
        self._queue: deque[ev.DriverEvent] = deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.received = 0
        self.overruns = 0  # ENOBUFS: the socket buffer overflowed, events were lost (counted)
        self.dropped = 0  # our queue was full
        self._node = os.uname().nodename
        self._mono_to_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()

    def start(self) -> None:
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((0, CN_IDX_PROC))
            body = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(body), 0) + body
            s.send(_NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn)
        except OSError as e:
            raise ProcConnectorError(f"proc connector unavailable: {e.strerror or e}") from None
        s.settimeout(0.2)
        self._sock = s
        self._thread = threading.Thread(target=self._read_loop, name="proc-connector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def running(self) -> bool:
        return self._sock is not None

    def _read_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS: the kernel dropped events for us
                    self.overruns += 1
                    continue
                return
            e = self._parse(data)
            if e is None:
                continue
            self.received += 1
            if len(self._queue) >= self.queue_limit:
                self.dropped += 1
                continue
            self._queue.append(e)
            self.notify()

    def _parse(self, data: bytes) -> ev.DriverEvent | None:
        off = _NLMSG.size + _CN_MSG.size
        if len(data) < off + _EVENT.size:
            return None
        what, _cpu, ts = _EVENT.unpack_from(data, off)
        p = off + _EVENT.size
        ts_boot = ts + self._mono_to_boot
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, cpid, ctgid = struct.unpack_from("=IIII", data, p)
            if cpid != ctgid:
                return None  # a thread
            e = self._event(ev.DT_FORK, ptgid, ts_boot)
            e.hook = "proc_connector"
            e.args = [str(ctgid)]
            e.fields = {
                "child_pid": ctgid,
                "child_ppid": ptgid,
                "child_start_time_ns": self._start_ns(ctgid),
            }
            return e
        if what == PROC_EVENT_EXEC:
            _pid, tgid = struct.unpack_from("=II", data, p)
            return self._exec(tgid, ts_boot)
        if what == PROC_EVENT_EXIT:
            pid, tgid, code, _sig = struct.unpack_from("=IIII", data, p)
            if pid != tgid:
                return None
            e = self._event(ev.DT_EXIT, tgid, ts_boot)
            e.hook = "proc_connector"
            e.args = [str(code)]
            e.fields = {"exit_code": code}
            return e
        if what == PROC_EVENT_COMM:
            _pid, tgid = struct.unpack_from("=II", data, p)
            comm = data[p + 8 : p + 24].split(b"\0", 1)[0].decode("utf-8", "replace")
            e = self._event(ev.DT_PRCTL, tgid, ts_boot)
            e.hook = "proc_connector"
            e.comm = comm
            e.args = ["PR_SET_NAME", comm]
            e.fields = {"option": 15, "new_name": comm}
            return e
        return None

    def _event(self, dt: int, pid: int, ts: int) -> ev.DriverEvent:
        return ev.bare_event(dt, pid, ts, self._node)

    @staticmethod
    def _start_ns(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
            return int(raw[raw.rfind(b")") + 2 :].split()[19]) * NS_PER_TICK
        except (OSError, ValueError, IndexError):
            return 0

    def _exec(self, pid: int, ts: int) -> ev.DriverEvent:
        e = self._event(ev.DT_EXECVE, pid, ts)
        e.hook = "proc_connector"
        try:
            info = read_process(pid)  # races with a process that exits at once
        except ProcessError:
            e.fields = {"argv": "", "run_path": "", "argv_truncated": False}
            return e
        e.ppid, e.uid, e.euid, e.gid, e.comm = info.ppid, info.uid, info.euid, info.gid, info.comm
        e.start_time_ns = info.start_time * NS_PER_TICK
        e.nspid = info.nspid
        e.args = info.cmdline
        e.fields = {
            "argv": " ".join(info.cmdline),
            "run_path": info.exe,
            "argv_truncated": False,
        }
        return e

    def flush(self) -> int:
        return 0  # events arrive on the socket; nothing to pull synchronously

    def take(self) -> list[Any]:
        out = []
        q = self._queue
        while q:
            out.append(q.popleft())
        return out

    def kernel_drops(self) -> int:
        return self.overruns

    def stats(self) -> dict[str, Any]:
        return {
            "mode": "proc-connector",
            "events": ["execve", "exit", "fork", "prctl"],
            "received": self.received,
            "queued": len(self._queue),
            "kernel_drops": self.overruns,
            "dropped": self.dropped,
        }
