"""`SubscriptionStore` on SQLite: subscribers created through the API, in the state file."""

from __future__ import annotations

import json
import sqlite3

from stores.outbox import Added, OutboundType, StoredSubscription
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts


class SqliteSubscriptionStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @staticmethod
    def _subscription(row: sqlite3.Row) -> StoredSubscription:
        return StoredSubscription(
            workspace=row["workspace"],
            id=row["id"],
            url=row["url"],
            events=frozenset(OutboundType(e) for e in json.loads(row["events"])),
            secret=row["secret"],
            created_at=_ts(row["created_at"]),
        )

    def list_subscriptions(self, workspace: str) -> list[StoredSubscription]:
        rows = self.db.query("SELECT * FROM subscriptions WHERE workspace = ? ORDER BY created_at, id", (workspace,))
        return [self._subscription(r) for r in rows]

    def get_subscription(self, workspace: str, subscription_id: str) -> StoredSubscription | None:
        rows = self.db.query("SELECT * FROM subscriptions WHERE workspace = ? AND id = ?", (workspace, subscription_id))
        return self._subscription(rows[0]) if rows else None

    def add_subscription(self, s: StoredSubscription, *, limit: int) -> Added:
        # BEGIN IMMEDIATE takes the write lock first: the count and the insert are one step for every process.
        with self.db.transaction() as conn:
            taken = conn.execute("SELECT 1 FROM subscriptions WHERE workspace = ? AND id = ?", (s.workspace, s.id))
            if taken.fetchone():
                return Added.EXISTS
            (count,) = conn.execute("SELECT COUNT(*) FROM subscriptions WHERE workspace = ?", (s.workspace,)).fetchone()
            if count >= limit:
                return Added.FULL
            conn.execute(
                "INSERT INTO subscriptions (workspace, id, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    s.workspace,
                    s.id,
                    s.url,
                    json.dumps(sorted(e.value for e in s.events)),
                    s.secret,
                    s.created_at.timestamp(),
                ),
            )
            return Added.ADDED

    def delete_subscription(self, workspace: str, subscription_id: str) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM subscriptions WHERE workspace = ? AND id = ?", (workspace, subscription_id))
            return cur.rowcount == 1
