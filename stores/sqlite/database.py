"""The embedded state in one SQLite file: the schema, its migrations and the shared connection.

One file so that "event stored" and "job queued" can never disagree after a crash, and WAL mode so the
API and the worker threads read while one of them writes. A single connection guarded by a lock: SQLite
serialises writers anyway, and this keeps transactions explicit. The tables' adapters: `state.py` (events
and documents), `queue.py` (the local job queue), `sessions.py` (conversations), `outbox.py` (outbound
webhook deliveries) and `subscriptions.py` (subscribers created through the API).

The schema version is SQLite's `user_version`. Version 1 keys events and jobs by (workspace, event id),
gives every job lease an owner, and keeps a session's turns one row each; a file of version 0 (the layout
before) is migrated in place, in one transaction, when it is opened. Version 2 adds the outbox and the
subscriptions tables (a version 1 file gets them, empty, when it is opened).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    workspace   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    file_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    detail      TEXT,
    confirmed   INTEGER NOT NULL DEFAULT 0,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (workspace, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_file ON events (workspace, file_id);
CREATE INDEX IF NOT EXISTS events_by_status ON events (status, received_at);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (workspace, kind, status, updated_at);
-- GET /events: a workspace's events newest first, a page at a time, without sorting the whole workspace
CREATE INDEX IF NOT EXISTS events_by_received ON events (workspace, received_at, event_id);
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
-- GET /documents: a workspace's documents by path, a page at a time
CREATE INDEX IF NOT EXISTS documents_by_path ON documents (workspace, path, file_id);
CREATE TABLE IF NOT EXISTS jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace     TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    group_key     TEXT NOT NULL,
    available_at  REAL NOT NULL,
    lease_until   REAL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    owner         TEXT,
    UNIQUE (workspace, event_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs (group_key, seq);
CREATE TABLE IF NOT EXISTS sessions (
    workspace   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (workspace, session_id)
);
CREATE TABLE IF NOT EXISTS session_turns (
    workspace   TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    turn        TEXT NOT NULL,
    PRIMARY KEY (workspace, session_id, seq)
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


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, int]:
    """Column name -> its position in the primary key (0: not part of it)."""
    return {row[1]: row[5] for row in conn.execute(f"PRAGMA table_info({table})")}


def _create_tables(conn: sqlite3.Connection) -> None:
    """Every table and index of SCHEMA that is missing (each statement says IF NOT EXISTS)."""
    # Statement by statement: executescript would commit the migration's transaction half-way.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def _migrate_from_v0(conn: sqlite3.Connection) -> None:
    """Version 0 keyed events and jobs by event id alone and kept a session's turns as one JSON array."""
    import json

    events = _columns(conn, "events")
    if events and events.get("workspace") == 0:
        conn.execute("ALTER TABLE events RENAME TO events_v0")
        for index in ("events_by_file", "events_by_status", "events_by_kind"):
            conn.execute(f"DROP INDEX IF EXISTS {index}")
    jobs = _columns(conn, "jobs")
    if jobs and "workspace" not in jobs:
        conn.execute("ALTER TABLE jobs RENAME TO jobs_v0")
        conn.execute("DROP INDEX IF EXISTS jobs_by_group")
    sessions = _columns(conn, "sessions")
    if "turns" in sessions:
        conn.execute("ALTER TABLE sessions RENAME TO sessions_v0")
    _create_tables(conn)
    if events and events.get("workspace") == 0:
        conn.execute(
            "INSERT OR IGNORE INTO events (workspace, event_id, file_id, status, attempts, error, detail, confirmed,"
            " kind, payload, received_at, updated_at) SELECT workspace, event_id, file_id, status, attempts, error,"
            " detail, confirmed, kind, payload, received_at, updated_at FROM events_v0"
        )
        conn.execute("DROP TABLE events_v0")
    if jobs and "workspace" not in jobs:
        # The group key is "<workspace>/<file id>" and workspace names cannot contain "/".
        conn.execute(
            "INSERT OR IGNORE INTO jobs (seq, workspace, event_id, group_key, available_at, receive_count)"
            " SELECT seq, substr(group_key, 1, instr(group_key, '/') - 1), event_id, group_key, available_at,"
            " receive_count FROM jobs_v0"
        )
        conn.execute("DROP TABLE jobs_v0")
    if "turns" in sessions:
        for row in conn.execute("SELECT * FROM sessions_v0").fetchall():
            conn.execute(
                "INSERT OR IGNORE INTO sessions (workspace, session_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (row[0], row[1], row[3], row[4]),
            )
            for seq, turn in enumerate(json.loads(row[2])):
                conn.execute(
                    "INSERT OR IGNORE INTO session_turns (workspace, session_id, seq, turn) VALUES (?, ?, ?, ?)",
                    (row[0], row[1], seq, json.dumps(turn)),
                )
        conn.execute("DROP TABLE sessions_v0")


class SqliteDatabase:
    """A shared connection with a lock; `StateStore`, `JobQueue` and the session store all use one."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on this connection (the owner of `_lock` alone touches it)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a 202 promises the event survives a power cut, not only a process crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._upgrade()

    def _upgrade(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version < 1:
                _migrate_from_v0(conn)  # on a new file: just creates the tables
            elif version < SCHEMA_VERSION:
                _create_tables(conn)  # 1 -> 2 adds tables (the outbox, the subscriptions), 2 -> 3 the listing indexes
            elif version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this eventrag ({SCHEMA_VERSION});"
                    " upgrade eventrag"
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def leases_dir(self) -> Path | None:
        """Where job-lease owners keep their liveness locks; None for an in-memory database."""
        return None if self.path == ":memory:" else Path(self.path + ".leases")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write. Nested in another (a `batch`), it is a savepoint: its writes are undone alone if
        it fails, and committed with the outer transaction (one fsync for a whole batch of events)."""
        with self._lock:
            depth = self._depth
            undo: tuple[str, ...]
            if depth == 0:
                begin, undo, end = "BEGIN IMMEDIATE", ("ROLLBACK",), "COMMIT"
            else:
                sp = f"sp{depth}"
                begin, undo, end = f"SAVEPOINT {sp}", (f"ROLLBACK TO {sp}", f"RELEASE {sp}"), f"RELEASE {sp}"
            self._conn.execute(begin)
            self._depth = depth + 1
            try:
                yield self._conn
            except BaseException:
                self._depth = depth
                for statement in undo:
                    self._conn.execute(statement)
                raise
            self._depth = depth
            self._conn.execute(end)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
