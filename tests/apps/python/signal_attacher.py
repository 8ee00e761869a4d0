"""A test attacher for `injector.attach`: "injects" by sending SIGUSR2 to a cooperative target
(tests/apps/python/cooperative_target.py), which then says hello as an attached probe."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from injector.detect import Detection


class SignalAttacher:
    runtime = "python"

    def __init__(self) -> None:
        self.calls = 0

    def attach(self, target: Detection, socket: Path, timeout: float) -> None:
        self.calls += 1
        os.kill(target.pid, signal.SIGUSR2)

    def detach(self, target: Detection, socket: Path, timeout: float) -> None:
        raise NotImplementedError


ATTACHER = SignalAttacher()
