"""The embedded state: events, the document registry and the local job queue in one SQLite file.

One file so that "event stored" and "job queued" can never disagree after a crash, and WAL mode so the
API and the worker threads read while one of them writes. A single connection guarded by a lock: SQLite
serialises writers anyway, and this keeps transactions explicit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.events import EventStatus, FileEvent
from ingest.ports import DocumentRecord, DocumentStatus, EventRecord, Job

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
"""


def _ts(value: float) -> datetime:
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


class SqliteStateStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    # events -------------------------------------------------------------------------------------------
    @staticmethod
    def _event(row: sqlite3.Row) -> EventRecord:
        return EventRecord(
            event=FileEvent.model_validate_json(row["payload"]),
            status=EventStatus(row["status"]),
            received_at=_ts(row["received_at"]),
            updated_at=_ts(row["updated_at"]),
            attempts=row["attempts"],
            error=row["error"],
            detail=row["detail"],
            confirmed=bool(row["confirmed"]),
        )

    def add_event(self, event: FileEvent, status: EventStatus) -> tuple[EventRecord, bool]:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO events (event_id, workspace, file_id, status, kind, payload, received_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.event_id,
                    event.workspace,
                    event.file_id,
                    status.value,
                    event.type.value,
                    event.model_dump_json(),
                    now,
                    now,
                ),
            )
            created = cur.rowcount == 1
            row = conn.execute("SELECT * FROM events WHERE event_id = ?", (event.event_id,)).fetchone()
        return self._event(row), created

    def get_event(self, event_id: str) -> EventRecord | None:
        rows = self.db.query("SELECT * FROM events WHERE event_id = ?", (event_id,))
        return self._event(rows[0]) if rows else None

    def set_event_status(
        self,
        event_id: str,
        status: EventStatus,
        *,
        error: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
    ) -> EventRecord:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE events SET status = ?, error = ?, detail = ?, updated_at = ?,"
                " attempts = attempts + ? WHERE event_id = ?",
                (status.value, error, detail, time.time(), 1 if count_attempt else 0, event_id),
            )
            if cur.rowcount != 1:
                raise KeyError(event_id)
            row = conn.execute("SELECT * FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return self._event(row)

    def reset_for_retry(self, event_id: str, *, confirmed: bool = False) -> EventRecord:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE events SET status = 'queued', attempts = 0, confirmed = MAX(confirmed, ?), updated_at = ?"
                " WHERE event_id = ?",
                (1 if confirmed else 0, time.time(), event_id),
            )
            row = conn.execute("SELECT * FROM events WHERE event_id = ?", (event_id,)).fetchone()
        if row is None:
            raise KeyError(event_id)
        return self._event(row)

    def count_recent_deletes(self, workspace: str, since: datetime) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) FROM events WHERE workspace = ? AND kind = 'file.deleted' AND status = 'done'"
            " AND updated_at >= ?",
            (workspace, since.timestamp()),
        )
        return int(rows[0][0])

    def list_events(
        self,
        workspace: str,
        *,
        status: EventStatus | None = None,
        file_id: str | None = None,
        limit: int = 100,
    ) -> list[EventRecord]:
        sql, params = "SELECT * FROM events WHERE workspace = ?", [workspace]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status.value]
        if file_id is not None:
            sql, params = sql + " AND file_id = ?", [*params, file_id]
        rows = self.db.query(sql + " ORDER BY received_at DESC, event_id LIMIT ?", [*params, limit])
        return [self._event(r) for r in rows]

    def events_with_status(self, status: EventStatus, limit: int = 1000) -> list[EventRecord]:
        rows = self.db.query(
            "SELECT * FROM events WHERE status = ? ORDER BY received_at LIMIT ?", (status.value, limit)
        )
        return [self._event(r) for r in rows]

    def purge_events(self, older_than: datetime) -> int:
        """Forget terminal events older than the retention window (their ids stop deduplicating)."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM events WHERE received_at < ? AND status IN ('done', 'superseded', 'failed', 'rejected')",
                (older_than.timestamp(),),
            )
            return cur.rowcount

    # documents ----------------------------------------------------------------------------------------
    @staticmethod
    def _document(row: sqlite3.Row) -> DocumentRecord:
        return DocumentRecord(
            workspace=row["workspace"],
            file_id=row["file_id"],
            path=row["path"],
            status=DocumentStatus(row["status"]),
            position=row["position"],
            revision=row["revision"],
            version=row["version"],
            content_type=row["content_type"],
            chunk_count=row["chunk_count"],
            embedded=row["embedded"],
            reused=row["reused"],
            last_event_id=row["last_event_id"],
            last_error=row["last_error"],
            metadata=json.loads(row["metadata"]),
            updated_at=_ts(row["updated_at"]),
        )

    def get_document(self, workspace: str, file_id: str) -> DocumentRecord | None:
        rows = self.db.query("SELECT * FROM documents WHERE workspace = ? AND file_id = ?", (workspace, file_id))
        return self._document(rows[0]) if rows else None

    def list_documents(
        self, workspace: str, *, status: DocumentStatus | None = None, limit: int = 1000, offset: int = 0
    ) -> list[DocumentRecord]:
        sql, params = "SELECT * FROM documents WHERE workspace = ?", [workspace]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status.value]
        rows = self.db.query(sql + " ORDER BY path, file_id LIMIT ? OFFSET ?", [*params, limit, offset])
        return [self._document(r) for r in rows]

    def count_documents(self, workspace: str, status: DocumentStatus) -> int:
        rows = self.db.query(
            "SELECT COUNT(*) AS n FROM documents WHERE workspace = ? AND status = ?",
            (workspace, status.value),
        )
        return int(rows[0]["n"])

    def switch_document(self, record: DocumentRecord) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO documents (workspace, file_id, path, status, position, revision, version,"
                " content_type, chunk_count, embedded, reused, last_event_id, last_error, metadata, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.workspace,
                    record.file_id,
                    record.path,
                    record.status.value,
                    record.position,
                    record.revision,
                    record.version,
                    record.content_type,
                    record.chunk_count,
                    record.embedded,
                    record.reused,
                    record.last_event_id,
                    record.last_error,
                    json.dumps(record.metadata),
                    time.time(),
                ),
            )

    def note_document_error(self, workspace: str, file_id: str, path: str, error: str) -> None:
        """Record that the latest event for a file failed, keeping whatever revision is active."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE documents SET status = ?, last_error = ?, updated_at = ? WHERE workspace = ? AND file_id = ?",
                (DocumentStatus.FAILED.value, error, time.time(), workspace, file_id),
            )
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT INTO documents (workspace, file_id, path, status, last_error, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (workspace, file_id, path, DocumentStatus.FAILED.value, error, time.time()),
                )

    def active_revisions(self, workspace: str, file_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(dict.fromkeys(file_ids))
        for i in range(0, len(ids), 500):  # SQLite's default limit on host parameters is 999
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.query(
                f"SELECT file_id, revision FROM documents WHERE workspace = ? AND file_id IN ({marks})"
                " AND revision IS NOT NULL",
                [workspace, *part],
            ):
                out[row["file_id"]] = row["revision"]
        return out

    def workspaces(self) -> list[str]:
        rows = self.db.query("SELECT DISTINCT workspace FROM documents UNION SELECT DISTINCT workspace FROM events")
        return sorted(r[0] for r in rows)

    def close(self) -> None:
        self.db.close()


class SqliteJobQueue:
    """FIFO per group with one job in flight per group: the semantics of an SQS FIFO queue."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def enqueue(self, event_id: str, group_key: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO jobs (event_id, group_key, available_at) VALUES (?, ?, ?)",
                (event_id, group_key, time.time()),
            )

    def requeue(self, event_id: str, group_key: str) -> None:
        """Queue an event again on purpose (retry, confirmed delete, repair); a job still queued stays."""
        self.enqueue(event_id, group_key)

    def claim(self, limit: int, lease_seconds: float) -> list[Job]:
        now = time.time()
        with self.db.transaction() as conn:
            # Only the head of each group is eligible, and only if it is neither delayed nor leased: a group
            # whose head is in flight waits, which keeps one file's events strictly in order.
            rows = conn.execute(
                "SELECT j.* FROM jobs j WHERE j.seq = (SELECT MIN(seq) FROM jobs WHERE group_key = j.group_key)"
                " AND j.available_at <= ? AND (j.lease_until IS NULL OR j.lease_until <= ?)"
                " ORDER BY j.seq LIMIT ?",
                (now, now, limit),
            ).fetchall()
            jobs = []
            for row in rows:
                receipt = secrets.token_hex(8)
                conn.execute(
                    "UPDATE jobs SET lease_until = ?, receive_count = receive_count + 1, receipt = ? WHERE seq = ?",
                    (now + lease_seconds, receipt, row["seq"]),
                )
                jobs.append(Job(row["event_id"], row["group_key"], row["receive_count"] + 1, receipt))
        return jobs

    def ack(self, job: Job) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE event_id = ? AND receipt = ?", (job.event_id, job.receipt))

    def release(self, job: Job, delay_seconds: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET lease_until = NULL, receipt = NULL, available_at = ?"
                " WHERE event_id = ? AND receipt = ?",
                (time.time() + delay_seconds, job.event_id, job.receipt),
            )

    def release_all_leases(self) -> int:
        """At start-up of the only process using this file: whatever was in flight died with the last one."""
        with self.db.transaction() as conn:
            return conn.execute(
                "UPDATE jobs SET lease_until = NULL, receipt = NULL WHERE lease_until IS NOT NULL"
            ).rowcount

    def pending(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM jobs")[0][0])


class SqliteSessionStore:
    """Conversation history, keyed by (workspace, session id)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def get_session(self, workspace: str, session_id: str) -> Any:
        from retrieval.sessions import Session, Turn

        rows = self.db.query("SELECT * FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
        if not rows:
            return None
        row = rows[0]
        return Session(
            workspace=workspace,
            session_id=session_id,
            turns=[Turn(**t) for t in json.loads(row["turns"])],
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
        )

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Any]) -> Any:
        from dataclasses import asdict

        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT turns FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id)
            ).fetchone()
            existing = json.loads(row["turns"]) if row else []
            existing.extend(asdict(t) for t in turns)
            conn.execute(
                "INSERT INTO sessions (workspace, session_id, turns, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (workspace, session_id) DO UPDATE SET turns = excluded.turns,"
                " updated_at = excluded.updated_at",
                (workspace, session_id, json.dumps(existing), now, now),
            )
        return self.get_session(workspace, session_id)

    def delete_session(self, workspace: str, session_id: str) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
            return cur.rowcount > 0
