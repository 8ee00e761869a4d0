"""Batches of ring-buffer records (driver/native/rp_drain.c) and their fast decoding.

A batch is a bytes object: per record `[u32 size][u32 0][record][pad to 8]`. The loader
fills batches without the GIL; the agent walks them here:

    for dt, pid, start, size in records(batch):
        if only the pid is needed: ...                 # no decoding at all
        else: e = decode_at(batch, start, size)        # == events.decode(record)

`decode_at` gives the same DriverEvent as `events.decode` (a test compares the two on records
of the real programs) but reads the header with one precompiled struct instead of a ctypes
Structure copy and ~20 attribute reads, keeps the strings it has already decoded (comm,
nodename and addresses repeat from record to record), and decodes the high-volume records
(connect/bind/accept, fork, exit) with structs too; the rare ones go through their ctypes
Structure, read in place (`from_buffer_copy` with an offset: no slice).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from typing import Any

from driver import events as ev

#: rp_hdr: ts, start_time, cgroup_id, data_type, pid, tid, ppid, pgid, sid, uid, euid, gid,
#: pns, nspid, _pad, comm, nodename
HDR = struct.Struct(f"<3Q12I{ev.COMM_LEN}s{ev.NODE_LEN}s")
#: rp_sock after the header: ret, fd, family, port, addr, laddr, lport, sock_type
SOCK = struct.Struct("<qiHH16s16sHH")
FORK = struct.Struct("<QII")  # child_start_time, child_pid, child_ppid
EXIT = struct.Struct("<i")
_SIZE = struct.Struct("<I")
#: rp_hdr.ts, the first field: `TS(batch, start)` reads a record's timestamp alone
TS = struct.Struct("<Q").unpack_from
_DT_PID = struct.Struct("<II")  # data_type, pid: adjacent in rp_hdr
_DT_OFF = ev.rp_hdr.data_type.offset
assert ev.rp_hdr.ts.offset == 0
assert ev.rp_hdr.pid.offset == _DT_OFF + 4 and HDR.size == ev.HDR_SIZE
assert ev.rp_sock.ret.offset == ev.HDR_SIZE and ev.rp_fork.child_start_time.offset == ev.HDR_SIZE

#: the largest record the programs write: the batch always keeps room for one
MAX_RECORD = max(ctypes.sizeof(c) for c in ev.RECORDS.values())
_MIN_SIZE = {dt: ctypes.sizeof(c) for dt, c in ev.RECORDS.items()}

_STR_CACHE_MAX = 4096
_strs: dict[bytes, str] = {}
_ips: dict[int, dict[bytes, str]] = {}  # family -> address bytes -> text


def _s(raw: bytes) -> str:
    s = _strs.get(raw)
    if s is None:
        if len(_strs) >= _STR_CACHE_MAX:
            _strs.clear()
        s = _strs[raw] = ev._s(raw)
    return s


def _ip(family: int, raw: bytes) -> str:
    ips = _ips.get(family)
    if ips is None:
        ips = _ips[family] = {}
    s = ips.get(raw)
    if s is None:
        if len(ips) >= _STR_CACHE_MAX:
            ips.clear()
        s = ips[raw] = ev._ip(family, raw)  # type: ignore[arg-type]
    return s


def records(batch: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(data_type, pid, start, size) of each record in the batch, in ring-buffer order.
    A record too short for a header has data_type 0 (decode_at says why)."""
    off, end = 0, len(batch)
    size_at, dt_pid_at = _SIZE.unpack_from, _DT_PID.unpack_from
    while off < end:
        (size,) = size_at(batch, off)
        start = off + 8
        off = start + ((size + 7) & ~7)
        if size < ev.HDR_SIZE:
            yield 0, 0, start, size
            continue
        dt, pid = dt_pid_at(batch, start + _DT_OFF)
        yield dt, pid, start, size


def split(batch: bytes) -> list[bytes]:
    """Each record of a batch as its own bytes (what `events.decode` takes)."""
    return [batch[start : start + size] for _dt, _pid, start, size in records(batch)]


def check(dt: int, size: int) -> None:
    """Raise ValueError, as events.decode would, for a record that cannot be decoded."""
    if size < ev.HDR_SIZE:
        raise ValueError(f"record of {size} bytes is shorter than the header")
    need = _MIN_SIZE.get(dt)
    if need is None:
        raise ValueError(f"unknown data_type {dt}")
    if size < need:
        raise ValueError(f"data_type {dt}: {size} bytes, expected {need}")


def decode_at(batch: bytes, start: int, size: int) -> ev.DriverEvent:
    """The record at batch[start:start+size] → DriverEvent, equal to events.decode's."""
    if size < ev.HDR_SIZE:
        check(0, size)
    (ts, st, cg, dt, pid, tid, ppid, pgid, sid, uid, euid, gid, pns, nspid, _p, comm, node) = (
        HDR.unpack_from(batch, start)
    )
    need = _MIN_SIZE.get(dt)
    if need is None or size < need:
        check(dt, size)  # raises
    fast = _FAST.get(dt)
    if fast is not None:  # hook, args and fields first: one constructor call, no defaults
        hook, args, fields = fast(dt, batch, start + ev.HDR_SIZE)
        return ev.DriverEvent(
            dt, ts, pid, tid, ppid, pgid, sid, uid, euid, gid, pns, nspid, st, cg,
            _s(comm), _s(node), hook, args, fields,
        )  # fmt: skip
    e = ev.DriverEvent(
        dt, ts, pid, tid, ppid, pgid, sid, uid, euid, gid, pns, nspid, st, cg, _s(comm), _s(node)
    )
    r: Any = ev.RECORDS[dt].from_buffer_copy(batch, start)
    ev._PRIVATE[dt](e, r)
    return e


Private = tuple[str, list[str], dict[str, Any]]


def _sock(dt: int, b: bytes, at: int) -> Private:
    ret, fd, family, port, addr, laddr, lport, sock_type = SOCK.unpack_from(b, at)
    ip = _ip(family, addr)
    if dt == ev.DT_BIND:
        return (
            "bind",
            [ip, str(port)],
            {
                "sa_family": family,
                "res": ret,
                "fd": fd,
                "sock_type": sock_type,
                "sip": ip,
                "sport": port,
            },
        )
    return (
        ev._SOCK_HOOKS[dt],
        [ip, str(port)],
        {
            "sa_family": family,
            "res": ret,
            "fd": fd,
            "sock_type": sock_type,
            "dip": ip,
            "dport": port,
            "sip": _ip(family, laddr),
            "sport": lport,
        },
    )


def _fork(_dt: int, b: bytes, at: int) -> Private:
    child_start, child_pid, child_ppid = FORK.unpack_from(b, at)
    return (
        "sched_process_fork",
        [str(child_pid)],
        {
            "child_pid": child_pid,
            "child_ppid": child_ppid,
            "child_start_time_ns": child_start,
        },
    )


def _exit(_dt: int, b: bytes, at: int) -> Private:
    (code,) = EXIT.unpack_from(b, at)
    return "sched_process_exit", [str(code)], {"exit_code": code}


_FAST = {
    ev.DT_CONNECT: _sock,
    ev.DT_BIND: _sock,
    ev.DT_ACCEPT: _sock,
    ev.DT_FORK: _fork,
    ev.DT_EXIT: _exit,
}
