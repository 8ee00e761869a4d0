"""Which processes this agent attached a probe to.

A probe that says `mode: attached` in its hello is only believed if the agent recorded the
attach (rasp-attach asks for it first, through a root-only control command). The record is
(pid, start time), so a recycled pid does not inherit trust, and it is kept in the store so
that probes reconnecting after an agent restart are still recognised.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from host_agent.sinks.sqlite import connect
from injector.process import ProcessError, start_time

log = logging.getLogger("rampart.attach")


class Attachments:
    def __init__(self, store: Path) -> None:
        self._db: sqlite3.Connection = connect(store)
        self._known: set[tuple[int, int]] = {
            (pid, st) for pid, st in self._db.execute("SELECT pid, start_time FROM attachments")
        }
        self._prune()

    def _prune(self) -> None:
        """Forget processes that no longer exist (or whose pid was reused)."""
        stale = []
        for pid, st in self._known:
            try:
                alive = start_time(pid) == st
            except ProcessError:
                alive = False
            if not alive:
                stale.append((pid, st))
        if stale:
            self._db.executemany("DELETE FROM attachments WHERE pid = ? AND start_time = ?", stale)
            self._known.difference_update(stale)

    def expect(self, pid: int, runtime: str) -> None:
        """Record that we are attaching to `pid` (raises ProcessError if it is gone)."""
        st = start_time(pid)
        self._db.execute(
            "INSERT OR REPLACE INTO attachments (pid, start_time, runtime, ts) VALUES (?, ?, ?, ?)",
            (pid, st, runtime, int(time.time() * 1000)),
        )
        self._known.add((pid, st))

    def is_attached(self, pid: int) -> bool:
        try:
            st = start_time(pid)
        except ProcessError:
            return False
        return (pid, st) in self._known

    def close(self) -> None:
        self._db.close()
