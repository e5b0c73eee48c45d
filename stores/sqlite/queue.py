"""The embedded job queue: a table in the same SQLite file as the events (one commit covers both).

Several processes may share one SQLite file (with a Qdrant server as the index). A lease therefore belongs
to the queue instance that claimed it: each instance holds an exclusive lock on its own file under
`<state file>.leases/` for as long as it lives, and records its name with every lease. At start-up a
process gives back only the leases whose owner's lock it can take, that is, of owners that are gone (the
operating system drops a dead process's locks); a live process's jobs are never handed out twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import portalocker

from stores.events import EventKey
from stores.ports import Job
from stores.sqlite.database import SqliteDatabase

log = logging.getLogger(__name__)


class SqliteJobQueue:
    """FIFO per group with one job in flight per group: the semantics of an SQS FIFO queue."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self.owner = f"pid{os.getpid()}-{secrets.token_hex(6)}"
        self._lock_file: IO[str] | None = None
        leases = db.leases_dir
        if leases is not None:
            leases.mkdir(parents=True, exist_ok=True)
            handle = open(leases / f"{self.owner}.lock", "a")  # noqa: SIM115 (held open for the instance's life)
            portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
            self._lock_file = handle

    def enqueue(self, key: EventKey, group_key: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO jobs (workspace, event_id, group_key, available_at) VALUES (?, ?, ?, ?)",
                (key.workspace, key.event_id, group_key, time.time()),
            )

    def requeue(self, key: EventKey, group_key: str) -> None:
        """Queue an event again on purpose (retry, confirmed delete, repair); a job still queued stays."""
        self.enqueue(key, group_key)

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
                    "UPDATE jobs SET lease_until = ?, receive_count = receive_count + 1, receipt = ?, owner = ?"
                    " WHERE seq = ?",
                    (now + lease_seconds, receipt, self.owner, row["seq"]),
                )
                jobs.append(Job(row["workspace"], row["event_id"], row["group_key"], row["receive_count"] + 1, receipt))
        return jobs

    def ack(self, job: Job) -> None:
        self.ack_many([job])

    def ack_many(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM jobs WHERE workspace = ? AND event_id = ? AND receipt = ?",
                [(job.workspace, job.event_id, job.receipt) for job in jobs],
            )

    def release(self, job: Job, delay_seconds: float) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET lease_until = NULL, receipt = NULL, owner = NULL, available_at = ?"
                " WHERE workspace = ? AND event_id = ? AND receipt = ?",
                (time.time() + delay_seconds, job.workspace, job.event_id, job.receipt),
            )

    def _owner_alive(self, owner: str | None) -> bool:
        if owner == self.owner:
            # Its own leases: at start-up it holds none; after its worker died in-process (the crash tests),
            # what it held died with the worker.
            return False
        leases = self.db.leases_dir
        if owner is None or leases is None:
            return False
        path = leases / f"{owner}.lock"
        try:
            handle = open(path)  # noqa: SIM115
        except FileNotFoundError:
            return False
        with handle:
            try:
                portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
            except portalocker.exceptions.LockException:
                return True
            portalocker.unlock(handle)
        with contextlib.suppress(OSError):
            path.unlink()
        return False

    def release_dead_leases(self) -> int:
        """Give back the jobs leased by queue instances that no longer run (a crashed process)."""
        owners = [r[0] for r in self.db.query("SELECT DISTINCT owner FROM jobs WHERE lease_until IS NOT NULL")]
        dead = [o for o in owners if not self._owner_alive(o)]
        released = 0
        with self.db.transaction() as conn:
            for owner in dead:
                released += conn.execute(
                    "UPDATE jobs SET lease_until = NULL, receipt = NULL, owner = NULL"
                    " WHERE lease_until IS NOT NULL AND owner IS ?",
                    (owner,),
                ).rowcount
        return released

    def pending(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM jobs")[0][0])

    def close(self) -> None:
        """Drop the liveness lock: this instance's leases may now be given back by others."""
        if self._lock_file is not None:
            path = Path(self._lock_file.name)
            self._lock_file.close()
            self._lock_file = None
            with contextlib.suppress(OSError):
                path.unlink()
