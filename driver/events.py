"""The driver's ring-buffer records, mirrored from driver/bpf/rampart.h, and their decoding.

Each ctypes Structure here has the name of its C struct; `driver.btfcheck` compares sizes
and member offsets with the BTF of the built object at every load, so the two cannot drift.
Decoding turns a record into a `DriverEvent`: Elkeid's common fields, the private fields
under Elkeid's names (`argv`, `dip`, `dport`, `ptrace_request`, ...), and `args`/`hook`
for the stored event (design §4).
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass, field
from typing import Any

COMM_LEN, NODE_LEN, PATH_LEN, ARGV_LEN, DNS_LEN, FSTYPE_LEN, NAME_LEN = (
    16,
    64,
    256,
    1024,
    256,
    32,
    16,
)

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s32, s64 = ctypes.c_int32, ctypes.c_int64
char = ctypes.c_char

# data_type numbers (Elkeid's; fork and exit are ours, the x86-64 syscall numbers)
DT_OPEN = 2
DT_CONNECT = 42
DT_BIND = 49
DT_ACCEPT = 43
DT_FORK = 57
DT_EXECVE = 59
DT_EXIT = 60
DT_PTRACE = 101
DT_PRCTL = 157
DT_MOUNT = 165
DT_MEMFD_CREATE = 356
DT_DNS = 601
DT_LOAD_MODULE = 603
DT_CRED_CHANGE = 604


class rp_hdr(ctypes.Structure):
    _fields_ = [
        ("ts", u64),
        ("start_time", u64),
        ("cgroup_id", u64),
        ("data_type", u32),
        ("pid", u32),
        ("tid", u32),
        ("ppid", u32),
        ("pgid", u32),
        ("sid", u32),
        ("uid", u32),
        ("euid", u32),
        ("gid", u32),
        ("pns", u32),
        ("nspid", u32),
        ("_pad", u32),
        ("comm", char * COMM_LEN),
        ("nodename", char * NODE_LEN),
    ]


class rp_exec(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("argv_len", u32),
        ("argv_kept", u32),
        ("old_uid", u32),
        ("old_euid", u32),
        ("filename", char * PATH_LEN),
        ("argv", u8 * ARGV_LEN),
    ]


class rp_fork(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("child_start_time", u64), ("child_pid", u32), ("child_ppid", u32)]


class rp_exit(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("exit_code", s32), ("_pad", u32)]


class rp_sock(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("ret", s64),
        ("fd", s32),
        ("family", u16),
        ("port", u16),
        ("addr", u8 * 16),
        ("laddr", u8 * 16),
        ("lport", u16),
        ("sock_type", u16),
        ("_pad", u32),
    ]


class rp_dns(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("nr", u32),
        ("len", u32),
        ("family", u16),
        ("port", u16),
        ("addr", u8 * 16),
        ("kept", u32),
        ("payload", u8 * DNS_LEN),
    ]


class rp_ptrace(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("request", s64), ("target_pid", s64), ("addr", u64), ("data", u64)]


class rp_memfd(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("flags", u32), ("_pad", u32), ("name", char * PATH_LEN)]


class rp_module(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("nr", u32),
        ("fd", s32),
        ("len", u64),
        ("name", char * PATH_LEN),
        ("args", char * PATH_LEN),
    ]


class rp_mount(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("flags", u64),
        ("dev", char * PATH_LEN),
        ("dir", char * PATH_LEN),
        ("fstype", char * FSTYPE_LEN),
    ]


class rp_cred(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("nr", u32), ("old_uid", u32), ("old_euid", u32), ("_pad", u32)]


class rp_prctl(ctypes.Structure):
    _fields_ = [("h", rp_hdr), ("option", s32), ("_pad", u32), ("name", char * NAME_LEN)]


class rp_open(ctypes.Structure):
    _fields_ = [
        ("h", rp_hdr),
        ("flags", s32),
        ("mode", u32),
        ("dfd", s32),
        ("nr", u32),
        ("path", char * PATH_LEN),
    ]


class rp_config(ctypes.Structure):
    _fields_ = [("self_pid", u32), ("open_flags", u32), ("open_prefixes", u32)]


PREFIX_LEN, OPEN_PREFIXES = 64, 8


class rp_prefix(ctypes.Structure):
    _fields_ = [("len", u32), ("s", char * PREFIX_LEN)]


#: every struct shared with C, checked against the object's BTF
SHARED_STRUCTS: tuple[type[ctypes.Structure], ...] = (
    rp_hdr,
    rp_exec,
    rp_fork,
    rp_exit,
    rp_sock,
    rp_dns,
    rp_ptrace,
    rp_memfd,
    rp_module,
    rp_mount,
    rp_cred,
    rp_prctl,
    rp_open,
    rp_config,
    rp_prefix,
)

#: data_type -> record struct
RECORDS: dict[int, type[ctypes.Structure]] = {
    DT_EXECVE: rp_exec,
    DT_FORK: rp_fork,
    DT_EXIT: rp_exit,
    DT_CONNECT: rp_sock,
    DT_BIND: rp_sock,
    DT_ACCEPT: rp_sock,
    DT_DNS: rp_dns,
    DT_PTRACE: rp_ptrace,
    DT_MEMFD_CREATE: rp_memfd,
    DT_LOAD_MODULE: rp_module,
    DT_MOUNT: rp_mount,
    DT_CRED_CHANGE: rp_cred,
    DT_PRCTL: rp_prctl,
    DT_OPEN: rp_open,
}

HDR_SIZE = ctypes.sizeof(rp_hdr)
_DT_OFFSET = rp_hdr.data_type.offset

SYSCALL_NAMES = {
    44: "sendto",
    46: "sendmsg",
    59: "execve",
    105: "setuid",
    113: "setreuid",
    117: "setresuid",
    122: "setfsuid",
    175: "init_module",
    257: "openat",
    307: "sendmmsg",
    313: "finit_module",
}
PTRACE_REQUESTS = {4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR"}
PTRACE_REQUESTS.update({16: "PTRACE_ATTACH", 0x4206: "PTRACE_SEIZE"})
AF_INET, AF_INET6 = 2, 10


@dataclass(slots=True)
class DriverEvent:
    """One decoded record. `fields` holds the private fields under Elkeid's names."""

    data_type: int
    ts_ns: int  # CLOCK_BOOTTIME
    pid: int
    tid: int
    ppid: int
    pgid: int
    sid: int
    uid: int
    euid: int
    gid: int
    pns: int
    nspid: int
    start_time_ns: int
    cgroup_id: int
    comm: str
    nodename: str
    hook: str = ""
    args: list[str] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)

    def common(self) -> dict[str, Any]:
        """Elkeid's common fields (exe is added by the cache)."""
        return {
            "data_type": self.data_type,
            "uid": self.uid,
            "euid": self.euid,
            "pid": self.pid,
            "tid": self.tid,
            "ppid": self.ppid,
            "pgid": self.pgid,
            "tgid": self.pid,
            "sid": self.sid,
            "comm": self.comm,
            "nodename": self.nodename,
            "pns": self.pns,
            "nspid": self.nspid,
        }


def bare_event(dt: int, pid: int, ts_ns: int, nodename: str, hook: str = "") -> DriverEvent:
    """An event known only by its pid, as the fallbacks (proc connector, fanotify) see it:
    the fields the kernel side would fill are unknown (-1 ids, 0 namespaces)."""
    return DriverEvent(
        data_type=dt,
        ts_ns=ts_ns,
        pid=pid,
        tid=pid,
        ppid=0,
        pgid=0,
        sid=0,
        uid=-1,
        euid=-1,
        gid=-1,
        pns=0,
        nspid=pid,
        start_time_ns=0,
        cgroup_id=0,
        comm="",
        nodename=nodename,
        hook=hook,
    )


def _s(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ip(family: int, addr: ctypes.Array) -> str:
    b = bytes(addr)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(b[:4]))
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(b))
    return ""


def split_argv(raw: bytes) -> list[str]:
    if not raw:
        return []
    return [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]


def dns_query(payload: bytes) -> tuple[str, int, int]:
    """(query name, qtype, opcode) from a DNS message; ("", 0, 0) if it does not parse."""
    if len(payload) < 17:
        return "", 0, 0
    opcode = (payload[2] >> 3) & 0xF
    labels: list[str] = []
    i = 12
    while i < len(payload):
        n = payload[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0 or i + 1 + n > len(payload):
            return "", 0, opcode  # compression or truncated: not a plain query
        labels.append(payload[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    else:
        return "", 0, opcode
    qtype = int.from_bytes(payload[i : i + 2], "big") if i + 2 <= len(payload) else 0
    return ".".join(labels), qtype, opcode


def decode(data: bytes) -> DriverEvent:
    """A ring-buffer record → DriverEvent. Raises ValueError on an unknown or short record."""
    if len(data) < HDR_SIZE:
        raise ValueError(f"record of {len(data)} bytes is shorter than the header")
    dt = int.from_bytes(data[_DT_OFFSET : _DT_OFFSET + 4], "little")
    cls = RECORDS.get(dt)
    if cls is None:
        raise ValueError(f"unknown data_type {dt}")
    if len(data) < ctypes.sizeof(cls):
        raise ValueError(f"data_type {dt}: {len(data)} bytes, expected {ctypes.sizeof(cls)}")
    r: Any = cls.from_buffer_copy(data)
    h = r.h
    ev = DriverEvent(
        data_type=dt,
        ts_ns=h.ts,
        pid=h.pid,
        tid=h.tid,
        ppid=h.ppid,
        pgid=h.pgid,
        sid=h.sid,
        uid=h.uid,
        euid=h.euid,
        gid=h.gid,
        pns=h.pns,
        nspid=h.nspid,
        start_time_ns=h.start_time,
        cgroup_id=h.cgroup_id,
        comm=_s(h.comm),
        nodename=_s(h.nodename),
    )
    _PRIVATE[dt](ev, r)
    return ev


def _exec(ev: DriverEvent, r: Any) -> None:
    argv = split_argv(bytes(r.argv)[: r.argv_kept])
    filename = _s(r.filename)
    ev.hook = "sched_process_exec"
    ev.args = argv
    ev.fields = {
        "argv": " ".join(argv),
        "run_path": filename,
        "argv_truncated": r.argv_len > r.argv_kept,
    }
    if r.old_uid != 0xFFFFFFFF:
        ev.fields["old_uid"] = r.old_uid


def _fork(ev: DriverEvent, r: Any) -> None:
    ev.hook = "sched_process_fork"
    ev.args = [str(r.child_pid)]
    ev.fields = {
        "child_pid": r.child_pid,
        "child_ppid": r.child_ppid,
        "child_start_time_ns": r.child_start_time,
    }


def _exit(ev: DriverEvent, r: Any) -> None:
    ev.hook = "sched_process_exit"
    ev.args = [str(r.exit_code)]
    ev.fields = {"exit_code": r.exit_code}


_SOCK_HOOKS = {DT_CONNECT: "connect", DT_BIND: "bind", DT_ACCEPT: "accept"}


def _sock(ev: DriverEvent, r: Any) -> None:
    ip = _ip(r.family, r.addr)
    ev.hook = _SOCK_HOOKS[ev.data_type]
    ev.args = [ip, str(r.port)]
    ev.fields = {"sa_family": r.family, "res": r.ret, "fd": r.fd, "sock_type": r.sock_type}
    if ev.data_type == DT_BIND:
        ev.fields.update(sip=ip, sport=r.port)
    else:  # the remote end, and the local one the kernel chose
        ev.fields.update(dip=ip, dport=r.port, sip=_ip(r.family, r.laddr), sport=r.lport)


def _dns(ev: DriverEvent, r: Any) -> None:
    query, qtype, opcode = dns_query(bytes(r.payload)[: r.kept])
    ip = _ip(r.family, r.addr)
    ev.hook = SYSCALL_NAMES.get(r.nr, str(r.nr))
    ev.args = [query, ip, str(r.port)]
    ev.fields = {
        "query": query,
        "qtype": qtype,
        "opcode": opcode,
        "sa_family": r.family,
        "dip": ip,
        "dport": r.port,
    }


def _ptrace(ev: DriverEvent, r: Any) -> None:
    name = PTRACE_REQUESTS.get(r.request, str(r.request))
    ev.hook = "ptrace"
    ev.args = [name, str(r.target_pid)]
    ev.fields = {
        "ptrace_request": r.request,
        "ptrace_request_name": name,
        "target_pid": r.target_pid,
        "addr": r.addr,
        "data": r.data,
    }


def _memfd(ev: DriverEvent, r: Any) -> None:
    name = _s(r.name)
    ev.hook = "memfd_create"
    ev.args = [name, str(r.flags)]
    ev.fields = {"fdname": name, "flags": r.flags}


def _module(ev: DriverEvent, r: Any) -> None:
    name, args = _s(r.name), _s(r.args)
    ev.hook = SYSCALL_NAMES.get(r.nr, str(r.nr))
    ev.args = [name, args]
    ev.fields = {"ko_file": name, "args": args, "fd": r.fd, "len": r.len}


def _mount(ev: DriverEvent, r: Any) -> None:
    dev, d, fstype = _s(r.dev), _s(r.dir), _s(r.fstype)
    ev.hook = "mount"
    ev.args = [dev, d, fstype]
    ev.fields = {"dev": dev, "file_path": d, "fstype": fstype, "flags": r.flags}


def _cred(ev: DriverEvent, r: Any) -> None:
    ev.hook = SYSCALL_NAMES.get(r.nr, str(r.nr))
    ev.args = [f"{r.old_uid}->{ev.uid}", f"euid {r.old_euid}->{ev.euid}"]
    ev.fields = {"old_uid": r.old_uid, "old_euid": r.old_euid, "new_uid": ev.uid}


def _prctl(ev: DriverEvent, r: Any) -> None:
    name = _s(r.name)
    ev.hook = "prctl"
    ev.args = ["PR_SET_NAME", name]
    ev.fields = {"option": r.option, "new_name": name}


def _open(ev: DriverEvent, r: Any) -> None:
    path = _s(r.path)
    ev.hook = "openat"
    ev.args = [path, oct(r.flags)]
    # reported because it writes, or because the path is under a driver_open_paths prefix
    ev.fields = {
        "filename": path,
        "flags": r.flags,
        "mode": r.mode,
        "write": bool(r.flags & 0o1103),
    }


_PRIVATE = {
    DT_EXECVE: _exec,
    DT_FORK: _fork,
    DT_EXIT: _exit,
    DT_CONNECT: _sock,
    DT_BIND: _sock,
    DT_ACCEPT: _sock,
    DT_DNS: _dns,
    DT_PTRACE: _ptrace,
    DT_MEMFD_CREATE: _memfd,
    DT_LOAD_MODULE: _module,
    DT_MOUNT: _mount,
    DT_CRED_CHANGE: _cred,
    DT_PRCTL: _prctl,
    DT_OPEN: _open,
}
