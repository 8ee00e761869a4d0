"""`rasp-agent run`: wires settings, policy, sinks, pipeline and server, and owns signals.

Start-up order is chosen so that every refusal happens before anything is left behind:
policy file (a bad one exits 2), then the socket (a live agent on it is never displaced),
then the store. On SIGTERM/SIGINT the agent stops reading, flushes what it has to the sinks,
and removes its socket. SIGHUP reloads the policy; a bad file keeps the policy in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import sqlite3
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from driver.loader import DriverError
from host_agent import __version__
from host_agent.attachments import Attachments
from host_agent.control import Control
from host_agent.enforce import EnforceError, KernelEnforcer, compile_policy
from host_agent.fifo import clear_stale, fifo_root
from host_agent.goprobes import GoProbes
from host_agent.hostdriver import HostDriver
from host_agent.pipeline import Pipeline
from host_agent.policy import PolicySet, empty, load_policy
from host_agent.registry import ProbeRecord, Registry, process_fields
from host_agent.rules import RuleSet, load_rules, with_detect
from host_agent.server import PeerConnection, SocketInUse, bind_socket
from host_agent.settings import Settings
from host_agent.sinks import SinkRunner, build
from host_agent.yamlfile import ConfigError
from injector.process import ProcessError, read_process

if TYPE_CHECKING:
    from host_agent.autoattach import AutoAttacher
    from host_agent.fifo import FifoPair

log = logging.getLogger("rampart.agent")

BACKLOG_CHECK_S = 0.05


class Agent:
    def __init__(self, settings: Settings, policy: PolicySet, rules: RuleSet | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.rules = rules or RuleSet()
        self.registry = Registry()
        self.control = Control(self)
        self.goprobes = GoProbes(self)
        self.connections: set[PeerConnection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.paused_globally = False
        self.started = time.time()
        self.runners: list[SinkRunner] = []
        self.pipeline: Pipeline
        self.driver: HostDriver
        self.attachments: Attachments
        self.enforcer: KernelEnforcer
        self._server: asyncio.AbstractServer | None = None
        self.autoattach: AutoAttacher | None = None
        self.fifos: dict[int, FifoPair] = {}  # JDK 8-15 probes: host_agent/fifo.py
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        s = self.settings
        sock = bind_socket(s.socket, s.socket_mode)
        try:
            self.runners = [SinkRunner(sink) for sink in build(s)]
            for r in self.runners:
                r.start()
            self.attachments = Attachments(s.store)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.socket)
            for r in self.runners:
                r.close()
            raise
        self.pipeline = Pipeline(s, self.runners, self.policy, self.rules)
        loop = asyncio.get_running_loop()
        self.driver = HostDriver(s, self.pipeline)
        try:
            self.driver.start(loop)  # `driver: on` and it cannot load: refuse to start
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.socket)
            for r in self.runners:
                r.close()
            self.attachments.close()
            raise
        # kernel blocking: never fatal, the agent runs on without it (stats say why)
        self.enforcer = KernelEnforcer(
            s.enforce, s.kernel_enforce, submit=self.pipeline.submit_host, facts=self._facts
        )
        self.enforcer.start(loop)
        try:
            self.enforcer.load_policy(self.policy)  # its limits were checked by run()
        except EnforceError as e:
            log.error("kernel enforcement off: the policy tables could not be written: %s", e)
            self.enforcer.stop()
            self.enforcer.reason = f"policy tables not written: {e}"
        self.registry.listeners.append(self.enforcer.on_probe)
        # Go has no in-process blocking: its uprobe attach puts the pid under kernel policy
        self.goprobes.on_attached.append(lambda pid: self.enforcer.on_probe("add", pid, "golang"))
        self.goprobes.on_detached.append(lambda pid: self.enforcer.on_probe("gone", pid, "golang"))
        clear_stale(s.socket)
        self._server = await loop.create_unix_server(lambda: PeerConnection(self), sock=sock)
        self._watch = loop.create_task(self._watch_backlog())
        if s.auto_attach:
            from host_agent.autoattach import AutoAttacher

            self.autoattach = AutoAttacher(self)
            self.autoattach.start()
        log.info(
            "rasp-agent %s listening on %s (store %s, policy %s %s, driver %s, enforce %s)",
            __version__,
            s.socket,
            s.store,
            self.policy.source,
            self.policy.uuid,
            self.driver.mode,
            self.enforcer.mechanism,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        log.info("stopping")
        if self.autoattach is not None:
            await self.autoattach.stop()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for pair in list(self.fifos.values()):
            pair.close()
        with contextlib.suppress(OSError):  # only when empty: never another agent's pairs
            os.rmdir(fifo_root(self.settings.socket))
        self._watch.cancel()
        for t in list(self.tasks):
            t.cancel()
        self.enforcer.stop()  # destroys every link: nothing stays on the cgroup root
        self.goprobes.stop()  # removes every Go uprobe; its last events join the flush
        self.driver.stop()  # detaches every program; its last events join the final flush
        self.pipeline.flush()
        for r in self.runners:
            r.close()
        self.attachments.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.socket)
        log.info("stopped: %s", self.pipeline.stats())

    # ------------------------------------------------------------------ backpressure

    def pause_all(self) -> None:
        if not self.paused_globally:
            self.paused_globally = True
            self.stats["backpressure"] += 1
            log.warning("sinks behind by %d events: pausing probe reads", self.pipeline.backlog)
            for c in self.connections:
                c.pause("backlog")

    async def _watch_backlog(self) -> None:
        while True:
            await asyncio.sleep(BACKLOG_CHECK_S)
            if self.paused_globally and self.pipeline.backlog < self.settings.queue_limit // 2:
                self.paused_globally = False
                for c in list(self.connections):
                    c.resume("backlog")

    # ------------------------------------------------------------------ policy

    def push_policy(self, rec: ProbeRecord) -> None:
        if rec.conn is None:
            return
        frames = self.policy.frames_for(rec.runtime)
        detect = self.rules.detect_rules(rec.process.get("exe", ""))
        pushed = self.policy.uuid
        if detect:
            # detection rules in block mode ride on the block table; its uuid names both, so
            # a heartbeat tells which rules a probe has in force
            frames, pushed = with_detect(frames, detect)
        for frame in frames:
            rec.conn.send(frame)
        rec.pushed_policy = pushed

    def reload(self) -> tuple[bool, str]:
        """SIGHUP: reload the policy and the detection rules; each keeps its old version
        when its file is bad."""
        results = []
        if self.settings.policy is not None:
            results.append(self.reload_policy())
        if self.settings.rules is not None:
            results.append(self.reload_rules())
        if not results:
            return False, "no policy or rules file configured (--policy, --rules)"
        return all(ok for ok, _ in results), "; ".join(m for _, m in results)

    def reload_rules(self) -> tuple[bool, str]:
        path = self.settings.rules
        if path is None:
            return False, "no rules file configured (--rules / RAMPART_RULES)"
        try:
            new = load_rules(path)
        except ConfigError as e:
            log.error("rules reload refused, keeping the rules in force: %s", e)
            return False, f"{e} (the rules in force stay)"
        new.whitelisted = self.rules.whitelisted
        self.rules = new
        self.pipeline.rules = new
        probes = self.registry.connected()
        for rec in probes:  # block-mode rules and their exemptions travel with the block table
            self.push_policy(rec)
        self.goprobes.push_detect()  # and into the kernel for Go processes
        msg = (
            f"rules loaded from {path}: {len(new.overrides)} overrides, "
            f"{len(new.whitelist)} whitelist entries, pushed to {len(probes)} probes"
        )
        log.info(msg)
        return True, msg

    def reload_policy(self) -> tuple[bool, str]:
        path = self.settings.policy
        if path is None:
            return False, "no policy file configured (--policy / RAMPART_POLICY)"
        try:
            new = load_policy(path)
            compiled = compile_policy(new, self.settings.kernel_enforce)
        except ConfigError as e:
            log.error("policy reload refused, keeping %s: %s", self.policy.uuid, e)
            return False, f"{e} (policy {self.policy.uuid} stays in force)"
        self.policy = new
        self.pipeline.policy = new
        try:
            self.enforcer.load_policy(compiled)
        except EnforceError as e:  # a map write failed: say so, the probes have the new policy
            log.error("kernel tables not updated: %s", e)
            return False, f"policy {new.uuid} loaded, but the kernel tables were not: {e}"
        probes = self.registry.connected()
        for rec in probes:
            self.push_policy(rec)
        msg = (
            f"policy {new.uuid} loaded from {path}: {len(new.policies)} policies, "
            f"pushed to {len(probes)} probes"
        )
        log.info(msg)
        return True, msg

    def count_refusal(self, code: str) -> None:
        self.refusals[code] += 1

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 1),
            "connections": len(self.connections),
            "probes": len(self.registry.connected()),
            "policy": self.policy.uuid,
            "refused": dict(self.refusals),
            **dict(self.stats),
            **self.pipeline.stats(),
            "driver": self.driver.stats(),
            "enforce": self.enforcer.stats(),
            "golang": self.goprobes.stats(),
        }

    def _facts(self, pid: int) -> dict[str, Any] | None:
        """The `process` object of a kernel block event: the driver's cache, else /proc."""
        facts = self.driver.process_facts(pid)
        if facts is None:
            rec = self.registry.probes.get(pid)
            facts = rec.process if rec is not None and rec.process else None
        if facts is None:
            with contextlib.suppress(ProcessError):
                facts = process_fields(read_process(pid))
        return facts


def load_initial_policy(settings: Settings) -> PolicySet:
    return load_policy(settings.policy) if settings.policy is not None else empty()


def _raise_fd_limit() -> None:
    """One connection per probe process: let the agent use every fd it is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _main(settings: Settings, policy: PolicySet, rules: RuleSet) -> None:
    _raise_fd_limit()
    agent = Agent(settings, policy, rules)
    await agent.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, agent.request_stop)
    loop.add_signal_handler(signal.SIGINT, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.reload)
    await agent.serve()


def run(settings: Settings) -> int:
    """Run the agent until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        policy = load_initial_policy(settings)
        compile_policy(policy, settings.kernel_enforce)  # the kernel's limits, before start
        rules = load_rules(settings.rules) if settings.rules is not None else RuleSet()
    except ConfigError as e:
        log.error("%s", e)
        return 2
    try:
        asyncio.run(_main(settings, policy, rules))
    except (OSError, sqlite3.Error, SocketInUse, DriverError) as e:
        log.error("cannot start: %s", e)
        return 1
    return 0
