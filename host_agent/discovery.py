"""New processes, as they exec: the kernel's proc connector (netlink), read on the event loop.

Fallback discovery for when the eBPF driver is not running: it needs root (CAP_NET_ADMIN)
and gives pids only (platform notes §4.6: 0 loss at 1.6k exec/s). Exec and exit events are
enough for auto-attach; the periodic /proc rescan catches anything missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("rampart.discovery")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_TWO_PIDS = struct.Struct("=ii")  # exec: pid, tgid; exit: pid, tgid (then codes)


class ProcConnector:
    """Calls on_exec(tgid) / on_exit(tgid) for every process on the host."""

    def __init__(self, on_exec: Callable[[int], None], on_exit: Callable[[int], None]) -> None:
        self.on_exec = on_exec
        self.on_exit = on_exit
        self.sock: socket.socket | None = None
        self.events = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe; raises OSError (EPERM without CAP_NET_ADMIN)."""
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind((os.getpid(), CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
            s.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn)
        except OSError:
            s.close()
            raise
        s.setblocking(False)
        self.sock = s
        loop.add_reader(s.fileno(), self._read)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _read(self) -> None:
        assert self.sock is not None
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:  # ENOBUFS: the kernel dropped events; the rescan catches up
                log.warning("proc connector: %s", e)
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length = _NLMSGHDR.unpack_from(data, off)[0]
            if length < _NLMSGHDR.size:
                return
            body = off + _NLMSGHDR.size + _CN_MSG.size
            if body + _EVENT_HDR.size + _TWO_PIDS.size <= off + length:
                what = _EVENT_HDR.unpack_from(data, body)[0]
                _pid, tgid = _TWO_PIDS.unpack_from(data, body + _EVENT_HDR.size)
                if what == PROC_EVENT_EXEC:
                    self.events += 1
                    self.on_exec(tgid)
                elif what == PROC_EVENT_EXIT and _pid == tgid:  # the process, not a thread
                    self.events += 1
                    self.on_exit(tgid)
            off += (length + 3) & ~3
