"""The probe server: one asyncio Unix socket, one `PeerConnection` per peer.

Who may say what (design §3):
- every peer is identified by SO_PEERCRED (pid, uid) taken by the kernel at connect time;
- a probe's first frame is its hello; every probe frame must carry the peer's own pid (or
  its pid inside its own pid namespace): no one speaks for another process;
- `mode: attached` is only believed for a pid this agent recorded as attached; `mode: sdk`
  is allowed by settings (`sdk_allow`, `sdk_uids`);
- control requests (policy push, ps, attach bookkeeping) only from root or the agent's uid.
Anything else gets an error frame naming the reason, and that connection is closed; the
agent goes on serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from host_agent.registry import ProbeRecord, now_ms
from injector.process import ProcessError, read_process
from rasp.protocol import FrameReader, ProtocolError, decode_to_agent, encode
from rasp.protocol.schema import (
    ControlReply,
    ControlReplyData,
    ControlRequest,
    Error,
    ErrorData,
    Heartbeat,
    Hello,
    ProbeExit,
    Trace,
)

if TYPE_CHECKING:
    from host_agent.daemon import Agent

log = logging.getLogger("rampart.server")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
WRITE_BUFFER_LIMIT = 4 << 20  # a peer that stops reading our frames is dropped past this


class SocketInUse(Exception):
    pass


def bind_socket(path: Path, mode: int) -> socket.socket:
    """Create the listening socket with its final mode from the start.

    The mode comes from the umask at bind() time, not a chmod() after it, so there is no
    window in which the socket is more open than `mode`. A leftover socket file is removed
    only if it is a socket, ours, and nobody is listening on it (never steal a live agent's).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    parent = os.stat(path.parent)
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise SocketInUse(f"{path.parent} is world-writable without the sticky bit; refusing")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{path} exists and is not a socket")
        if st.st_uid != os.geteuid():
            raise SocketInUse(f"{path} exists and belongs to uid {st.st_uid}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            os.unlink(path)  # stale: left by an agent that did not exit cleanly
        else:
            raise SocketInUse(f"another agent is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(512)
    sock.setblocking(False)
    return sock


class PeerConnection(asyncio.Protocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        s = agent.settings
        self.reader = FrameReader(s.max_frame)
        self.transport: asyncio.Transport | None = None
        self.peer_pid = 0
        self.peer_uid = -1
        self.role = "new"  # new -> probe | control
        self.probe: ProbeRecord | None = None
        self.closed = False
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: tuple[float, str, str] = (0.0, "", "")
        self._last_frame = 0.0
        self._paused_by: set[str] = set()
        # token bucket for flood control, in frames
        self._rate = float(s.conn_rate)
        self._tokens = self._rate
        self._refill_at = time.monotonic()
        self._throttle_logged = False

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        self.peer_pid, self.peer_uid = pid, uid
        transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)
        self.agent.connections.add(self)
        if uid not in (0, os.geteuid()):
            # one user must not be able to use up the agent's file descriptors
            mine = sum(1 for c in self.agent.connections if c.peer_uid == uid)
            if mine > self.agent.settings.max_conns_per_uid:
                self.refuse("too_many_connections", f"uid {uid} has {mine - 1} connections open")
                return
        self._arm(self.agent.settings.hello_timeout, "timeout", "no frame received in time")
        if self.agent.paused_globally:
            self.pause("backlog")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.agent.connections.discard(self)
        if self._timer:
            self._timer.cancel()
        if not self._refused:
            try:
                self.reader.close()
            except ProtocolError as e:
                self.agent.count_refusal(e.code)
                log.warning("%s: %s: %s", self.who, e.code, e.reason)
        if self.probe is not None and self.probe.conn is self:
            self.agent.registry.gone(self.probe, "disconnected", "connection closed")

    @property
    def who(self) -> str:
        return f"peer pid={self.peer_pid} uid={self.peer_uid}"

    def _arm(self, seconds: float, code: str, reason: str) -> None:
        """Close the connection if no complete frame arrives for `seconds`.

        One timer per connection that re-arms itself when it fires early, rather than a new
        timer per frame: at 100k frames/s, per-frame timers were a large share of the cost.
        Bytes that never complete a frame do not count (no slow-loris keep-alive)."""
        self._deadline = (seconds, code, reason)
        self._last_frame = time.monotonic()
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(seconds, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self.closed:
            return
        seconds, code, reason = self._deadline
        quiet = time.monotonic() - self._last_frame
        if quiet >= seconds:
            self.refuse(code, reason)
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds - quiet, self._check_deadline)

    def refuse(self, code: str, reason: str) -> None:
        """Log why, tell the peer, close. The agent keeps serving everyone else."""
        if self.closed or self._refused:
            return
        self._refused = True
        self.agent.count_refusal(code)
        log.warning("%s: %s: %s; closing", self.who, code, reason)
        self.send(Error(data=ErrorData(code=code, reason=reason)))
        assert self.transport is not None
        self.transport.close()
        self.closed = True

    def send(self, message: msgspec.Struct) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.refuse("slow_reader", "peer does not read what the agent sends")
            return False
        self.transport.write(encode(message))
        return True

    # ------------------------------------------------------------------ flow control

    def pause(self, why: str) -> None:
        if not self._paused_by and self.transport and not self.closed:
            self.transport.pause_reading()
        self._paused_by.add(why)

    def resume(self, why: str) -> None:
        self._paused_by.discard(why)
        if not self._paused_by and self.transport and not self.closed:
            self.transport.resume_reading()

    def _spend(self, frames: int) -> None:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refill_at) * self._rate)
        self._refill_at = now
        self._tokens -= frames
        if self._tokens < 0:
            if not self._throttle_logged:
                self._throttle_logged = True
                log.warning("%s: over %d frames/s; throttling", self.who, int(self._rate))
            self.agent.stats["throttled"] += 1
            self.pause("rate")
            wait = -self._tokens / self._rate
            asyncio.get_running_loop().call_later(wait, self.resume, "rate")

    # ------------------------------------------------------------------ frames

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            payloads = self.reader.feed(data)
        except ProtocolError as e:
            self.refuse(e.code, e.reason)
            return
        if not payloads:
            return
        for payload in payloads:
            try:
                msg = decode_to_agent(payload)
            except ProtocolError as e:
                self.refuse(e.code, e.reason)
                return
            self.handle(msg)
            if self.closed:
                return
        self._last_frame = time.monotonic()
        if self.role == "probe":
            assert self.probe is not None
            self.probe.last_seen = now_ms()
            if self.agent.pipeline.backlog > self.agent.settings.queue_limit:
                self.agent.pause_all()
            self._spend(len(payloads))

    def handle(self, msg: Any) -> None:
        agent = self.agent
        if self.role == "probe":
            assert self.probe is not None
            if msg.__class__ is ControlRequest:
                self.refuse("protocol", "control requests are not accepted on a probe connection")
                return
            if msg.pid != self.probe.pid and msg.pid != self.probe.nspid:
                self.refuse(
                    "unauthorized",
                    f"frame for pid {msg.pid} on the connection of pid {self.probe.pid}",
                )
                return
            cls = msg.__class__
            if cls is Trace:
                agent.pipeline.submit(self.probe, msg)
            elif cls is Heartbeat:
                self._heartbeat(msg)
            elif cls is ProbeExit:
                self.probe.state = "exited"
                self.probe.reason = msg.data.reason or "probe exited"
            elif cls is Hello:
                self._second_hello(msg)
            return
        if self.role == "control":
            if msg.__class__ is not ControlRequest:
                self.refuse("protocol", "only control requests on a control connection")
                return
            self._control(msg)
            return
        # first frame
        if msg.__class__ is Hello:
            self._hello(msg)
        elif msg.__class__ is ControlRequest:
            if self.peer_uid not in (0, os.geteuid()):
                self.refuse("unauthorized", "control commands need root")
                return
            self.role = "control"
            self._arm(agent.settings.idle_timeout, "timeout", "control connection idle")
            self._control(msg)
        else:
            self.refuse("protocol", "the first frame must be a hello")

    def _second_hello(self, msg: Hello) -> None:
        self.refuse("protocol", "hello sent twice on one connection")

    def _hello(self, msg: Hello) -> None:
        agent = self.agent
        s = agent.settings
        try:
            info = read_process(self.peer_pid)
            nspid, ppid = info.nspid, info.ppid
        except ProcessError as e:
            # gone already (a short-lived process that said hello and exited): the driver's
            # process cache may still know it; SO_PEERCRED pinned the pid at connect time
            cached = agent.driver.process_facts(self.peer_pid)
            if cached is None:
                self.refuse("unauthorized", f"cannot read the peer process: {e.reason}")
                return
            nspid = cached.get("nspid", self.peer_pid)
            ppid = cached.get("ppid", 0)
        if msg.pid not in (self.peer_pid, nspid):
            self.refuse("unauthorized", f"hello for pid {msg.pid} from pid {self.peer_pid}")
            return
        mode = msg.data.mode
        if mode == "attached":
            if not agent.attachments.is_attached(self.peer_pid) and agent.attachments.is_attached(
                ppid
            ):
                # a fork of an attached process (a gunicorn worker, a multiprocessing child)
                # inherits its probe, which re-connects under the child's own pid
                with contextlib.suppress(ProcessError):  # gone already: refused below
                    agent.attachments.expect(self.peer_pid, msg.runtime)
            if not agent.attachments.is_attached(self.peer_pid):
                self.refuse(
                    "unauthorized",
                    f"pid {self.peer_pid} says it was attached, but this agent did not attach it",
                )
                return
        elif not s.sdk_allow:
            self.refuse("unauthorized", "SDK probes are not allowed (sdk_allow: false)")
            return
        elif s.sdk_uids and self.peer_uid not in s.sdk_uids:
            self.refuse("unauthorized", f"uid {self.peer_uid} may not run an SDK probe (sdk_uids)")
            return
        rec = ProbeRecord(
            pid=self.peer_pid,
            uid=self.peer_uid,
            runtime=msg.runtime,
            runtime_version=msg.runtime_version,
            probe_version=msg.probe_version,
            mode=mode,
            hooks=list(msg.data.hooks),
            nspid=nspid,
            already_running=msg.data.already_running,
            conn=self,
            facts=agent.driver.process_facts,
        )
        rec.refresh_process(force=True)
        self.role = "probe"
        self.probe = rec
        old = agent.registry.add(rec)
        if old is not None and old.conn is not None and old.conn is not self:
            old.conn.refuse("superseded", "a newer connection from the same process replaced it")
        log.info(
            "probe connected: pid=%d runtime=%s %s probe=%s mode=%s hooks=%d%s",
            rec.pid,
            rec.runtime,
            rec.runtime_version,
            rec.probe_version,
            mode,
            len(rec.hooks),
            " (already running)" if msg.data.already_running else "",
        )
        self._arm(s.idle_timeout, "timeout", "probe silent for too long")
        agent.push_policy(rec)

    def _heartbeat(self, msg: Heartbeat) -> None:
        assert self.probe is not None
        d = msg.data
        self.probe.heartbeat = {
            "sent": d.sent,
            "dropped": d.dropped,
            "blocked": d.blocked,
            "dropped_by": dict(d.dropped_by),
            "queue": d.queue,
        }
        self.probe.policies = dict(d.policies)
        self.probe.refresh_process()

    def _control(self, msg: ControlRequest) -> None:
        req = msg.data

        async def run() -> None:
            try:
                result = await self.agent.control.dispatch(req.command, req.args, self)
                reply = ControlReplyData(id=req.id, ok=True, result=result)
            except Exception as e:  # one line back to the CLI; the agent goes on
                if not isinstance(e, ControlFailure):
                    log.exception("control %s failed", req.command)
                reply = ControlReplyData(id=req.id, ok=False, error=str(e))
            self.send(ControlReply(data=reply))

        task = asyncio.get_running_loop().create_task(run())
        self.agent.tasks.add(task)
        task.add_done_callback(self.agent.tasks.discard)


class ControlFailure(Exception):
    """An expected failure of a control command: its message goes back as the error."""


def is_listening(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError as e:
        return e.errno not in (errno.ENOENT, errno.ECONNREFUSED)
    finally:
        s.close()
