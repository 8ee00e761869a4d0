"""Go: the probe is a set of eBPF uprobes owned by the host agent (host_agent/goprobes.py).

Nothing is injected into the process (Frida hooks crash busy Go programs; see
docs/go-probe.md): `rasp-attach` asks the running agent, over the root-only control channel,
to attach the uprobes for this pid, and the agent answers with the probe's row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from injector.detect import Detection
from rasp.protocol.client import control


class GoAttacher:
    runtime = "golang"

    def attach_in_agent(self, target: Detection, socket: Path, timeout: float) -> dict[str, Any]:
        row: dict[str, Any] = control(
            socket, "golang.attach", {"pid": target.pid}, timeout=timeout + 5
        )
        return row

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        self.attach_in_agent(target, socket, timeout)

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        control(socket, "golang.detach", {"pid": target.pid}, timeout=timeout + 5)


ATTACHER = GoAttacher()
