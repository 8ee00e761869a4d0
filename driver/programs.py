"""Every BPF program of the driver, declared once: which event it serves, where it attaches.

An *event* is what a user turns on or off (`driver_events` setting): it has an Elkeid
data_type, a stored `kind` (design §4), and one or more programs. Programs attach either to
a BTF tracepoint (`tp_btf/...`) or to a syscall number in the sys_enter / sys_exit tail-call
tables (`enter`/`exit` + numbers: dispatch.bpf.c). Adding an event touches its .bpf.c file,
its record in rampart.h + driver/events.py, and rows here.
"""

from __future__ import annotations

from dataclasses import dataclass

from driver import events as ev


@dataclass(frozen=True)
class Event:
    name: str
    data_type: int
    kind: str
    stored_by_default: bool
    #: loaded whatever the settings say: the process cache needs it
    feeds_cache: bool = False


@dataclass(frozen=True)
class Program:
    event: str  # Event.name, or "" for the dispatchers
    bpf_name: str  # the C function name in driver/bpf/
    attach: str  # "tp_btf/<tracepoint>", "raw_tp/<tracepoint>", "enter" or "exit"
    syscalls: tuple[int, ...] = ()  # for enter/exit: x86-64 syscall numbers


EVENTS: tuple[Event, ...] = (
    Event("execve", ev.DT_EXECVE, "process", True, feeds_cache=True),
    Event("fork", ev.DT_FORK, "process", False, feeds_cache=True),
    Event("exit", ev.DT_EXIT, "process", False, feeds_cache=True),
    Event("connect", ev.DT_CONNECT, "network", True),
    Event("bind", ev.DT_BIND, "network", True),
    Event("accept", ev.DT_ACCEPT, "network", False),
    Event("dns", ev.DT_DNS, "dns", True),
    Event("ptrace", ev.DT_PTRACE, "process", True),
    Event("memfd_create", ev.DT_MEMFD_CREATE, "file", True),
    Event("load_module", ev.DT_LOAD_MODULE, "library", True),
    Event("mount", ev.DT_MOUNT, "file", True),
    Event("cred_change", ev.DT_CRED_CHANGE, "process", True),
    Event("prctl", ev.DT_PRCTL, "process", True, feeds_cache=True),
    Event("open", ev.DT_OPEN, "file", False),
)

SETUID_CALLS = (105, 113, 117, 122)  # setuid, setreuid, setresuid, setfsuid

PROGRAMS: tuple[Program, ...] = (
    Program("", "rp_sys_enter", "raw_tp/sys_enter"),
    Program("", "rp_sys_exit", "raw_tp/sys_exit"),
    Program("execve", "rp_exec", "tp_btf/sched_process_exec"),
    Program("execve", "rp_enter_execve", "enter", (59, 322)),  # execve, execveat
    Program("fork", "rp_fork", "tp_btf/sched_process_fork"),
    Program("exit", "rp_exit", "tp_btf/sched_process_exit"),
    Program("connect", "rp_exit_connect", "exit", (42,)),
    Program("bind", "rp_exit_bind", "exit", (49,)),
    Program("accept", "rp_enter_accept", "enter", (43, 288)),  # accept, accept4
    Program("accept", "rp_exit_accept", "exit", (43, 288)),
    Program("dns", "rp_enter_sendto", "enter", (44,)),
    Program("dns", "rp_enter_sendmsg", "enter", (46,)),
    Program("dns", "rp_enter_sendmmsg", "enter", (307,)),
    Program("ptrace", "rp_enter_ptrace", "enter", (101,)),
    Program("memfd_create", "rp_enter_memfd_create", "enter", (319,)),
    Program("load_module", "rp_enter_init_module", "enter", (175,)),
    Program("load_module", "rp_enter_finit_module", "enter", (313,)),
    Program("mount", "rp_enter_mount", "enter", (165,)),
    Program("cred_change", "rp_enter_setuid", "enter", SETUID_CALLS),
    Program("cred_change", "rp_exit_setuid", "exit", SETUID_CALLS),
    Program("prctl", "rp_enter_prctl", "enter", (157,)),
    Program("open", "rp_enter_openat", "enter", (257,)),
)

EVENT_BY_NAME = {e.name: e for e in EVENTS}
EVENT_BY_TYPE = {e.data_type: e for e in EVENTS}
EVENT_NAMES = tuple(e.name for e in EVENTS)
DEFAULT_STORED = [e.name for e in EVENTS if e.stored_by_default]


def loaded_events(stored: list[str] | set[str]) -> set[str]:
    """Events whose programs are loaded: the stored ones plus those the cache needs."""
    return set(stored) | {e.name for e in EVENTS if e.feeds_cache}


def programs_for(events: set[str]) -> list[Program]:
    """The programs to load for these events, dispatchers included when a syscall is hooked."""
    chosen = [p for p in PROGRAMS if p.event in events]
    if any(p.attach in ("enter", "exit") for p in chosen):
        chosen = [p for p in PROGRAMS if p.event == ""] + chosen
    return chosen
