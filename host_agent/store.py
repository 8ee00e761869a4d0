"""Reading the SQLite store: the queries behind `rasp-agent events`."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_agent.sinks.sqlite import connect


class StoreMissing(Exception):
    pass


def _open(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StoreMissing(f"no event store at {path} (start the agent, or pass --store)")
    try:
        conn = connect(path, readonly=True)
        conn.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as e:
        raise StoreMissing(f"{path} is not a Rampart store: {e}") from None
    return conn


ALERT_COLUMNS = (
    "id, first_ts, last_ts, count, rule, severity, technique, message, pid, runtime, "
    "signature, event_id"
)


def latest_alerts(
    path: Path, rule: str | None = None, pid: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Alert rows, latest first, each with the event that first raised it."""
    conn = _open(path)
    try:
        clauses, params = [], []
        if rule is not None:
            clauses.append("a.rule = ?")
            params.append(rule)
        if pid is not None:
            clauses.append("a.pid = ?")
            params.append(pid)
        where = " AND ".join(clauses) or "1"
        cols = ", ".join(f"a.{c.strip()}" for c in ALERT_COLUMNS.split(","))
        rows = conn.execute(
            f"SELECT {cols}, e.event FROM alerts a LEFT JOIN events e ON e.id = a.event_id "
            f"WHERE {where} ORDER BY a.last_ts DESC, a.id DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
    finally:
        conn.close()
    names = [c.strip() for c in ALERT_COLUMNS.split(",")]
    out = []
    for r in rows:
        a = dict(zip(names, r[:-1], strict=True))
        a["event"] = json.loads(r[-1]) if r[-1] else None
        out.append(a)
    return out


@dataclass(frozen=True)
class EventQuery:
    pid: int | None = None
    runtime: str | None = None
    kind: str | None = None
    limit: int = 50

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for col in ("pid", "runtime", "kind"):
            v = getattr(self, col)
            if v is not None:
                clauses.append(f"{col} = ?")
                params.append(v)
        return (" AND ".join(clauses) or "1"), params

    def open(self, path: Path) -> StoreReader:
        return StoreReader(_open(path), self)


class StoreReader:
    def __init__(self, conn: sqlite3.Connection, query: EventQuery) -> None:
        self.conn = conn
        self.query = query
        self.last_id = 0

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def latest(self) -> list[dict[str, Any]]:
        """The newest `limit` events, oldest first."""
        where, params = self.query.where()
        rows = self.conn.execute(
            f"SELECT id, event FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
            [*params, self.query.limit],
        ).fetchall()
        if rows:
            self.last_id = rows[0][0]
        else:
            (self.last_id,) = self.conn.execute(
                "SELECT coalesce(max(id), 0) FROM events"
            ).fetchone()
        return [json.loads(e) for _id, e in reversed(rows)]

    def newer(self) -> list[dict[str, Any]]:
        where, params = self.query.where()
        rows = self.conn.execute(
            f"SELECT id, event FROM events WHERE id > ? AND {where} ORDER BY id LIMIT 10000",
            [self.last_id, *params],
        ).fetchall()
        if rows:
            self.last_id = rows[-1][0]
        return [json.loads(e) for _id, e in rows]
