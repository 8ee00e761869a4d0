"""The sink interface. The pipeline hands batches of finished events to every sink; each sink
runs in its own thread behind a bounded queue, so a slow sink never stalls the event loop,
and the pipeline can see how far behind the slowest one is (to slow the probes down rather
than lose events). A new sink (gRPC, Kafka) is one subclass and one line in `sinks.build`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("rampart.sink")


@dataclass(slots=True)
class StoredEvent:
    """One finished event: the columns sinks index, and the event's JSON (design §4)."""

    ts: int
    pid: int
    runtime: str
    kind: str
    hook: str
    blocked: bool
    policy_id: str | None
    alerted: bool
    json: bytes
    #: what the detectors found (design: alerts stored next to their events), and the
    #: request signature alerts are aggregated by
    detections: tuple[dict[str, Any], ...] = ()
    signature: str = ""


class Sink(ABC):
    name: str = "sink"

    def open(self) -> None:  # noqa: B027 - optional hook
        """Called in the sink's thread before the first batch."""

    @abstractmethod
    def write(self, batch: list[StoredEvent]) -> None:
        """Write one batch; raise on failure (the runner retries, then counts the loss)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called in the sink's thread after the last batch."""


class SinkRunner:
    """Owns one sink's thread and queue, and its counters."""

    RETRIES = 3

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._queue: deque[list[StoredEvent]] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # events queued or being written
        self._closing = False
        self._opened = threading.Event()
        self.open_error: BaseException | None = None
        self.written = 0
        self.failed = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        self._opened.wait(timeout)
        if self.open_error is not None:
            raise self.open_error

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, batch: list[StoredEvent]) -> None:
        with self._cond:
            self._queue.append(batch)
            self._pending += len(batch)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Drain what is queued, then close the sink."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self.sink.open()
        except BaseException as e:  # reported to start(): the agent refuses to run without it
            self.open_error = e
            self._opened.set()
            return
        self._opened.set()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    break
                batch = self._queue.popleft()
            self._write(batch)
            with self._cond:
                self._pending -= len(batch)
        try:
            self.sink.close()
        except Exception:
            log.exception("%s: close failed", self.sink.name)

    def _write(self, batch: list[StoredEvent]) -> None:
        for attempt in range(self.RETRIES):
            try:
                self.sink.write(batch)
                self.written += len(batch)
                return
            except Exception as e:
                self.errors += 1
                log.warning(
                    "%s: write of %d events failed (attempt %d/%d): %s",
                    self.sink.name,
                    len(batch),
                    attempt + 1,
                    self.RETRIES,
                    e,
                )
                time.sleep(0.05 * (attempt + 1))
        # counted, never silent: `rasp-agent ps`/stats and the log show the loss
        self.failed += len(batch)
        log.error("%s: %d events lost after %d attempts", self.sink.name, len(batch), self.RETRIES)
