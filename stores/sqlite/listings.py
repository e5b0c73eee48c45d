"""The operator listings of `SqliteStateStore`: events and documents a page at a time, and `/stats`.

Keyset pagination: events newest first on (received_at, event_id), documents on (path, file_id); the
cursor is the key of the last row of a page, so the next page starts strictly after it.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Any

from stores.events import EventStatus
from stores.paging import Page, cursor_number, decode_cursor, encode_cursor
from stores.ports import DocumentRecord, DocumentStatus, EventRecord, WorkspaceStats
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts

UNSETTLED = (EventStatus.RECEIVED.value, EventStatus.QUEUED.value, EventStatus.PROCESSING.value)


class SqliteListings:
    db: SqliteDatabase

    @staticmethod
    def _event(row: sqlite3.Row) -> EventRecord:
        raise NotImplementedError

    @staticmethod
    def _document(row: sqlite3.Row) -> DocumentRecord:
        raise NotImplementedError

    def page_events(
        self,
        workspace: str,
        *,
        status: EventStatus | None = None,
        file_id: str | None = None,
        since: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[EventRecord]:
        where: list[str] = ["workspace = ?"]
        params: list[Any] = [workspace]
        if status is not None:
            where, params = [*where, "status = ?"], [*params, status.value]
        if file_id is not None:
            where, params = [*where, "file_id = ?"], [*params, file_id]
        if since is not None:
            where, params = [*where, "received_at >= ?"], [*params, since.timestamp()]
        sql = " AND ".join(where)
        total = int(self.db.query(f"SELECT COUNT(*) FROM events WHERE {sql}", params)[0][0])
        if cursor is not None:
            received, last_id = decode_cursor("events", workspace, cursor, 2)
            sql += " AND (received_at < ? OR (received_at = ? AND event_id < ?))"
            at = float(cursor_number(received))
            params = [*params, at, at, str(last_id)]
        rows = self.db.query(
            f"SELECT * FROM events WHERE {sql} ORDER BY received_at DESC, event_id DESC LIMIT ?", [*params, limit + 1]
        )
        last = rows[limit - 1] if len(rows) > limit else None
        next_cursor = (
            encode_cursor("events", workspace, [last["received_at"], last["event_id"]]) if last is not None else None
        )
        return Page([self._event(r) for r in rows[:limit]], total, next_cursor)

    def page_documents(
        self,
        workspace: str,
        *,
        status: DocumentStatus | None = None,
        path_prefix: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DocumentRecord]:
        where: list[str] = ["workspace = ?"]
        params: list[Any] = [workspace]
        if status is not None:
            where, params = [*where, "status = ?"], [*params, status.value]
        if path_prefix:
            # substr, not LIKE: a path may contain % or _, which LIKE would read as wildcards
            where, params = [*where, "substr(path, 1, ?) = ?"], [*params, len(path_prefix), path_prefix]
        sql = " AND ".join(where)
        total = int(self.db.query(f"SELECT COUNT(*) FROM documents WHERE {sql}", params)[0][0])
        if cursor is not None:
            last_path, last_id = decode_cursor("documents", workspace, cursor, 2)
            sql += " AND (path > ? OR (path = ? AND file_id > ?))"
            params = [*params, last_path, last_path, last_id]
        rows = self.db.query(
            f"SELECT * FROM documents WHERE {sql} ORDER BY path, file_id LIMIT ?", [*params, limit + 1]
        )
        last = rows[limit - 1] if len(rows) > limit else None
        next_cursor = (
            encode_cursor("documents", workspace, [last["path"], last["file_id"]]) if last is not None else None
        )
        return Page([self._document(r) for r in rows[:limit]], total, next_cursor)

    def workspace_stats(self, workspace: str, now: datetime) -> WorkspaceStats:
        documents: dict[str, int] = {s.value: 0 for s in DocumentStatus}
        chunks = embedded = reused = 0
        for row in self.db.query(
            "SELECT status, COUNT(*) AS n, SUM(chunk_count) AS c, SUM(embedded) AS e, SUM(reused) AS r"
            " FROM documents WHERE workspace = ? GROUP BY status",
            (workspace,),
        ):
            documents[row["status"]] = int(row["n"])
            if row["status"] == DocumentStatus.INDEXED.value:
                chunks, embedded, reused = int(row["c"] or 0), int(row["e"] or 0), int(row["r"] or 0)

        def by_status(since: datetime) -> dict[str, int]:
            counts: dict[str, int] = {s.value: 0 for s in EventStatus}
            for row in self.db.query(
                "SELECT status, COUNT(*) FROM events WHERE workspace = ? AND received_at >= ? GROUP BY status",
                (workspace, since.timestamp()),
            ):
                counts[row[0]] = int(row[1])
            return counts

        marks = ",".join("?" * len(UNSETTLED))
        unsettled: Any = self.db.query(
            f"SELECT COUNT(*), MIN(received_at) FROM events WHERE workspace = ? AND status IN ({marks})",
            (workspace, *UNSETTLED),
        )[0]
        held = int(
            self.db.query(
                "SELECT COUNT(*) FROM events WHERE workspace = ? AND status = ?", (workspace, EventStatus.HELD.value)
            )[0][0]
        )
        return WorkspaceStats(
            workspace=workspace,
            documents=documents,
            chunks=chunks,
            embedded=embedded,
            reused=reused,
            events_last_hour=by_status(now - timedelta(hours=1)),
            events_last_day=by_status(now - timedelta(days=1)),
            unsettled=int(unsettled[0]),
            held=held,
            oldest_unsettled_at=_ts(unsettled[1]) if unsettled[1] is not None else None,
        )

    def oldest_unsettled(self) -> datetime | None:
        marks = ",".join("?" * len(UNSETTLED))
        value = self.db.query(f"SELECT MIN(received_at) FROM events WHERE status IN ({marks})", UNSETTLED)[0][0]
        return _ts(value) if value is not None else None
