"""The embedded state in one SQLite file: the schema and the shared connection.

One file so that "event stored" and "job queued" can never disagree after a crash, and WAL mode so the
API and the worker threads read while one of them writes. A single connection guarded by a lock: SQLite
serialises writers anyway, and this keeps transactions explicit. The tables' adapters: `state.py` (events
and documents), `queue.py` (the local job queue), `sessions.py` (conversations),
`outbox.py` (outbound webhook deliveries).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    workspace   TEXT NOT NULL,
    file_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    detail      TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_file ON events (workspace, file_id);
CREATE INDEX IF NOT EXISTS events_by_status ON events (status);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (workspace, kind, status, updated_at);
CREATE TABLE IF NOT EXISTS documents (
    workspace     TEXT NOT NULL,
    file_id       TEXT NOT NULL,
    path          TEXT NOT NULL,
    status        TEXT NOT NULL,
    position      TEXT,
    revision      TEXT,
    version       INTEGER,
    content_type  TEXT,
    chunk_count   INTEGER NOT NULL DEFAULT 0,
    embedded      INTEGER NOT NULL DEFAULT 0,
    reused        INTEGER NOT NULL DEFAULT 0,
    last_event_id TEXT,
    last_error    TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    updated_at    REAL NOT NULL,
    PRIMARY KEY (workspace, file_id)
);
CREATE TABLE IF NOT EXISTS jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    group_key     TEXT NOT NULL,
    available_at  REAL NOT NULL,
    lease_until   REAL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs (group_key, seq);
CREATE TABLE IF NOT EXISTS sessions (
    workspace   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    turns       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (workspace, session_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    delivery_id     TEXT PRIMARY KEY,
    message_id      TEXT NOT NULL,
    workspace       TEXT NOT NULL,
    subscriber      TEXT NOT NULL,
    url             TEXT NOT NULL,
    type            TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status     INTEGER,
    last_response   TEXT,
    last_error      TEXT,
    file_id         TEXT,
    event_id        TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_by_workspace ON outbox (workspace, created_at, delivery_id);
CREATE TABLE IF NOT EXISTS subscriptions (
    workspace   TEXT NOT NULL,
    id          TEXT NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (workspace, id)
);
"""


def ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class SqliteDatabase:
    """A shared connection with a lock; `StateStore`, `JobQueue` and the session store all use one."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a 202 promises the event survives a power cut, not only a process crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
