"""The embedded job queue: a table in the same SQLite file as the events (one commit covers both)."""

from __future__ import annotations

import secrets
import time

from stores.ports import Job
from stores.sqlite.database import SqliteDatabase


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
