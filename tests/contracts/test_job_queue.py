"""The `JobQueue` contract, against the SQLite queue and an SQS FIFO queue (moto, from serverless.yml).

SQS counts visibility in whole seconds, so "delivered again later" is a 0 s release against a 300 s one;
a message made visible again may take a moment to show (moto: the next millisecond), hence `claim_soon`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stores.events import EventKey
from stores.ports import Job, JobQueue
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.queue import SqliteJobQueue
from stores.sqs import SqsJobQueue, deduplication_id, message_body, message_group_id
from tests.fakes.aws import Stack, create_stack, mocked_aws

LEASE = 300


def K(event_id: str, workspace: str = "acme") -> EventKey:  # noqa: N802 (reads like a constructor)
    return EventKey(workspace, event_id)


@dataclass
class Backend:
    """Opens queue instances over one backing store, as separate processes would."""

    open: Callable[[], JobQueue]


@pytest.fixture(params=["sqlite", "sqs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "sqlite":
        opened: list[tuple[SqliteDatabase, SqliteJobQueue]] = []

        def open_sqlite() -> JobQueue:
            db = SqliteDatabase(tmp_path / "state.sqlite3")
            q = SqliteJobQueue(db)
            opened.append((db, q))
            return q

        yield Backend(open_sqlite)
        for db, q in opened:
            q.close()
            db.close()
        return
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        yield Backend(
            lambda: SqsJobQueue(session.client("sqs"), stack.queue_url, dead_letter_url=stack.dead_letter_url)
        )


@pytest.fixture
def queue(backend: Backend) -> JobQueue:
    return backend.open()


def claimed(queue: JobQueue, limit: int = 10, lease: float = LEASE) -> list[str]:
    return [job.event_id for job in queue.claim(limit, lease)]


def claim_soon(queue: JobQueue, limit: int = 10, lease: float = LEASE, within: float = 5.0) -> list[Job]:
    """Claim until something is claimable or the deadline passes."""
    deadline = time.monotonic() + within
    while True:
        jobs = queue.claim(limit, lease)
        if jobs or time.monotonic() > deadline:
            return jobs


class TestJobQueueContract:
    def test_is_a_job_queue(self, queue: JobQueue) -> None:
        assert isinstance(queue, JobQueue)

    def test_fifo_within_a_group_one_job_in_flight(self, queue: JobQueue) -> None:
        for event_id in ("a1", "a2", "a3"):
            queue.enqueue(K(event_id), "acme/f1")
        (job,) = queue.claim(10, LEASE)
        assert (job.event_id, job.group_key, job.receive_count) == ("a1", "acme/f1", 1)
        assert claimed(queue) == []  # a2 waits while a1 is in flight
        queue.ack(job)
        (job,) = queue.claim(10, LEASE)
        assert job.event_id == "a2"
        queue.ack(job)
        assert claimed(queue) == ["a3"]

    def test_other_groups_proceed(self, queue: JobQueue) -> None:
        for event_id, group in (("a1", "acme/f1"), ("a2", "acme/f1"), ("b1", "acme/f2"), ("c1", "beta/f1")):
            queue.enqueue(K(event_id), group)
        jobs = queue.claim(10, LEASE)
        assert sorted(j.event_id for j in jobs) == ["a1", "b1", "c1"]
        assert len({j.group_key for j in jobs}) == 3

    def test_claim_returns_at_most_limit(self, queue: JobQueue) -> None:
        for i in range(5):
            queue.enqueue(K(f"e{i}"), f"acme/f{i}")
        first = claimed(queue, limit=2)
        assert len(first) == 2
        rest = claimed(queue, limit=10)
        assert sorted(first + rest) == [f"e{i}" for i in range(5)]

    def test_the_same_event_is_queued_once(self, queue: JobQueue) -> None:
        queue.enqueue(K("e1"), "acme/f1")
        queue.enqueue(K("e1"), "acme/f1")
        assert queue.pending() == 1
        (job,) = queue.claim(10, LEASE)
        queue.enqueue(K("e1"), "acme/f1")  # while in flight, too
        queue.ack(job)
        assert queue.pending() == 0
        assert claimed(queue) == []

    def test_release_delivers_again_in_place_after_the_delay(self, queue: JobQueue) -> None:
        queue.enqueue(K("a1"), "acme/f1")
        queue.enqueue(K("a2"), "acme/f1")
        (job,) = queue.claim(10, LEASE)
        queue.release(job, 0)
        (again,) = claim_soon(queue)
        assert (again.event_id, again.receive_count) == ("a1", 2)  # still ahead of a2
        queue.release(again, 300)
        assert claimed(queue) == []  # a1 waits out its delay, and a2 waits behind it
        queue.enqueue(K("b1"), "acme/f2")
        assert claimed(queue) == ["b1"]
        assert queue.pending() == 3

    def test_an_expired_lease_delivers_again(self, queue: JobQueue) -> None:
        queue.enqueue(K("a1"), "acme/f1")
        (job,) = queue.claim(10, 0)
        (again,) = claim_soon(queue)
        assert (again.event_id, again.receive_count) == ("a1", 2)
        assert job.receipt != again.receipt

    def test_event_ids_are_per_workspace(self, queue: JobQueue) -> None:
        queue.enqueue(K("e1", "acme"), "acme/f1")
        queue.enqueue(K("e1", "beta"), "beta/f1")  # the same id in another workspace is another job
        assert queue.pending() == 2
        jobs = queue.claim(10, LEASE)
        assert sorted((j.workspace, j.event_id, j.group_key) for j in jobs) == [
            ("acme", "e1", "acme/f1"),
            ("beta", "e1", "beta/f1"),
        ]
        assert {j.key for j in jobs} == {K("e1", "acme"), K("e1", "beta")}

    def test_a_lease_belongs_to_its_consumer(self, backend: Backend) -> None:
        """A second process starting up (and giving back dead consumers' leases) never takes a live one's."""
        first = backend.open()
        first.enqueue(K("a1"), "acme/f1")
        (job,) = first.claim(10, LEASE)
        second = backend.open()
        assert second.release_dead_leases() == 0
        assert claimed(second) == []  # still leased by the first, which lives
        first.ack(job)
        assert second.pending() == 0

    def test_ack_removes(self, queue: JobQueue) -> None:
        for i in range(3):
            queue.enqueue(K(f"e{i}"), f"acme/f{i}")
        assert queue.pending() == 3
        jobs = queue.claim(10, LEASE)
        assert queue.pending() == 3  # in flight still counts
        for job in jobs:
            queue.ack(job)
        assert queue.pending() == 0
        assert claimed(queue, lease=0) == []

    def test_ack_many_removes_those_acked_and_frees_their_groups(self, queue: JobQueue) -> None:
        # 12 groups (more than one SQS batch of 10), each with a job behind the claimed one.
        for i in range(12):
            queue.enqueue(K(f"e{i}"), f"acme/f{i}")
            queue.enqueue(K(f"e{i}-next"), f"acme/f{i}")
        jobs = claim_soon(queue, limit=12)
        while len(jobs) < 12:
            jobs += claim_soon(queue, limit=12 - len(jobs))
        assert sorted(j.event_id for j in jobs) == sorted(f"e{i}" for i in range(12))
        kept = jobs.pop()  # one stays in flight: its group stays locked
        queue.ack_many(jobs)
        queue.ack_many([])
        assert queue.pending() == 13
        after: set[str] = set()
        while got := claim_soon(queue, limit=20, within=1.0):  # SQS hands them out ten at a time
            after |= {j.event_id for j in got}
        assert after == {f"e{i}-next" for i in range(12)} - {f"{kept.event_id}-next"}


# SQLite only: a consumer that is gone ----------------------------------------------------------------------
def test_sqlite_gives_back_the_leases_of_a_consumer_that_is_gone(tmp_path: Path) -> None:
    """SQS hands a dead consumer's message out again when its visibility timeout ends (the contract's
    expired-lease test); the SQLite queue also gives it back at the next start-up, once the consumer's
    liveness lock is gone, so a crash does not cost a whole lease period."""
    db_a, db_b = SqliteDatabase(tmp_path / "state.sqlite3"), SqliteDatabase(tmp_path / "state.sqlite3")
    first, second = SqliteJobQueue(db_a), SqliteJobQueue(db_b)
    first.enqueue(K("a1"), "acme/f1")
    first.enqueue(K("b1"), "acme/f2")
    held = first.claim(1, LEASE)
    assert [j.event_id for j in held] == ["a1"]
    assert second.release_dead_leases() == 0 and claimed(second) == ["b1"]
    first.close()  # its process is gone: the operating system drops its lock
    third = SqliteJobQueue(SqliteDatabase(tmp_path / "state.sqlite3"))
    assert third.release_dead_leases() == 1  # a1's; b1 is second's, which lives
    (again,) = third.claim(10, LEASE)
    assert (again.key, again.receive_count) == (K("a1"), 2)
    for q in (second, third):
        q.close()
    for db in (db_a, db_b, third.db):
        db.close()


# SQS only: the dead-letter queue --------------------------------------------------------------------------
@dataclass
class Sqs:
    queue: SqsJobQueue
    client: Any
    stack: Stack

    def visible_in_dlq(self) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.stack.dead_letter_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])


@pytest.fixture(params=[2])
def sqs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sqs]:
    """The queue of serverless.yml with maxAttempts (its RedrivePolicy's maxReceiveCount) = the param."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session, params={"maxAttempts": request.param})
        client = session.client("sqs")
        yield Sqs(SqsJobQueue(client, stack.queue_url, dead_letter_url=stack.dead_letter_url), client, stack)


def test_sqs_dead_letters_after_max_receive_count_and_redrives(sqs: Sqs) -> None:
    assert sqs.stack.max_receive_count == 2
    sqs.queue.enqueue(K("e1"), "acme/f1")
    for receive in (1, 2):  # received and never acked, as when the worker keeps failing
        (job,) = claim_soon(sqs.queue, lease=0)
        assert (job.event_id, job.receive_count) == ("e1", receive)
    sqs.queue.enqueue(K("e2"), "acme/f2")
    # The next receive that finds e1 visible, received maxReceiveCount times, moves it to the DLQ.
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while sqs.visible_in_dlq() == 0 and time.monotonic() < deadline:
        seen += claimed(sqs.queue)
    assert seen == ["e2"]
    assert sqs.visible_in_dlq() == 1

    prepared: list[EventKey] = []
    assert sqs.queue.redrive(10, prepare=prepared.append, wait_seconds=0) == 1
    assert prepared == [K("e1")]
    assert sqs.visible_in_dlq() == 0
    (job,) = claim_soon(sqs.queue)
    assert (job.event_id, job.group_key, job.receive_count) == ("e1", "acme/f1", 1)


def test_sqs_redrive_leaves_unreadable_messages_and_respects_the_maximum(sqs: Sqs) -> None:
    dlq = sqs.stack.dead_letter_url
    for i in range(3):
        sqs.client.send_message(
            QueueUrl=dlq,
            MessageBody=message_body(K(f"e{i}")),
            MessageGroupId=f"acme/f{i}",
            MessageDeduplicationId=deduplication_id(K(f"e{i}")),
        )
    sqs.client.send_message(
        QueueUrl=dlq, MessageBody="not json", MessageGroupId="poison", MessageDeduplicationId="poison"
    )
    assert sqs.queue.redrive(2, wait_seconds=0) == 2
    assert sqs.queue.redrive(10, wait_seconds=0, lease_seconds=0) == 1
    assert sorted(claimed(sqs.queue)) == ["e0", "e1", "e2"]
    assert sqs.visible_in_dlq() == 1  # the unreadable one is still there for a human


@pytest.mark.parametrize("sqs", [5], indirect=True)  # messages here are received up to 3 times
def test_sqs_held_messages_renew_their_lease_and_follow_a_release(sqs: Sqs) -> None:
    """One ReceiveMessage returns a group's messages together; the queue hands them out one at a time."""
    for event_id in ("a1", "a2", "a3"):
        sqs.queue.enqueue(K(event_id), "acme/f1")
    (a1,) = sqs.queue.claim(10, LEASE)
    assert sqs.queue.pending() == 3
    sqs.queue.ack(a1)
    (a2,) = sqs.queue.claim(10, LEASE)
    assert (a2.event_id, a2.receive_count) == ("a2", 1)  # held here, not received twice
    sqs.queue.release(a2, 0)  # a3, held behind it, goes back with it and stays behind it
    (a2,) = claim_soon(sqs.queue, lease=0)
    assert (a2.event_id, a2.receive_count) == ("a2", 2)
    # a3 was received with a lease that has run out: it is given back, not handed out before a2.
    assert [j.event_id for j in claim_soon(sqs.queue)] == ["a2"]


def test_sqs_ids_fit_what_sqs_accepts(sqs: Sqs) -> None:
    odd = "acme/" + "Ünïcode folder with spaces/" * 10
    assert message_group_id("acme/handbook/leave.md") == "acme/handbook/leave.md"
    assert message_group_id(odd).startswith("sha256:") and len(message_group_id(odd)) <= 128
    long_id = "x" * 300
    assert len(deduplication_id(long_id)) == 64
    sqs.queue.enqueue(K(long_id), odd)
    (job,) = sqs.queue.claim(10, LEASE)
    assert job.event_id == long_id and job.group_key == message_group_id(odd)
