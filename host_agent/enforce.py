"""Kernel-side blocking for protected processes of any runtime (docs/enforcement.md).

    enforcer = KernelEnforcer(settings, submit=pipeline.submit_host)
    enforcer.start(loop)                # never raises: picks a mechanism or says why none
    enforcer.load_policy(policy_set)    # compiles the kernel subset into maps
    enforcer.protect(pid, "golang")     # this process (and its children's execs) is enforced
    enforcer.unprotect(pid)
    enforcer.stop()                     # destroys every link: nothing stays attached

Mechanisms, chosen at start (`enforce` setting): `lsm` (BPF LSM bprm_check_security and
socket_connect return EPERM) where the kernel loads LSM programs; else `cgroup+tracepoint`:
cgroup/connect4/6 and sendmsg4/6 on the cgroup-v2 root return EPERM, and
tp_btf/sched_process_exec kills a denied exec of a protected process or of its descendants
with SIGKILL before the new image runs. The kernel cannot run the agent's regexes, so only
the policy subset with `match.dest/port` (network) and `match.path/path_prefix/name`
(process) is compiled here (`compile_policy`, pure and unit-tested).

Every kernel block is a ring-buffer record, turned into an event (`blocked: true`,
`policy_id`, the protected process's runtime, hook `kernel.connect`/`kernel.sendmsg`/
`kernel.execve`) for the agent's pipeline, read on the event loop (the ring buffer's epoll fd).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driver import libbpf
from driver.loader import DriverError, check_environment
from host_agent.policy import PolicySet
from host_agent.yamlfile import ConfigError
from rasp.protocol import RUNTIMES

log = logging.getLogger("rampart.enforce")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OBJECT = REPO / "build" / "bpf" / "enforce.bpf.o"

# limits of the BPF maps (driver/bpf/enforce/enforce.h)
NET_RULES = 64
PATHS = 256
NAMES = 256
PREFIXES = 8
PATH_LEN = 256
NAME_LEN = 64
ARGV_LEN = 512
COMM_LEN = 16
HOOK_SLOTS = 9
PROTECTED_MAX = 4096
AF_INET, AF_INET6 = 2, 10

#: hook number in a record -> (event hook, kind)
HOOKS: dict[int, tuple[str, str]] = {
    1: ("kernel.connect", "network"),
    2: ("kernel.connect", "network"),
    3: ("kernel.sendmsg", "network"),
    4: ("kernel.sendmsg", "network"),
    5: ("kernel.execve", "process"),
    6: ("kernel.connect", "network"),
    7: ("kernel.execve", "process"),
}
HOOK_KEYS = {1: "connect4", 2: "connect6", 3: "sendmsg4", 4: "sendmsg6", 5: "exec_kill"}
HOOK_KEYS |= {6: "lsm_connect", 7: "lsm_exec"}

LSM_PROGRAMS = ("rpe_lsm_exec", "rpe_lsm_connect")
CGROUP_PROGRAMS = ("rpe_connect4", "rpe_connect6", "rpe_sendmsg4", "rpe_sendmsg6")
EXEC_PROGRAM = "rpe_exec_kill"
EXIT_PROGRAM = "rpe_exit"
ALL_PROGRAMS = (*LSM_PROGRAMS, *CGROUP_PROGRAMS, EXEC_PROGRAM, EXIT_PROGRAM)


def runtime_bit(runtime: str) -> int:
    return 1 << RUNTIMES.index(runtime) if runtime in RUNTIMES else 0


# ---------------------------------------------------------------------------- record layouts
# Mirrors of driver/bpf/enforce/enforce.h; sizes are checked against the object's BTF at load.


class RpeProc(ctypes.Structure):
    _fields_ = [("start_time", ctypes.c_uint64), ("runtime_bit", ctypes.c_uint32)]
    _fields_ += [("_pad", ctypes.c_uint32)]


class RpeNetRule(ctypes.Structure):
    _fields_ = [
        ("policy", ctypes.c_uint32),
        ("runtimes", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("prefixlen", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 16),
    ]


class RpeVerdict(ctypes.Structure):
    _fields_ = [("policy", ctypes.c_uint32), ("runtimes", ctypes.c_uint32)]


class RpePrefix(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_uint32),
        ("policy", ctypes.c_uint32),
        ("runtimes", ctypes.c_uint32),
        ("s", ctypes.c_char * NAME_LEN),
    ]


class RpeConf(ctypes.Structure):
    _fields_ = [
        ("net_rules", ctypes.c_uint32),
        ("prefixes", ctypes.c_uint32),
        ("agent_pid", ctypes.c_uint32),
        ("tick_ns", ctypes.c_uint32),
    ]


class RpeEvent(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("start_time", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("protected_pid", ctypes.c_uint32),
        ("hook", ctypes.c_uint32),
        ("policy", ctypes.c_uint32),
        ("blocked", ctypes.c_uint32),
        ("family", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("argv_len", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * COMM_LEN),
        ("filename", ctypes.c_char * PATH_LEN),
        ("argv", ctypes.c_char * ARGV_LEN),
    ]


LAYOUTS: dict[str, type[ctypes.Structure]] = {
    "rpe_proc": RpeProc,
    "rpe_net_rule": RpeNetRule,
    "rpe_verdict": RpeVerdict,
    "rpe_prefix": RpePrefix,
    "rpe_conf": RpeConf,
    "rpe_event": RpeEvent,
}


# ---------------------------------------------------------------------------- policy compiler


@dataclass(frozen=True)
class NetRule:
    policy: int  # index into CompiledPolicy.ids (1-based; 0 = none)
    runtimes: int
    family: int
    port: int
    prefixlen: int
    addr: bytes  # 16 bytes, IPv4 in the first 4


@dataclass
class CompiledPolicy:
    ids: list[str] = field(default_factory=lambda: [""])  # [0] is "no policy"
    net: list[NetRule] = field(default_factory=list)
    paths: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (policy, runtimes)
    names: dict[str, tuple[int, int]] = field(default_factory=dict)
    prefixes: list[tuple[str, int, int]] = field(default_factory=list)
    #: block policies the probes enforce in-process only (no kernel match fields)
    in_probe_only: list[str] = field(default_factory=list)
    #: kernel policies scoped to runtimes none of which is kernel-enforced by setting
    unscoped: list[str] = field(default_factory=list)

    @property
    def kernel_policies(self) -> list[str]:
        return self.ids[1:]

    def summary(self) -> dict[str, Any]:
        return {
            "kernel_policies": self.kernel_policies,
            "net_rules": len(self.net),
            "exec_paths": len(self.paths),
            "exec_names": len(self.names),
            "exec_prefixes": len(self.prefixes),
            "in_probe_only": self.in_probe_only,
            "not_kernel_enforced_runtimes": self.unscoped,
        }


def _runtimes_mask(runtimes: tuple[str, ...] | None) -> int:
    mask = 0
    for r in runtimes or ():
        mask |= runtime_bit(r)
    return mask


def _net_entries(cidr: str, ports: list[int] | None, idx: int, mask: int) -> list[NetRule]:
    net = ipaddress.ip_network(cidr, strict=False)
    targets: list[tuple[int, int, bytes]] = []
    if net.version == 4:
        targets.append((AF_INET, net.prefixlen, net.network_address.packed + bytes(12)))
        # an IPv6 socket reaching the same host through a v4-mapped address (::ffff:a.b.c.d)
        mapped = bytes(10) + b"\xff\xff" + net.network_address.packed
        targets.append((AF_INET6, 96 + net.prefixlen, mapped))
    else:
        targets.append((AF_INET6, net.prefixlen, net.network_address.packed))
    return [
        NetRule(idx, mask, fam, port, plen, addr)
        for fam, plen, addr in targets
        for port in (ports or [0])
    ]


def compile_policy(
    policy: PolicySet, kernel_runtimes: list[str] | tuple[str, ...]
) -> CompiledPolicy:
    """The kernel's tables for `policy`. Raises ConfigError (naming the policy) when the
    tables would overflow the kernel maps: a policy is enforced whole or refused."""
    out = CompiledPolicy()

    def too_many(what: str, limit: int, pid: str) -> ConfigError:
        return ConfigError(
            policy.source, f"policy {pid!r}: more than {limit} {what} in the kernel tables"
        )

    for p in policy.policies:
        if p.action != "block":
            continue
        m = p.spec.match
        if not p.kernel or m is None:
            out.in_probe_only.append(p.id)
            continue
        if p.runtimes is not None and not set(p.runtimes) & set(kernel_runtimes):
            out.unscoped.append(p.id)
        out.ids.append(p.id)
        idx = len(out.ids) - 1
        mask = _runtimes_mask(p.runtimes)
        for cidr in m.dest or ():
            out.net.extend(_net_entries(cidr, m.port, idx, mask))
            if len(out.net) > NET_RULES:
                raise too_many(
                    "destination rules (CIDR x port, IPv4 counted twice)", NET_RULES, p.id
                )
        for path in m.path or ():
            out.paths.setdefault(path, (idx, mask))
            if len(out.paths) > PATHS:
                raise too_many("exec paths", PATHS, p.id)
        for name in m.name or ():
            out.names.setdefault(name, (idx, mask))
            if len(out.names) > NAMES:
                raise too_many("exec names", NAMES, p.id)
        for prefix in m.path_prefix or ():
            out.prefixes.append((prefix, idx, mask))
            if len(out.prefixes) > PREFIXES:
                raise too_many("exec path prefixes", PREFIXES, p.id)
        if len(out.ids) > 0xFFFF:
            raise too_many("policies", 0xFFFF, p.id)
    return out


# ---------------------------------------------------------------------------- helpers


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup-v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified in hybrid
    mode), or None."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        return None
    return None


def proc_start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _fn(name: str, restype: Any, argtypes: list[Any]) -> Any:
    f = getattr(libbpf.lib(), name)
    f.restype = restype
    f.argtypes = argtypes
    return f


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


class EnforceError(Exception):
    pass


# ---------------------------------------------------------------------------- the enforcer


@dataclass
class Protected:
    pid: int
    runtime: str
    start_ticks: int
    explicit: bool  # protected by the control command, not by an attach
    since: float = field(default_factory=time.time)


class KernelEnforcer:
    def __init__(
        self,
        mode: str = "auto",
        kernel_runtimes: list[str] | tuple[str, ...] = ("golang",),
        submit: Callable[[dict[str, Any]], None] | None = None,
        facts: Callable[[int], dict[str, Any] | None] | None = None,
        object_path: Path = DEFAULT_OBJECT,
    ) -> None:
        self.mode = mode
        self.kernel_runtimes = tuple(kernel_runtimes)
        self.submit = submit or (lambda e: None)
        self.facts = facts
        self.object_path = object_path
        self.mechanism = "off"
        self.reason = ""
        self.lsm_reason = ""
        self.cgroup: Path | None = None
        self.programs: list[str] = []
        self.compiled = CompiledPolicy()
        self.protected: dict[int, Protected] = {}
        self.events = 0
        self.by_policy: Counter[str] = Counter()
        self.decode_errors = 0
        self._obj: int | None = None
        self._links: list[int] = []
        self._cgroup_fd = -1
        self._rb: int | None = None
        self._cb: Any = None
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoll_fd = -1
        self._generation = 0
        self._ids_by_gen: dict[int, list[str]] = {}
        self._libbpf_log: list[str] = []
        self._offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    # ------------------------------------------------------------------ start / stop

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> str:
        """Load and attach what this kernel allows; returns the mechanism ("off" + reason
        when none). Never raises: the agent runs on without enforcement."""
        self._loop = loop
        if self.mode == "off":
            self.reason = "enforce: off (setting)"
            return self.mechanism
        try:
            check_environment(self.object_path)
        except DriverError as e:
            self.reason = str(e).replace("BPF object", "enforcement object")
            log.warning("kernel enforcement off: %s", self.reason)
            return self.mechanism
        libbpf.add_log_sink(self._on_log)
        try:
            if self.mode in ("auto", "lsm"):
                try:
                    self._load(lsm=True)
                    self.mechanism = "lsm"
                except EnforceError as e:
                    self._close()
                    self.lsm_reason = f"BPF LSM refused: {e}"
                    if self.mode == "lsm":
                        raise
                    log.info("kernel enforcement: %s; using cgroup + tracepoint", self.lsm_reason)
            if self.mechanism == "off":
                self._load(lsm=False)
                self.mechanism = "cgroup+tracepoint" if self.cgroup else "tracepoint"
            self._start_reader()
        except (EnforceError, OSError) as e:
            self._close()
            self.mechanism = "off"
            if self.mode == "lsm":
                self.reason = self.lsm_reason or str(e)
            else:
                self.reason = "; ".join(x for x in (self.lsm_reason, str(e)) if x)
            log.warning("kernel enforcement off: %s", self.reason)
            return self.mechanism
        finally:
            libbpf.remove_log_sink(self._on_log)
        self.load_policy(self.compiled)
        log.info(
            "kernel enforcement: %s (%s)%s",
            self.mechanism,
            ", ".join(self.programs),
            f"; {self.reason}" if self.reason else "",
        )
        return self.mechanism

    def _on_log(self, level: int, text: str) -> None:
        self._libbpf_log = [*self._libbpf_log[-20:], text]

    def _fail(self, what: str, err: int) -> EnforceError:
        tail = [x for x in self._libbpf_log if x.strip()][-2:]
        detail = f": {' | '.join(tail)}" if tail else ""
        return EnforceError(f"{what}: {libbpf.errno_text(err)}{detail}")

    def _load(self, lsm: bool) -> None:
        lib = libbpf.lib()
        self._libbpf_log = []
        obj = lib.bpf_object__open_file(str(self.object_path).encode(), None)
        if not obj:
            raise self._fail(f"cannot open {self.object_path}", libbpf.last_errno())
        self._obj = obj
        self._check_layouts()
        cgroup = cgroup2_root()
        wanted = {EXIT_PROGRAM}
        if lsm:
            wanted |= set(LSM_PROGRAMS)
        else:
            wanted.add(EXEC_PROGRAM)
        if cgroup is not None:
            # UDP sendto without connect: the LSM socket_connect hook does not see it
            wanted |= set(CGROUP_PROGRAMS) if not lsm else {"rpe_sendmsg4", "rpe_sendmsg6"}
        elif not lsm:
            self.reason = "no cgroup v2 mounted: connect is not enforced, exec is"
        for name in ALL_PROGRAMS:
            prog = lib.bpf_object__find_program_by_name(obj, name.encode())
            if not prog:
                raise EnforceError(f"program {name} not in {self.object_path} (run `make setup`)")
            lib.bpf_program__set_autoload(prog, name in wanted)
        err = lib.bpf_object__load(obj)
        if err:
            raise self._fail("the kernel refused the programs", err)
        attach_cgroup = _fn(
            "bpf_program__attach_cgroup", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int]
        )
        for name in ALL_PROGRAMS:
            if name not in wanted:
                continue
            prog = lib.bpf_object__find_program_by_name(obj, name.encode())
            if name in CGROUP_PROGRAMS:
                assert cgroup is not None
                if self._cgroup_fd < 0:
                    self._cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
                link = attach_cgroup(prog, self._cgroup_fd)
            else:
                link = lib.bpf_program__attach(prog)
            if not link:
                raise self._fail(f"cannot attach {name}", libbpf.last_errno())
            self._links.append(link)
            self.programs.append(name)
        self.cgroup = cgroup if any(p in CGROUP_PROGRAMS for p in self.programs) else None
        conf = RpeConf(agent_pid=os.getpid(), tick_ns=1_000_000_000 // os.sysconf("SC_CLK_TCK"))
        self._update("rpe_conf", ctypes.c_uint32(0), conf)

    def _check_layouts(self) -> None:
        lib = libbpf.lib()
        btf = lib.bpf_object__btf(self._obj)
        if not btf:
            raise EnforceError(f"{self.object_path} has no BTF")
        for name, cls in LAYOUTS.items():
            tid = lib.btf__find_by_name_kind(btf, name.encode(), libbpf.BTF_KIND_STRUCT)
            if tid <= 0:
                raise EnforceError(f"struct {name} not in {self.object_path}")
            size = lib.btf__resolve_size(btf, tid)
            if size != ctypes.sizeof(cls):
                raise EnforceError(
                    f"struct {name}: {size} bytes in the object, {ctypes.sizeof(cls)} in "
                    "host_agent/enforce.py (rebuild with `make setup`?)"
                )

    def _map_fd(self, name: str) -> int:
        lib = libbpf.lib()
        m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise EnforceError(f"map {name} not in {self.object_path}")
        return lib.bpf_map__fd(m)

    def _update(self, map_name: str, key: Any, value: Any) -> None:
        err = libbpf.lib().bpf_map_update_elem(
            self._map_fd(map_name), ctypes.byref(key), ctypes.byref(value), 0
        )
        if err:
            raise self._fail(f"update of {map_name} failed", err)

    def _delete(self, map_name: str, key: Any) -> bool:
        delete = _fn("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p])
        return delete(self._map_fd(map_name), ctypes.byref(key)) == 0

    def _clear_hash(self, map_name: str, key_type: type[ctypes.Structure]) -> None:
        next_key = _fn(
            "bpf_map_get_next_key", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        )
        fd = self._map_fd(map_name)
        keys = []
        cur, nxt = None, key_type()
        while next_key(fd, ctypes.byref(cur) if cur is not None else None, ctypes.byref(nxt)) == 0:
            keys.append(nxt)
            cur, nxt = nxt, key_type()
        for k in keys:
            self._delete(map_name, k)

    def _start_reader(self) -> None:
        lib = libbpf.lib()

        def on_sample(_ctx: int, data: int, size: int) -> int:
            self._pending.append(ctypes.string_at(data, size))
            return 0

        self._cb = libbpf.SAMPLE_FN(on_sample)
        rb = lib.ring_buffer__new(self._map_fd("rpe_events"), self._cb, None, None)
        if not rb:
            raise self._fail("ring_buffer__new failed", libbpf.last_errno())
        self._rb = rb
        if self._loop is not None:
            self._epoll_fd = lib.ring_buffer__epoll_fd(rb)
            self._loop.add_reader(self._epoll_fd, self.flush)

    def _close(self) -> None:
        lib = libbpf.lib()
        if self._loop is not None and self._epoll_fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._epoll_fd)
            self._epoll_fd = -1
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links.clear()
        self.programs.clear()
        if self._rb is not None:
            lib.ring_buffer__free(self._rb)
            self._rb = None
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1

    def stop(self) -> None:
        """Idempotent: read the last records, destroy every link, close the object."""
        if self._rb is not None:
            self.flush()
        self._close()
        if self.mechanism != "off":
            log.info("kernel enforcement stopped: %s", self.stats())
        self.mechanism = "off"
        self.reason = "stopped"
        self.protected.clear()

    @property
    def running(self) -> bool:
        return self._obj is not None

    # ------------------------------------------------------------------ policy

    def load_policy(self, compiled: CompiledPolicy | PolicySet) -> CompiledPolicy:
        """Swap the kernel tables for this policy's. A PolicySet is compiled first (and may
        raise ConfigError, leaving the tables in force untouched)."""
        if isinstance(compiled, PolicySet):
            compiled = compile_policy(compiled, self.kernel_runtimes)
        self.compiled = compiled
        if not self.running:
            return compiled
        self._generation = (self._generation + 1) & 0xFFFF
        gen = self._generation
        self._ids_by_gen[gen] = compiled.ids
        for old in [g for g in self._ids_by_gen if g != gen][:-3]:  # keep a few for late records
            del self._ids_by_gen[old]
        code = lambda idx: (gen << 16) | idx  # noqa: E731
        # the counts go to 0 first, so no half-written table is ever read in between
        conf = RpeConf(
            net_rules=0,
            prefixes=0,
            agent_pid=os.getpid(),
            tick_ns=1_000_000_000 // os.sysconf("SC_CLK_TCK"),
        )
        self._update("rpe_conf", ctypes.c_uint32(0), conf)
        for i, r in enumerate(compiled.net):
            rule = RpeNetRule(
                policy=code(r.policy),
                runtimes=r.runtimes,
                family=r.family,
                port=r.port,
                prefixlen=r.prefixlen,
                addr=(ctypes.c_uint8 * 16)(*r.addr),
            )
            self._update("rpe_net", ctypes.c_uint32(i), rule)
        for i, (prefix, idx, mask) in enumerate(compiled.prefixes):
            b = prefix.encode()
            self._update(
                "rpe_exec_prefix",
                ctypes.c_uint32(i),
                RpePrefix(len=len(b), policy=code(idx), runtimes=mask, s=b),
            )
        PathKey = ctypes.c_char * PATH_LEN
        NameKey = ctypes.c_char * NAME_LEN

        class _PK(ctypes.Structure):
            _fields_ = [("s", PathKey)]

        class _NK(ctypes.Structure):
            _fields_ = [("s", NameKey)]

        self._clear_hash("rpe_exec_paths", _PK)
        self._clear_hash("rpe_exec_names", _NK)
        for path, (idx, mask) in compiled.paths.items():
            self._update("rpe_exec_paths", _PK(s=path.encode()), RpeVerdict(code(idx), mask))
        for name, (idx, mask) in compiled.names.items():
            self._update("rpe_exec_names", _NK(s=name.encode()), RpeVerdict(code(idx), mask))
        conf.net_rules = len(compiled.net)
        conf.prefixes = len(compiled.prefixes)
        self._update("rpe_conf", ctypes.c_uint32(0), conf)
        log.info(
            "kernel enforcement: %d policies (%d destination rules, %d exec paths, %d names, "
            "%d prefixes)%s",
            len(compiled.kernel_policies),
            len(compiled.net),
            len(compiled.paths),
            len(compiled.names),
            len(compiled.prefixes),
            f"; in-probe only: {', '.join(compiled.in_probe_only)}"
            if compiled.in_probe_only
            else "",
        )
        return compiled

    def policy_id(self, code: int) -> str:
        ids = self._ids_by_gen.get(code >> 16, [])
        idx = code & 0xFFFF
        return ids[idx] if 0 < idx < len(ids) else f"?{code:#x}"

    # ------------------------------------------------------------------ protected processes

    def protect(self, pid: int, runtime: str, explicit: bool = False) -> Protected:
        """Put `pid` under kernel enforcement. Raises EnforceError with the reason."""
        if not self.running:
            raise EnforceError(f"kernel enforcement is off: {self.reason or 'not started'}")
        if pid == os.getpid():
            raise EnforceError("the agent does not protect itself")
        if runtime not in RUNTIMES:
            raise EnforceError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        try:
            ticks = proc_start_ticks(pid)
        except (OSError, ValueError, IndexError):
            raise EnforceError(f"no process {pid}") from None
        if pid not in self.protected and len(self.protected) >= PROTECTED_MAX:
            raise EnforceError(f"{PROTECTED_MAX} processes protected already")
        self._update(
            "rpe_protected",
            ctypes.c_uint32(pid),
            RpeProc(start_time=ticks, runtime_bit=runtime_bit(runtime)),
        )
        rec = Protected(pid, runtime, ticks, explicit)
        self.protected[pid] = rec
        log.info("kernel enforcement: pid %d (%s) protected", pid, runtime)
        return rec

    def unprotect(self, pid: int) -> bool:
        rec = self.protected.pop(pid, None)
        if self.running:
            self._delete("rpe_protected", ctypes.c_uint32(pid))
        if rec is not None:
            log.info("kernel enforcement: pid %d unprotected", pid)
        return rec is not None

    def in_kernel(self, pid: int) -> bool:
        """Is `pid` in the kernel's protected map (the kernel drops it at exit)."""
        if not self.running:
            return False
        value = RpeProc()
        key = ctypes.c_uint32(pid)
        return (
            libbpf.lib().bpf_map_lookup_elem(
                self._map_fd("rpe_protected"), ctypes.byref(key), ctypes.byref(value)
            )
            == 0
        )

    def _prune(self) -> None:
        """Forget processes the kernel removed at exit."""
        for pid in [p for p in self.protected if not self.in_kernel(p)]:
            del self.protected[pid]

    def on_probe(self, what: str, pid: int, runtime: str) -> None:
        """Registry lifecycle: a probe of a kernel-enforced runtime said hello (protect) or
        went away (unprotect, unless protected explicitly)."""
        if not self.running:
            return
        if what == "add" and runtime in self.kernel_runtimes:
            try:
                self.protect(pid, runtime)
            except EnforceError as e:
                log.warning("kernel enforcement: pid %d not protected: %s", pid, e)
        elif what == "gone":
            rec = self.protected.get(pid)
            if rec is not None and not rec.explicit:
                self.unprotect(pid)

    def mechanism_for(self, pid: int) -> str:
        return self.mechanism if pid in self.protected and self.running else ""

    # ------------------------------------------------------------------ events

    def flush(self) -> int:
        """Read what the kernel has written and hand each record to the pipeline."""
        if self._rb is None:
            return 0
        n = libbpf.lib().ring_buffer__consume(self._rb)
        pending, self._pending = self._pending, []
        for raw in pending:
            event = self.decode(raw)
            if event is not None:
                self.submit(event)
        return max(n, 0)

    def decode(self, raw: bytes) -> dict[str, Any] | None:
        if len(raw) < ctypes.sizeof(RpeEvent) or RpeEvent.from_buffer_copy(raw).hook not in HOOKS:
            self.decode_errors += 1
            return None
        r = RpeEvent.from_buffer_copy(raw)
        hook, kind = HOOKS[r.hook]
        policy_id = self.policy_id(r.policy)
        self.events += 1
        self.by_policy[policy_id] += 1
        prot = self.protected.get(r.protected_pid)
        runtime = prot.runtime if prot is not None else "kernel"
        detail: dict[str, Any] = {
            "mechanism": self.mechanism,
            "pid": r.pid,
            "tid": r.tid,
            "uid": r.uid,
            "comm": _cstr(r.comm),
            "protected_pid": r.protected_pid,
        }
        if kind == "network":
            raw_addr = bytes(r.addr)
            if r.family == AF_INET:
                addr = str(ipaddress.IPv4Address(raw_addr[:4]))
                dest = f"{addr}:{r.port}"
            else:
                addr = str(ipaddress.IPv6Address(raw_addr))
                dest = f"[{addr}]:{r.port}"
            detail.update(family=r.family, addr=addr, port=r.port)
            args = [dest]
        else:
            filename = _cstr(r.filename)
            off = RpeEvent.argv.offset  # the field itself reads up to the first NUL only
            kept = raw[off : off + min(r.argv_len, ARGV_LEN - 1)]
            argv = [a.decode("utf-8", "replace") for a in kept.rstrip(b"\0").split(b"\0") if a]
            detail.update(ppid=r.ppid, filename=filename, argv_len=r.argv_len)
            if r.hook == 5:
                detail["signal"] = 9  # killed before the new image ran
            args = [filename, *argv]
        process: dict[str, Any] = {}
        if self.facts is not None:
            with contextlib.suppress(Exception):
                process = self.facts(r.protected_pid) or {}
        return {
            "ts": (r.ts + self._offset_ns) // 1_000_000,
            "pid": r.protected_pid,
            "runtime": runtime,
            "runtime_version": "",
            "hook": hook,
            "kind": kind,
            "args": args,
            "stack": [],
            "blocked": True,
            "policy_id": policy_id,
            "request": None,
            "process": process,
            "source": "enforce",
            "enforce": detail,
        }

    # ------------------------------------------------------------------ stats

    def kernel_counts(self) -> dict[str, int]:
        if not self.running:
            return {}
        ncpu = max(libbpf.lib().libbpf_num_possible_cpus(), 1)
        fd = self._map_fd("rpe_counts")
        out: dict[str, int] = {}
        for slot in range(HOOK_SLOTS):
            values = (ctypes.c_uint64 * ncpu)()
            key = ctypes.c_uint32(slot)
            if libbpf.lib().bpf_map_lookup_elem(fd, ctypes.byref(key), values) == 0:
                n = sum(values)
                name = "ring_drops" if slot == 0 else HOOK_KEYS.get(slot, str(slot))
                if n or slot == 0:
                    out[name] = n
        return out

    def stats(self) -> dict[str, Any]:
        self._prune()
        out: dict[str, Any] = {"mechanism": self.mechanism}
        if self.reason:
            out["reason"] = self.reason
        if self.lsm_reason:
            out["lsm"] = self.lsm_reason
        if self.running:
            out["programs"] = list(self.programs)
            out["cgroup"] = str(self.cgroup) if self.cgroup else ""
            out["kernel_runtimes"] = list(self.kernel_runtimes)
            out["protected"] = len(self.protected)
            out["blocked"] = self.kernel_counts()
            out["events"] = self.events
            out["by_policy"] = dict(self.by_policy)
            out["decode_errors"] = self.decode_errors
            out["policy"] = self.compiled.summary()
        return out

    def rows(self) -> list[dict[str, Any]]:
        self._prune()
        return [
            {
                "pid": p.pid,
                "runtime": p.runtime,
                "explicit": p.explicit,
                "since": int(p.since * 1000),
                "mechanism": self.mechanism,
            }
            for p in self.protected.values()
        ]
