"""Automatic attach: find runtime processes as they start, attach the ones the config
names, and keep a visible state per process (docs/auto-attach.md).

    discovered ──settle──> attaching ──hello──> attached
         ▲                    │                    │
         └──backoff── failed ◄┘ (gives up after attach_retries)        any ──exit──> gone

Discovery: exec events from the driver (eBPF, or its proc-connector fallback: within
milliseconds), plus a /proc rescan every `attach_rescan_s`. Each attach runs as a separate
helper process (`rasp-attach`), with a time limit and in a cgroup with memory and CPU caps,
so a helper that hangs or crashes costs the agent nothing: it is killed and the state says
why.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import pwd
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driver import events as ev
from host_agent.cgroup import HelperCgroup
from injector.detect import Detection, NotSupported, detect
from injector.process import PROC, ProcessError, read_process, read_stat, start_time

if TYPE_CHECKING:
    from host_agent.daemon import Agent

log = logging.getLogger("rampart.autoattach")

RULE_FIELDS = {"exe", "cmdline", "user", "container", "cgroup", "pid"}
#: never attached, whatever the rules say: init, system daemons, the agent's own family
SYSTEM_PREFIXES = ("/usr/sbin/", "/sbin/", "/lib/systemd/", "/usr/lib/systemd/")
OPT_OUT = b"RAMPART_DISABLE=1"
#: our own tools (rasp-agent ps, rasp-attach) run on the same runtimes they protect
OWN_TOOLS = re.compile(r"(?:^|/)rasp-(?:agent|attach)\b|-m (?:injector|host_agent)\.")
RECONNECT_GRACE_S = 40.0  # a probe reconnects within its 30 s max backoff


def check_rule(rule: Any) -> str:
    """Why `rule` is not a valid include/exclude rule, or ""."""
    if not isinstance(rule, dict) or not rule:
        return "must be a mapping with at least one of " + ", ".join(sorted(RULE_FIELDS))
    unknown = set(rule) - RULE_FIELDS
    if unknown:
        return f"unknown field {sorted(unknown)[0]!r}; use " + ", ".join(sorted(RULE_FIELDS))
    if "cmdline" in rule:
        try:
            re.compile(str(rule["cmdline"]))
        except re.error as e:
            return f"cmdline: invalid regex: {e}"
    if "pid" in rule and not isinstance(rule["pid"], int):
        return "pid must be an integer"
    return ""


@dataclass
class Candidate:
    """What the rules look at, read once per process."""

    pid: int
    exe: str
    cmdline: str
    uid: int
    container: str
    cgroup: str

    def user_is(self, user: Any) -> bool:
        if isinstance(user, int) or str(user).isdigit():
            return self.uid == int(user)
        try:
            return pwd.getpwnam(str(user)).pw_uid == self.uid
        except KeyError:
            return False

    def matches(self, rule: dict[str, Any]) -> bool:
        if "pid" in rule and rule["pid"] != self.pid:
            return False
        if "exe" in rule and not fnmatch.fnmatchcase(self.exe, str(rule["exe"])):
            return False
        if "cmdline" in rule and not re.search(str(rule["cmdline"]), self.cmdline):
            return False
        if "user" in rule and not self.user_is(rule["user"]):
            return False
        if "container" in rule and not fnmatch.fnmatchcase(self.container, str(rule["container"])):
            return False
        return "cgroup" not in rule or fnmatch.fnmatchcase(self.cgroup, str(rule["cgroup"]))


def _cgroup_path(pid: int) -> str:
    try:
        for line in Path(f"{PROC}/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return ""


@dataclass
class Tracked:
    pid: int
    start_time: int
    runtime: str
    version: str
    exe: str
    state: str = "discovered"  # discovered | attaching | attached | failed | gone
    since: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    reason: str = ""
    attempts: int = 0
    gave_up: bool = False
    helper_running: bool = False
    due: float = 0.0  # monotonic time of the next attach attempt

    def to(self, state: str, reason: str = "") -> None:
        if state != self.state:
            self.since = time.time_ns() // 1_000_000
        self.state = state
        self.reason = reason

    def row(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "runtime": self.runtime,
            "runtime_version": self.version,
            "exe": self.exe,
            "attach_state": self.state,
            "attach_since": self.since,
            "attach_reason": self.reason,
            "attempts": self.attempts,
        }


class AutoAttacher:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.settings = agent.settings
        self.tracked: dict[int, Tracked] = {}
        self.cgroup = HelperCgroup(self.settings.attach_memory_mb, self.settings.attach_cpu_percent)
        self.discovery = "rescan"
        self._task: asyncio.Task[None] | None = None
        self._helpers: set[asyncio.subprocess.Process] = set()
        self._wake = asyncio.Event()
        self._seen: dict[int, tuple[int, str]] = {}  # pid -> (start time, comm) judged

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        driver = self.agent.driver
        if driver.mode != "proc":
            driver.process_listeners.append(self._on_process_event)
            self.discovery = f"{driver.mode} exec events + rescan"
        else:
            log.warning("no exec events (%s): discovering by /proc rescan only", driver.reason)
        cg = self.cgroup.setup()
        log.info(
            "auto-attach on for %s (discovery: %s, helper cgroup: %s)",
            ",".join(self.settings.auto_attach),
            self.discovery,
            cg,
        )
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.agent.driver.process_listeners.remove(self._on_process_event)
        if self._task is not None:
            self._task.cancel()
        for h in list(self._helpers):
            if h.returncode is None:
                h.kill()
                await h.wait()
        self.cgroup.teardown()

    # ------------------------------------------------------------------ discovery

    def _on_process_event(self, e: ev.DriverEvent) -> None:
        if e.data_type == ev.DT_EXECVE:
            self._on_exec(e.pid)
        else:
            self._on_exit(e.pid)

    def _on_exec(self, pid: int) -> None:
        # an exec replaces the image: judge the process afresh
        self._seen.pop(pid, None)
        old = self.tracked.pop(pid, None)
        if old is not None and old.state != "gone":
            old.to("gone", "exec'd another program")
        self._consider(pid)
        self._wake.set()

    def _on_exit(self, pid: int) -> None:
        self._seen.pop(pid, None)
        t = self.tracked.get(pid)
        if t is not None and t.state != "gone":
            t.to("gone", "process exited")

    def rescan(self) -> None:
        live = {int(e) for e in os.listdir(PROC) if e.isdigit()}
        # forget judgements of processes that are gone (their exits may have been missed)
        for pid in [p for p in self._seen if p not in live]:
            del self._seen[pid]
        for pid in live:
            self._consider(pid)

    def _excluded_family(self, pid: int) -> bool:
        """The agent, its ancestors' init, and everything the agent started (helpers)."""
        me = os.getpid()
        cur, depth = pid, 0
        while cur > 1 and depth < 64:
            if cur == me:
                return True
            try:
                cur = read_process(cur).ppid
            except ProcessError:
                return True
            depth += 1
        return pid <= 1

    def _consider(self, pid: int) -> None:
        """Judge a process once per (pid, start time, comm): track it if the rules want it."""
        try:
            comm, _state, _ppid, st = read_stat(pid)
        except ProcessError:
            return
        # the comm too: an exec changes it, so a process first seen before its exec (a
        # container's set-up shell that then execs the app) is judged afresh by the rescan
        # when no exec events come (driver off)
        if self._seen.get(pid) == (st, comm):
            return
        self._seen[pid] = (st, comm)
        if pid in self.tracked and self.tracked[pid].start_time == st:
            return
        why = self._refusal(pid)
        if why is not None:
            if why:
                log.debug("pid %d not attached: %s", pid, why)
            return
        try:
            det = detect(pid)
        except (ProcessError, NotSupported):
            return
        if det.runtime not in self.settings.auto_attach:
            return
        if not self._wanted(det):
            return
        settle = self.settings.attach_settle_s.get(det.runtime, 0.5)
        t = Tracked(pid, st, det.runtime, det.version, det.exe, due=time.monotonic() + settle)
        if det.refusal:
            t.to("failed", det.refusal)
            t.gave_up = True
        elif self.agent.attachments.is_attached(pid):
            # attached before an agent restart: its probe reconnects by itself; re-injecting
            # would only make it say hello again, so give it time first
            t.to("attaching", "waiting for the probe to reconnect")
            t.due = time.monotonic() + RECONNECT_GRACE_S
        self.tracked[pid] = t
        log.info("discovered pid %d (%s %s, %s)", pid, det.runtime, det.version, det.exe)

    def _refusal(self, pid: int) -> str | None:
        """None if the process may be looked at; else why not ("" = not worth a log line)."""
        try:
            info = read_process(pid)
        except ProcessError:
            return ""
        if not info.exe or info.zombie:
            return ""
        if info.exe.startswith(SYSTEM_PREFIXES):
            return ""
        if self._excluded_family(pid):
            return ""
        if OWN_TOOLS.search(" ".join(info.cmdline[:3])):
            return "a Rampart tool"
        try:
            environ = Path(f"{PROC}/{pid}/environ").read_bytes()
        except OSError:
            environ = b""
        if OPT_OUT in environ.split(b"\0"):
            return "RAMPART_DISABLE=1 in its environment"
        return None

    def _wanted(self, det: Detection) -> bool:
        try:
            info = read_process(det.pid)
        except ProcessError:
            return False
        c = Candidate(
            pid=det.pid,
            exe=info.exe,
            cmdline=" ".join(info.cmdline),
            uid=info.uid,
            container=info.container_id,
            cgroup=_cgroup_path(det.pid),
        )
        if any(c.matches(r) for r in self.settings.attach_exclude):
            return False
        return any(c.matches(r) for r in self.settings.attach_include)

    # ------------------------------------------------------------------ state machine

    async def _run(self) -> None:
        next_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                self.rescan()
                next_scan = now + self.settings.attach_rescan_s
            self._tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.2)

    def _tick(self) -> None:
        now = time.monotonic()
        connected = {r.pid for r in self.agent.registry.connected()}
        for t in list(self.tracked.values()):
            if t.state == "gone":
                continue
            try:
                alive = start_time(t.pid) == t.start_time
            except ProcessError:
                alive = False
            if not alive:
                t.to("gone", "process exited")
                continue
            if t.pid in connected:
                if t.state != "attached":
                    t.to("attached")
                continue
            if t.state == "attached":  # its probe went away (the agent keeps the reason)
                t.to("failed", "probe disconnected")
                t.gave_up = True  # do not inject again into a process that dropped it
                continue
            ready = t.state in ("discovered", "failed", "attaching") and not t.gave_up
            if ready and now >= t.due and not t.helper_running:
                self._launch(t)
        self._forget_gone()

    def _forget_gone(self) -> None:
        gone = [p for p, t in self.tracked.items() if t.state == "gone"]
        for pid in gone[: max(0, len(gone) - 500)]:  # keep the latest 500 for `ps`
            del self.tracked[pid]

    def _launch(self, t: Tracked) -> None:
        t.attempts += 1
        t.helper_running = True
        t.to("attaching", "helper running")
        task = asyncio.get_running_loop().create_task(self._attach(t))
        self.agent.tasks.add(task)
        task.add_done_callback(self.agent.tasks.discard)

    def _command(self, pid: int) -> list[str]:
        s = self.settings
        base = s.attach_command or [sys.executable, "-m", "injector.cli"]
        return [
            *base,
            "--pid", str(pid),
            "--socket", str(s.socket),
            "--timeout", str(max(1.0, s.attach_timeout_s - 2)),
            "--json",
        ]  # fmt: skip

    async def _attach(self, t: Tracked) -> None:
        try:
            await self._run_helper(t)
        finally:
            t.helper_running = False

    async def _run_helper(self, t: Tracked) -> None:
        s = self.settings
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(t.pid),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "RAMPART_DISABLE": "1"},  # helpers are never targets
            )
        except OSError as e:
            self._failed(t, f"cannot start the attach helper: {e}")
            return
        self._helpers.add(proc)
        self.cgroup.add(proc.pid)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), s.attach_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self._failed(t, f"attach helper killed after {s.attach_timeout_s:g} s")
            return
        finally:
            self._helpers.discard(proc)
        if t.state == "gone":
            return
        if proc.returncode == 0:
            t.to("attached")
            log.info("attached pid %d (%s)", t.pid, t.runtime)
            return
        self._failed(t, _reason(out, err, proc.returncode))

    def _failed(self, t: Tracked, reason: str) -> None:
        if t.state == "gone":
            return
        t.to("failed", reason)
        if t.attempts > self.settings.attach_retries:
            t.gave_up = True
            t.reason = f"gave up after {t.attempts} attempts: {reason}"
            log.warning("pid %d: %s", t.pid, t.reason)
            return
        backoff = min(60.0, 2.0**t.attempts)
        t.due = time.monotonic() + backoff
        log.info("pid %d: attach failed (%s); retry in %g s", t.pid, reason, backoff)

    def rows(self) -> list[dict[str, Any]]:
        return [t.row() for t in self.tracked.values()]


def _reason(out: bytes, err: bytes, code: int | None) -> str:
    try:
        return str(json.loads(out.decode().strip().splitlines()[-1])["error"])
    except (ValueError, IndexError, KeyError, TypeError):
        pass
    line = err.decode(errors="replace").strip().splitlines()
    return line[-1].removeprefix("rasp-attach: ") if line else f"attach helper exited {code}"
