"""`OutboxStore` on SQLite: the outbox table, in the same file as the events, so one transaction settles
an event and writes its deliveries (`SqliteStateStore.set_event_status(..., outbox=...)`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from stores.outbox import Delivery, DeliveryAttempt, DeliveryStatus, OutboundType
from stores.paging import Page, cursor_number, decode_cursor, encode_cursor
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts

_COLUMNS = (
    "delivery_id, message_id, workspace, subscriber, url, type, body, status, attempts, next_attempt_at,"
    " last_status, last_response, last_error, file_id, event_id, created_at, updated_at, delivered_at"
)


def insert_deliveries(conn: sqlite3.Connection, deliveries: Sequence[Delivery]) -> None:
    """Inside the caller's transaction. A delivery already written (same id) is left as it is."""
    now = time.time()
    conn.executemany(
        f"INSERT OR IGNORE INTO outbox ({_COLUMNS}) VALUES ({', '.join('?' * 18)})",
        [
            (
                d.delivery_id,
                d.message_id,
                d.workspace,
                d.subscriber,
                d.url,
                d.type.value,
                d.body,
                d.status.value,
                d.attempts,
                d.next_attempt_at.timestamp(),
                d.last_status,
                d.last_response,
                d.last_error,
                d.file_id,
                d.event_id,
                now,
                now,
                None,
            )
            for d in deliveries
        ],
    )


class SqliteOutboxStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @staticmethod
    def _delivery(row: sqlite3.Row) -> Delivery:
        return Delivery(
            delivery_id=row["delivery_id"],
            message_id=row["message_id"],
            workspace=row["workspace"],
            subscriber=row["subscriber"],
            url=row["url"],
            type=OutboundType(row["type"]),
            body=row["body"],
            status=DeliveryStatus(row["status"]),
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
            next_attempt_at=_ts(row["next_attempt_at"]),
            attempts=row["attempts"],
            last_status=row["last_status"],
            last_response=row["last_response"],
            last_error=row["last_error"],
            delivered_at=_ts(row["delivered_at"]) if row["delivered_at"] is not None else None,
            file_id=row["file_id"],
            event_id=row["event_id"],
        )

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        with self.db.transaction() as conn:
            insert_deliveries(conn, deliveries)

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = self.db.query("SELECT * FROM outbox WHERE delivery_id = ?", (delivery_id,))
        return self._delivery(rows[0]) if rows else None

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        rows = self.db.query(
            "SELECT * FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now.timestamp(), limit),
        )
        return [self._delivery(r) for r in rows]

    def next_due(self) -> datetime | None:
        """When the earliest pending delivery is due (the local relay sleeps until then)."""
        rows = self.db.query("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
        value = rows[0][0]
        return _ts(value) if value is not None else None

    def delivery_counts(self, workspace: str) -> dict[str, int]:
        counts = {s.value: 0 for s in DeliveryStatus}
        for row in self.db.query(
            "SELECT status, COUNT(*) FROM outbox WHERE workspace = ? GROUP BY status", (workspace,)
        ):
            counts[row[0]] = int(row[1])
        return counts

    def purge(self, older_than: datetime) -> int:
        """Forget delivered and failed deliveries last updated before `older_than`; pending ones stay."""
        with self.db.transaction() as conn:
            return conn.execute(
                "DELETE FROM outbox WHERE status IN ('delivered', 'failed') AND updated_at < ?",
                (older_than.timestamp(),),
            ).rowcount

    def pending_count(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")[0][0])

    def claim(self, delivery_id: str, now: datetime, lease_seconds: float) -> Delivery | None:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, updated_at = ? WHERE delivery_id = ? AND status = 'pending'"
                " AND next_attempt_at <= ?",
                (now.timestamp() + lease_seconds, time.time(), delivery_id, now.timestamp()),
            )
            if cur.rowcount != 1:
                return None
            row = conn.execute("SELECT * FROM outbox WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return self._delivery(row)

    def record_attempt(self, delivery_id: str, attempt: DeliveryAttempt) -> Delivery:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?, last_status = ?,"
                " last_response = ?, last_error = ?, updated_at = ?, delivered_at = ? WHERE delivery_id = ?",
                (
                    attempt.status.value,
                    attempt.next_attempt_at.timestamp(),
                    attempt.last_status,
                    attempt.last_response,
                    attempt.last_error,
                    now,
                    now if attempt.status is DeliveryStatus.DELIVERED else None,
                    delivery_id,
                ),
            )
            if cur.rowcount != 1:
                raise KeyError(delivery_id)
            row = conn.execute("SELECT * FROM outbox WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return self._delivery(row)

    def list_deliveries(
        self,
        workspace: str,
        *,
        status: DeliveryStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Delivery]:
        where, params = "workspace = ?", [workspace]
        if status is not None:
            where, params = where + " AND status = ?", [*params, status.value]
        total = int(self.db.query(f"SELECT COUNT(*) FROM outbox WHERE {where}", params)[0][0])
        page_where, page_params = where, list[Any](params)
        if cursor is not None:
            created, last_id = decode_cursor("deliveries", workspace, cursor, 2)
            page_where += " AND (created_at < ? OR (created_at = ? AND delivery_id < ?))"
            at = float(cursor_number(created))
            page_params += [at, at, str(last_id)]
        rows = self.db.query(
            f"SELECT * FROM outbox WHERE {page_where} ORDER BY created_at DESC, delivery_id DESC LIMIT ?",
            [*page_params, limit + 1],
        )
        items = [self._delivery(r) for r in rows[:limit]]
        more = len(rows) > limit
        next_cursor = (
            encode_cursor("deliveries", workspace, [rows[limit - 1]["created_at"], rows[limit - 1]["delivery_id"]])
            if more
            else None
        )
        return Page(items, total, next_cursor)
