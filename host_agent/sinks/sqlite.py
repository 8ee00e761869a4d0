"""The embedded store: SQLite in WAL mode, one transaction per batch.

Each event is one row: the columns we filter on (ts, pid, runtime, kind, hook, blocked,
policy_id, alerted) and the whole event as JSON text, so `sqlite3 events.db` and
`json_extract()` work for users, and the schema does not change when events gain fields.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from host_agent.sinks.base import Sink, StoredEvent

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    runtime TEXT NOT NULL,
    kind TEXT NOT NULL,
    hook TEXT NOT NULL,
    blocked INTEGER NOT NULL,
    policy_id TEXT,
    alerted INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_pid ON events (pid, ts);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, ts);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    count INTEGER NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    technique TEXT NOT NULL,
    message TEXT NOT NULL,
    pid INTEGER NOT NULL,
    runtime TEXT NOT NULL,
    signature TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    UNIQUE (rule, pid, signature, bucket)
);
CREATE INDEX IF NOT EXISTS alerts_last ON alerts (last_ts);
CREATE TABLE IF NOT EXISTS attachments (
    pid INTEGER NOT NULL,
    start_time INTEGER NOT NULL,
    runtime TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (pid, start_time)
);
"""

INSERT = (
    "INSERT INTO events (ts, pid, runtime, kind, hook, blocked, policy_id, alerted, event) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def connect(path: Path | str, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the store's pragmas; creates the file and schema when writable."""
    if readonly:
        uri = f"file:{Path(path).absolute()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        return conn
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    conn = sqlite3.connect(str(path), timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a crash loses at most the last transactions, never corrupts
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )
    # events hold command lines and request data: not for other users' eyes
    os.chmod(path, 0o600)
    return conn


ALERT_UPSERT = (
    "INSERT INTO alerts (first_ts, last_ts, count, rule, severity, technique, message, pid, "
    "runtime, signature, bucket, event_id) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (rule, pid, signature, bucket) DO UPDATE SET "
    "count = count + 1, last_ts = max(last_ts, excluded.last_ts)"
)


def _row(e: StoredEvent) -> tuple[object, ...]:
    return (
        e.ts,
        e.pid,
        e.runtime,
        e.kind,
        e.hook,
        e.blocked,
        e.policy_id,
        e.alerted,
        e.json.decode(),
    )


class SqliteSink(Sink):
    name = "sqlite"

    def __init__(self, path: Path, alert_window_ms: int = 60_000) -> None:
        self.path = path
        self.alert_window_ms = alert_window_ms
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = connect(self.path)

    def write(self, batch: list[StoredEvent]) -> None:
        assert self._conn is not None
        conn = self._conn
        conn.execute("BEGIN")
        try:
            run: list[tuple[object, ...]] = []
            for e in batch:
                if not e.detections:
                    run.append(_row(e))
                    continue
                # an event with detections is inserted on its own, in order, so its alert
                # rows can point at it; they are rare, the rest goes through executemany
                if run:
                    conn.executemany(INSERT, run)
                    run = []
                event_id = conn.execute(INSERT, _row(e)).lastrowid
                bucket = e.ts // self.alert_window_ms
                conn.executemany(
                    ALERT_UPSERT,
                    [
                        (e.ts, e.ts, d["rule"], d["severity"], d["technique"], d["message"],
                         e.pid, e.runtime, e.signature, bucket, event_id)
                        for d in e.detections
                    ],
                )  # fmt: skip
            if run:
                conn.executemany(INSERT, run)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
