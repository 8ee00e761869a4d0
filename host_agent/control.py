"""Control commands (root only), sent by the CLI over the probe socket as type-200 frames.

Each command is a coroutine taking the request's `args`; what it returns goes back as the
reply's `result`. A `ControlFailure` becomes a one-line error for the user.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from host_agent.enforce import EnforceError
from host_agent.fifo import FifoError, open_pair
from host_agent.server import ControlFailure, PeerConnection
from injector.process import ProcessError
from rasp.protocol.schema import AgentExit, Block, Config, Filter, QuotaFrame

if TYPE_CHECKING:
    from host_agent.daemon import Agent

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
#: frames `push` may send to probes
_PUSHABLE = Config | Filter | Block | QuotaFrame | AgentExit
_push_decoder = msgspec.json.Decoder(_PUSHABLE)


def _pid(args: dict[str, Any], required: bool = True) -> int | None:
    pid = args.get("pid")
    if pid is None and not required:
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ControlFailure(f"pid must be a positive integer, got {pid!r}")
    return pid


class Control:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.commands: dict[str, Handler] = {
            "ping": self.ping,
            "ps": self.ps,
            "stats": self.stats,
            "policy.show": self.policy_show,
            "policy.reload": self.policy_reload,
            "push": self.push,
            "attach.expect": self.attach_expect,
            "attach.wait": self.attach_wait,
            "enforce.status": self.enforce_status,
            "enforce.protect": self.enforce_protect,
            "enforce.unprotect": self.enforce_unprotect,
            "attach.fifo": self.attach_fifo,
            "golang.attach": self.golang_attach,
            "golang.detach": self.golang_detach,
        }

    async def dispatch(self, command: str, args: dict[str, Any], conn: PeerConnection) -> Any:
        handler = self.commands.get(command)
        if handler is None:
            raise ControlFailure(
                f"unknown command {command!r}; known: {', '.join(sorted(self.commands))}"
            )
        return await handler(args)

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        from host_agent import __version__

        return {
            "pid": os.getpid(),
            "version": __version__,
            "socket": str(self.agent.settings.socket),
            "jvm_transport": self.agent.settings.jvm_transport,  # rasp-attach's JVM route
        }

    async def ps(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        rows = {pid: r.row() for pid, r in self.agent.registry.probes.items()}
        aa = self.agent.autoattach
        for t in aa.rows() if aa is not None else []:
            # auto-attach state joins the probe's row, or stands alone before any hello
            rows.setdefault(t["pid"], {"state": "not connected"}).update(t)
        enforcer = self.agent.enforcer
        for p in enforcer.rows():
            # kernel-enforced processes; an explicitly protected one may have no probe at all
            row = rows.setdefault(p["pid"], {"pid": p["pid"], "runtime": p["runtime"]})
            row.setdefault("state", "kernel-enforced")
            row["enforce"] = p["mechanism"]
        return list(rows.values())

    async def stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.agent.stats_snapshot()

    async def policy_show(self, args: dict[str, Any]) -> dict[str, Any]:
        p = self.agent.policy
        return {
            "uuid": p.uuid,
            "source": p.source,
            "policies": [x.spec.model_dump(mode="json", exclude_none=True) for x in p.policies],
            "quotas": [q.model_dump(mode="json", exclude_none=True) for q in p.quotas],
        }

    async def policy_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        ok, message = self.agent.reload()
        if not ok:
            raise ControlFailure(message)
        return {"uuid": self.agent.policy.uuid, "message": message}

    async def push(self, args: dict[str, Any]) -> dict[str, Any]:
        frame = args.get("frame")
        try:
            message = _push_decoder.decode(msgspec.json.encode(frame))
        except msgspec.MsgspecError as e:
            raise ControlFailure(f"not a frame the agent may push to probes: {e}") from None
        pid = _pid(args, required=False)
        targets = self.agent.registry.connected()
        if pid is not None:
            targets = [r for r in targets if r.pid == pid]
            if not targets:
                raise ControlFailure(f"no probe connected for pid {pid}")
        sent = sum(1 for r in targets if r.conn is not None and r.conn.send(message))
        return {"sent": sent}

    async def enforce_status(self, args: dict[str, Any]) -> dict[str, Any]:
        enforcer = self.agent.enforcer
        return {**enforcer.stats(), "processes": enforcer.rows()}

    async def enforce_protect(self, args: dict[str, Any]) -> dict[str, Any]:
        """Put a pid under kernel enforcement by hand (ops, tests): it stays protected until
        `enforce.unprotect` or its exit, whatever its probe does."""
        pid = _pid(args)
        assert pid is not None
        runtime = str(args.get("runtime", "golang"))
        try:
            rec = self.agent.enforcer.protect(pid, runtime, explicit=True)
        except EnforceError as e:
            raise ControlFailure(str(e)) from None
        return {"pid": rec.pid, "runtime": rec.runtime, "mechanism": self.agent.enforcer.mechanism}

    async def enforce_unprotect(self, args: dict[str, Any]) -> dict[str, Any]:
        pid = _pid(args)
        assert pid is not None
        if not self.agent.enforcer.unprotect(pid):
            raise ControlFailure(f"pid {pid} is not protected")
        return {"pid": pid}

    async def attach_expect(self, args: dict[str, Any]) -> dict[str, Any]:
        pid = _pid(args)
        assert pid is not None
        try:
            self.agent.attachments.expect(pid, str(args.get("runtime", "")))
        except ProcessError as e:
            raise ControlFailure(str(e)) from None
        rec = self.agent.registry.probes.get(pid)
        return {"connected": rec is not None and rec.conn is not None}

    async def attach_fifo(self, args: dict[str, Any]) -> dict[str, Any]:
        """The FIFO pair a JDK 8-15 probe talks over (host_agent/fifo.py): its directory."""
        pid = _pid(args)
        assert pid is not None
        try:
            return {"dir": str(open_pair(self.agent, pid))}
        except FifoError as e:
            raise ControlFailure(str(e)) from None

    async def attach_wait(self, args: dict[str, Any]) -> dict[str, Any]:
        pid = _pid(args)
        assert pid is not None
        timeout = float(args.get("timeout", 10.0))
        try:
            rec = await self.agent.registry.wait_hello(pid, timeout)
        except TimeoutError:
            raise ControlFailure(f"no hello from pid {pid} within {timeout:g} s") from None
        return rec.row()

    async def golang_attach(self, args: dict[str, Any]) -> dict[str, Any]:
        """Uprobes on a Go process (host_agent/goprobes.py); the agent owns them."""
        pid = _pid(args)
        assert pid is not None
        return await self.agent.goprobes.attach(pid)

    async def golang_detach(self, args: dict[str, Any]) -> dict[str, Any]:
        pid = _pid(args)
        assert pid is not None
        return self.agent.goprobes.detach(pid)
