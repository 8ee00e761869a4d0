"""A small synchronous client for the probe socket.

Used by the CLI (control requests), the tests and the benchmarks, and a reference for probe
authors. Real probes do not use it: each carries its own stdlib/runtime-native client.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from rasp.protocol.framing import FrameReader, ProtocolError, decode_from_agent, encode
from rasp.protocol.schema import (
    ControlReply,
    ControlRequest,
    ControlRequestData,
    Error,
    Heartbeat,
    HeartbeatData,
    Hello,
    HelloData,
    Trace,
    TraceData,
)


class AgentUnavailable(Exception):
    """No agent listens on the socket (or we may not connect to it)."""


class AgentRefused(Exception):
    """The agent sent an error frame and closed the connection."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ControlError(Exception):
    """A control command ran and failed; str() is the agent's one-line reason."""


class Connection:
    def __init__(self, path: str | Path, timeout: float | None = 10.0) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except FileNotFoundError:
            self.sock.close()
            raise AgentUnavailable(f"no agent socket at {self.path}") from None
        except ConnectionRefusedError:
            self.sock.close()
            raise AgentUnavailable(f"no agent listening on {self.path}") from None
        except PermissionError:
            self.sock.close()
            raise AgentUnavailable(f"permission denied connecting to {self.path}") from None
        self.reader = FrameReader(64 << 20)
        self._pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: msgspec.Struct) -> None:
        self.sock.sendall(encode(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> Any:
        """The next frame from the agent.

        Raises AgentRefused on an error frame, EOFError when the agent closes."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self._pending:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("agent closed the connection")
            self._pending.extend(self.reader.feed(data))
        msg = decode_from_agent(self._pending.pop(0))
        if isinstance(msg, Error):
            raise AgentRefused(msg.data.code, msg.data.reason)
        return msg


class ControlClient(Connection):
    _ids = itertools.count(1)

    def call(self, command: str, **args: Any) -> Any:
        rid = next(self._ids)
        self.send(ControlRequest(data=ControlRequestData(id=rid, command=command, args=args)))
        while True:
            msg = self.recv()
            if isinstance(msg, ControlReply) and msg.data.id == rid:
                if not msg.data.ok:
                    raise ControlError(msg.data.error or "failed")
                return msg.data.result


def control(
    path: str | Path, command: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    """One control command on a fresh connection (`timeout` bounds each socket read)."""
    try:
        with ControlClient(path, timeout=timeout) as c:
            return c.call(command, **(args or {}))
    except (EOFError, ConnectionResetError) as e:
        raise AgentUnavailable(f"agent closed the connection: {e}") from None
    except ProtocolError as e:
        raise AgentUnavailable(f"bad frame from the agent: {e}") from None


class ProbeClient(Connection):
    """Speaks for the calling process: hello, traces, heartbeats."""

    def __init__(
        self,
        path: str | Path,
        runtime: str = "python",
        mode: str = "sdk",
        pid: int | None = None,
        timeout: float | None = 10.0,
        hooks: list[str] | None = None,
    ) -> None:
        super().__init__(path, timeout)
        self.pid = pid or os.getpid()
        self.runtime = runtime
        self.mode = mode
        self.hooks = hooks or []

    def _env(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "runtime": self.runtime,
            "runtime_version": "test",
            "probe_version": "test",
            "time": time.time_ns() // 1_000_000,
        }

    def hello(self) -> None:
        self.send(Hello(**self._env(), data=HelloData(mode=self.mode, hooks=self.hooks)))  # type: ignore[arg-type]

    def trace(self, hook: str, kind: str, args: list[str] | None = None, **fields: Any) -> None:
        data = TraceData(hook=hook, kind=kind, args=args or [], **fields)  # type: ignore[arg-type]
        self.send(Trace(**self._env(), data=data))

    def trace_frame(
        self, hook: str, kind: str, args: list[str] | None = None, **fields: Any
    ) -> bytes:
        data = TraceData(hook=hook, kind=kind, args=args or [], **fields)  # type: ignore[arg-type]
        return encode(Trace(**self._env(), data=data))

    def heartbeat(self, **counters: Any) -> None:
        self.send(Heartbeat(**self._env(), data=HeartbeatData(**counters)))
