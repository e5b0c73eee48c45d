"""`StateStore` on SQLite: the events table and the document registry (schema in `database.py`)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from stores.events import EventStatus, FileEvent
from stores.outbox import Delivery
from stores.ports import ActiveRevision, DocumentRecord, DocumentStatus, EventRecord
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts
from stores.sqlite.listings import SqliteListings
from stores.sqlite.outbox import insert_deliveries


class SqliteStateStore(SqliteListings):
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
        values = (
            event.workspace,
            event.event_id,
            event.file_id,
            status.value,
            event.type.value,
            event.model_dump_json(),
            now,
            now,
        )
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO events (workspace, event_id, file_id, status, kind, payload, received_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            created = cur.rowcount == 1
            if not created and status is not EventStatus.REJECTED:
                # A rejected delivery never swallows a later valid one with the same id: it is replaced.
                cur = conn.execute(
                    "UPDATE events SET file_id = ?, status = ?, kind = ?, payload = ?, received_at = ?, updated_at = ?,"
                    " attempts = 0, error = NULL, detail = NULL, confirmed = 0"
                    " WHERE workspace = ? AND event_id = ? AND status = 'rejected'",
                    (*values[2:], event.workspace, event.event_id),
                )
                created = cur.rowcount == 1
            row = conn.execute(
                "SELECT * FROM events WHERE workspace = ? AND event_id = ?", (event.workspace, event.event_id)
            ).fetchone()
        return self._event(row), created

    def get_event(self, workspace: str, event_id: str) -> EventRecord | None:
        rows = self.db.query("SELECT * FROM events WHERE workspace = ? AND event_id = ?", (workspace, event_id))
        return self._event(rows[0]) if rows else None

    def set_event_status(
        self,
        workspace: str,
        event_id: str,
        status: EventStatus,
        *,
        error: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
        outbox: Sequence[Delivery] = (),
    ) -> EventRecord:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE events SET status = ?, error = ?, detail = ?, updated_at = ?,"
                " attempts = attempts + ? WHERE workspace = ? AND event_id = ?",
                (status.value, error, detail, time.time(), 1 if count_attempt else 0, workspace, event_id),
            )
            if cur.rowcount != 1:
                raise KeyError(event_id)
            insert_deliveries(conn, outbox)  # the same commit: settled and "to be told" cannot disagree
            row = conn.execute(
                "SELECT * FROM events WHERE workspace = ? AND event_id = ?", (workspace, event_id)
            ).fetchone()
        return self._event(row)

    def reset_for_retry(self, workspace: str, event_id: str, *, confirmed: bool = False) -> EventRecord:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE events SET status = 'queued', attempts = 0, confirmed = MAX(confirmed, ?), updated_at = ?"
                " WHERE workspace = ? AND event_id = ?",
                (1 if confirmed else 0, time.time(), workspace, event_id),
            )
            row = conn.execute(
                "SELECT * FROM events WHERE workspace = ? AND event_id = ?", (workspace, event_id)
            ).fetchone()
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
            "SELECT * FROM events WHERE status = ? ORDER BY received_at, workspace, event_id LIMIT ?",
            (status.value, limit),
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

    def switch_document(self, record: DocumentRecord, *, if_revision: str | None = None) -> bool:
        """Compare-and-set: applied only over an older (or equal, or absent, or legacy) stored position; with
        `if_revision`, only over a stored record whose revision is still that one."""
        if record.position is None:
            raise ValueError("a switch needs the position of the event it applies")
        if if_revision is not None:
            return self._keep_document(record, if_revision)
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO documents (workspace, file_id, path, status, position, revision, version,"
                " content_type, chunk_count, embedded, reused, last_event_id, last_error, metadata, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (workspace, file_id) DO UPDATE SET path = excluded.path, status = excluded.status,"
                " position = excluded.position, revision = excluded.revision, version = excluded.version,"
                " content_type = excluded.content_type, chunk_count = excluded.chunk_count,"
                " embedded = excluded.embedded, reused = excluded.reused, last_event_id = excluded.last_event_id,"
                " last_error = excluded.last_error, metadata = excluded.metadata, updated_at = excluded.updated_at"
                # Positions of the order rule start with a digit, those written before it with a letter
                # (>= 'a'): a legacy position is replaced by anything.
                " WHERE documents.position IS NULL OR documents.position <= excluded.position"
                " OR documents.position >= 'a'",
                (record.workspace, record.file_id, *_document_columns(record)),
            )
            return cur.rowcount == 1

    def _keep_document(self, record: DocumentRecord, revision: str) -> bool:
        # An UPDATE, not an upsert: a revision can only be kept where a record holds it.
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE documents SET path = ?, status = ?, position = ?, revision = ?, version = ?,"
                " content_type = ?, chunk_count = ?, embedded = ?, reused = ?, last_event_id = ?, last_error = ?,"
                " metadata = ?, updated_at = ?"
                " WHERE workspace = ? AND file_id = ? AND revision = ?"
                " AND (position IS NULL OR position <= ? OR position >= 'a')",
                (*_document_columns(record), record.workspace, record.file_id, revision, record.position),
            )
            return cur.rowcount == 1

    def note_document_error(
        self,
        workspace: str,
        file_id: str,
        path: str,
        error: str,
        *,
        position: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """Record that the latest event for a file failed, keeping whatever revision is active; with
        `position`, only if no newer event has been applied meanwhile. The document names the failed event
        (`last_event_id`), so a retry is one step away."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE documents SET status = ?, last_error = ?, last_event_id = COALESCE(?, last_event_id),"
                " updated_at = ? WHERE workspace = ? AND file_id = ?"
                " AND (? IS NULL OR position IS NULL OR position < ? OR position >= 'a')",
                (DocumentStatus.FAILED.value, error, event_id, time.time(), workspace, file_id, position, position),
            )
            exists = conn.execute(
                "SELECT 1 FROM documents WHERE workspace = ? AND file_id = ?", (workspace, file_id)
            ).fetchone()
            if cur.rowcount == 0 and exists is None:
                conn.execute(
                    "INSERT INTO documents (workspace, file_id, path, status, last_error, last_event_id, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (workspace, file_id, path, DocumentStatus.FAILED.value, error, event_id, time.time()),
                )

    def active_revisions(self, workspace: str, file_ids: Sequence[str]) -> dict[str, ActiveRevision]:
        out: dict[str, ActiveRevision] = {}
        ids = list(dict.fromkeys(file_ids))
        for i in range(0, len(ids), 500):  # SQLite's default limit on host parameters is 999
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for row in self.db.query(
                f"SELECT file_id, revision, version FROM documents WHERE workspace = ? AND file_id IN ({marks})"
                " AND revision IS NOT NULL",
                [workspace, *part],
            ):
                out[row["file_id"]] = ActiveRevision(row["revision"], row["version"])
        return out

    def workspaces(self) -> list[str]:
        rows = self.db.query("SELECT DISTINCT workspace FROM documents UNION SELECT DISTINCT workspace FROM events")
        return sorted(r[0] for r in rows)

    @contextmanager
    def batch(self) -> Iterator[None]:
        with self.db.transaction():
            yield

    def close(self) -> None:
        self.db.close()


def _document_columns(record: DocumentRecord) -> tuple[Any, ...]:
    """A document record's columns from `path` to `updated_at`, in the order the documents table lists them."""
    return (
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
    )
