"""Sinks that print events as JSON lines: to a file, or to stdout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

from host_agent.sinks.base import Sink, StoredEvent


class JsonLinesSink(Sink):
    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._f = os.fdopen(fd, "ab", buffering=1 << 16)

    def write(self, batch: list[StoredEvent]) -> None:
        assert self._f is not None
        self._f.write(b"".join(e.json + b"\n" for e in batch))
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class StdoutSink(Sink):
    name = "stdout"

    def write(self, batch: list[StoredEvent]) -> None:
        out = sys.stdout.buffer
        out.write(b"".join(e.json + b"\n" for e in batch))
        out.flush()
