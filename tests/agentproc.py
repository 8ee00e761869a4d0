"""Running the real agent as a subprocess on a temporary socket and store, for tests."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasp.protocol.client import ProbeClient, control

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RASP_AGENT = str(BIN / "rasp-agent")
RASP_ATTACH = str(BIN / "rasp-attach")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until cond() is truthy. The timeout is a safety net, not a performance claim."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class AgentProc:
    dir: Path
    socket: Path
    store: Path
    jsonl: Path
    policy: Path
    log: Path
    env: dict[str, str]

    @property
    def stdout(self) -> Path:
        return self.dir / "agent.stdout"

    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, wait: bool = True) -> AgentProc:
        args = [
            RASP_AGENT,
            "run",
            "--socket",
            str(self.socket),
            "--store",
            str(self.store),
            "--jsonl",
            str(self.jsonl),
            *self.extra_args,
        ]
        if self.policy.exists():
            args += ["--policy", str(self.policy)]
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self._out = open(self.stdout, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._log, env=self.env)
        if wait:
            wait_for(self._ready, 20, "the agent socket")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited {self.proc.returncode}: {self.log_text()}")
        try:
            control(self.socket, "ping", timeout=1)
            return True
        except Exception:
            return False

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._out.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def control(self, command: str, **args: Any) -> Any:
        return control(self.socket, command, args)

    def probe(self, **kw: Any) -> ProbeClient:
        return ProbeClient(self.socket, **kw)

    def rows(self, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
        if not self.store.exists():
            return []
        db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True)
        try:
            return [
                json.loads(e)
                for (e,) in db.execute(
                    f"SELECT event FROM events WHERE {where} ORDER BY id", params
                )
            ]
        finally:
            db.close()

    def wait_rows(self, n: int, where: str = "1", params: tuple = (), timeout: float = 15) -> list:
        return wait_for(
            lambda: (r := self.rows(where, params)) and len(r) >= n and r,
            timeout,
            f"{n} stored events",
        )

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RASP_AGENT, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=check,
            timeout=60,
        )


RAW_CLIENT = REPO / "tests" / "apps" / "rawclient.py"


def raw_client(
    socket_path: Path, frames: list[dict[str, Any]], user: int | None = None, wait: float = 1.0
) -> list[Any]:
    """Run the stdlib client in its own process (optionally as another uid, via setpriv).

    Returns the frames the agent sent back, and "EOF" if it closed the connection."""
    cmd = ["/usr/bin/python3", str(RAW_CLIENT), str(socket_path), json.dumps(frames), str(wait)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line if line == "EOF" else json.loads(line) for line in res.stdout.splitlines()]
