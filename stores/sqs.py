"""The AWS job queue: an SQS FIFO queue, one message per event, its dead-letter queue for what keeps failing.

- Message group = the event's `group_key` (workspace/file id): SQS hands out a group's messages in order and
  none while one is in flight, which is the `JobQueue` contract's "one job in flight per group".
- Deduplication id = sha256 of the event key (workspace and event id), so a webhook stored twice is queued
  once (SQS remembers the id for 5 minutes). SQS limits both ids to 128 characters of printable ASCII;
  event ids may be longer or anything, hence the hash, and a group key that does not fit is hashed too.
- The message body is `{"workspace": ..., "event_id": ...}`: the event itself stays in the state store.
- A lease is the message's visibility timeout, held through its receipt handle: only the consumer that
  received it can delete it or change it, and nothing at another consumer's start-up gives it back.

In Lambda the event source mapping receives and deletes messages; `claim`/`ack`/`release` serve a polling
worker and the tests. `redrive` moves dead-lettered messages back (`eventrag redrive`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from botocore.exceptions import ClientError

from stores.events import EventKey
from stores.ports import Job

log = logging.getLogger(__name__)

# ReceiveMessage returns at most 10 messages per call; a visibility timeout is at most 12 hours
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html).
MAX_RECEIVE = 10
MAX_VISIBILITY_SECONDS = 43200
# A held message whose lease ends sooner than this is given back rather than renewed at the last moment.
RENEW_MARGIN_SECONDS = 1.0
# MessageGroupId / MessageDeduplicationId: up to 128 of a-z, A-Z, 0-9 and punctuation, i.e. ASCII ! to ~.
_SQS_ID = re.compile(r"[!-~]{1,128}")


class SqsSettings(Protocol):
    sqs_queue_url: str | None
    sqs_dlq_url: str | None


def deduplication_id(key: EventKey | str) -> str:
    text = f"{key.workspace}\n{key.event_id}" if isinstance(key, EventKey) else key
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def message_body(key: EventKey) -> str:
    return json.dumps({"workspace": key.workspace, "event_id": key.event_id})


def parse_message_body(body: str) -> EventKey | None:
    """The event key a message names; None for a body that names none (it ends in the dead-letter queue)."""
    try:
        doc = json.loads(body)
        workspace, event_id = doc["workspace"], doc["event_id"]
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(workspace, str) or not isinstance(event_id, str) or not workspace or not event_id:
        return None
    return EventKey(workspace, event_id)


def message_group_id(group_key: str) -> str:
    """The group key itself when SQS accepts it (readable in the console), else a stable hash of it."""
    if _SQS_ID.fullmatch(group_key):
        return group_key
    return "sha256:" + hashlib.sha256(group_key.encode("utf-8")).hexdigest()


def _visibility(seconds: float) -> int:
    return max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))


class SqsJobQueue:
    """`JobQueue` on an SQS FIFO queue.

    One `ReceiveMessage` can return several messages of one group (in order). `claim` hands out only the
    first; the others stay in flight under this process's receipt, held here, and are handed out by later
    claims once the job before them is acked, so they are never received twice just to wait. Releasing a
    job makes its held successors visible again (they keep their order behind it).
    """

    def __init__(
        self, client: Any, queue_url: str, *, dead_letter_url: str | None = None, wait_seconds: int = 0
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.dead_letter_url = dead_letter_url
        self.wait_seconds = wait_seconds  # long polling for `claim`; 0 = answer at once
        self._lock = threading.Lock()
        # group -> (job, when its lease ends) for messages received behind a job of that group
        self._held: dict[str, deque[tuple[Job, float]]] = {}
        # group -> when the lease of its claimed job ends (monotonic); a job never settled stops counting then
        self._in_flight: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: SqsSettings, *, client: Any | None = None) -> SqsJobQueue:
        if not settings.sqs_queue_url:
            raise ValueError("EVENTRAG_SQS_QUEUE_URL must be set for queue_backend=sqs")
        if client is None:
            import boto3

            client = boto3.session.Session().client("sqs")
        return cls(client, settings.sqs_queue_url, dead_letter_url=settings.sqs_dlq_url)

    # the JobQueue port ----------------------------------------------------------------------------------
    def enqueue(self, key: EventKey, group_key: str) -> None:
        self._send(self.queue_url, message_body(key), message_group_id(group_key), deduplication_id(key))

    def requeue(self, key: EventKey, group_key: str) -> None:
        # SQS drops a repeated deduplication id for 5 minutes: a deliberate re-queue needs a fresh one.
        fresh = deduplication_id(f"{key}#requeue#{time.time_ns()}")
        self._send(self.queue_url, message_body(key), message_group_id(group_key), fresh)

    def release_dead_leases(self) -> int:
        """Nothing to give back: a dead consumer's messages become visible when their timeout ends."""
        return 0

    def _send(self, queue_url: str, body: str, group_id: str, dedupe_id: str) -> None:
        self.client.send_message(
            QueueUrl=queue_url,
            MessageBody=body,
            MessageGroupId=group_id,
            MessageDeduplicationId=dedupe_id,
        )

    def _receive(self, queue_url: str, count: int, visibility: int, wait: int) -> list[dict[str, Any]]:
        resp = self.client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max(1, min(MAX_RECEIVE, count)),
            VisibilityTimeout=visibility,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
        )
        messages: list[dict[str, Any]] = resp.get("Messages", [])
        return messages

    @staticmethod
    def _job(message: dict[str, Any]) -> Job:
        attributes = message.get("Attributes", {})
        key = parse_message_body(str(message.get("Body", "")))
        if key is None:  # unreadable: left in flight, it ends in the DLQ
            log.error("queue message %s names no event: %.200r", message.get("MessageId"), message.get("Body"))
            key = EventKey("", "")
        return Job(
            workspace=key.workspace,
            event_id=key.event_id,
            group_key=attributes.get("MessageGroupId", ""),
            receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
            receipt=message["ReceiptHandle"],
        )

    def _busy(self, group: str) -> bool:
        return self._in_flight.get(group, 0.0) > time.monotonic()

    def _take_held(self, group: str, lease: int) -> Job | None:
        """The next held job of `group`, its lease renewed; None (and the group's held jobs made visible
        again, in order) when its lease has run out, since SQS may then deliver it to someone else."""
        queue = self._held[group]
        job, deadline = queue.popleft()
        try:
            if deadline - time.monotonic() < RENEW_MARGIN_SECONDS:
                raise TimeoutError(f"the lease of message {job.event_id} ran out while it was held")
            self._change_visibility(job.receipt, lease)
        except (ClientError, TimeoutError) as exc:
            log.warning("giving back %d held message(s) of group %s: %s", len(queue) + 1, group, exc)
            del self._held[group]
            for other in [job, *(j for j, _ in queue)]:
                # No longer in flight means visible again already, which is what this wants.
                with contextlib.suppress(ClientError):
                    self._change_visibility(other.receipt, 0)
            return None
        if not queue:
            del self._held[group]
        return job

    def claim(self, limit: int, lease_seconds: float) -> list[Job]:
        lease = _visibility(lease_seconds)
        jobs: list[Job] = []
        with self._lock:
            for group in [g for g in self._held if not self._busy(g)]:
                if len(jobs) >= limit:
                    break
                job = self._take_held(group, lease)
                if job is not None:
                    jobs.append(job)
                    self._in_flight[group] = time.monotonic() + lease
            taken = {job.group_key for job in jobs}  # never two of a group in one claim, whatever the lease
            while len(jobs) < limit:
                wanted = min(MAX_RECEIVE, limit - len(jobs))
                received_at = time.monotonic()
                messages = self._receive(self.queue_url, wanted, lease, self.wait_seconds)
                for message in messages:
                    job = self._job(message)
                    if not job.event_id:
                        continue  # left in flight: it comes back after the lease and ends in the DLQ
                    if job.group_key in taken or job.group_key in self._held or self._busy(job.group_key):
                        self._held.setdefault(job.group_key, deque()).append((job, received_at + lease))
                    else:
                        jobs.append(job)
                        taken.add(job.group_key)
                        self._in_flight[job.group_key] = received_at + lease
                if len(messages) < wanted:
                    break
        return jobs

    def ack(self, job: Job) -> None:
        self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=job.receipt)
        with self._lock:
            self._in_flight.pop(job.group_key, None)

    def ack_many(self, jobs: Sequence[Job]) -> None:
        """DeleteMessageBatch, ten at a time; an entry the batch failed is deleted alone (which raises)."""
        for i in range(0, len(jobs), MAX_RECEIVE):
            part = jobs[i : i + MAX_RECEIVE]
            entries = [{"Id": str(n), "ReceiptHandle": job.receipt} for n, job in enumerate(part)]
            reply = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = {int(f["Id"]) for f in reply.get("Failed", [])}
            for n, job in enumerate(part):
                if n in failed:
                    self.ack(job)
                else:
                    with self._lock:
                        self._in_flight.pop(job.group_key, None)

    def release(self, job: Job, delay_seconds: float) -> None:
        """Visible again after `delay_seconds`. The job also works with a receipt from a Lambda event."""
        with self._lock:
            behind = self._held.pop(job.group_key, deque())
            self._in_flight.pop(job.group_key, None)
        # The job stays in flight until its delay is over, so the group stays locked and the ones behind it,
        # visible again now, still come after it.
        for held, _ in behind:
            self._change_visibility(held.receipt, 0)
        self._change_visibility(job.receipt, _visibility(delay_seconds))

    def _change_visibility(self, receipt: str, seconds: int) -> None:
        self.client.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds)

    def pending(self) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        visible, in_flight = (
            attrs.get("ApproximateNumberOfMessages", 0),
            attrs.get("ApproximateNumberOfMessagesNotVisible", 0),
        )
        return int(visible) + int(in_flight)

    # the dead-letter queue ------------------------------------------------------------------------------
    def redrive(
        self,
        max_messages: int,
        *,
        prepare: Callable[[EventKey], None] | None = None,
        wait_seconds: int = 1,
        lease_seconds: int = 60,
    ) -> int:
        """Move up to `max_messages` messages from the dead-letter queue back to the queue; returns how many.

        For each message: `prepare(key)` (the CLI resets the event's attempts), then a send to the
        queue with the same group and a new deduplication id (the original one may still be remembered),
        then the delete from the dead-letter queue. A crash in between leaves the message in both queues,
        which the worker tolerates (the second delivery finds the event settled). A message without an
        event id stays in the dead-letter queue; if `prepare` raises, the redrive stops there and that
        message stays too (visible again after `lease_seconds`).
        """
        if not self.dead_letter_url:
            raise ValueError("no dead-letter queue configured (EVENTRAG_SQS_DLQ_URL)")
        moved = 0
        seen: set[str] = set()
        while moved < max_messages:
            messages = self._receive(self.dead_letter_url, max_messages - moved, lease_seconds, wait_seconds)
            # Messages left here come back after `lease_seconds`: seeing only those again means done.
            if not messages or all(m["MessageId"] in seen for m in messages):
                break
            for message in messages:
                seen.add(message["MessageId"])
                job = self._job(message)
                if not job.event_id:
                    continue
                if prepare is not None:
                    prepare(job.key)
                # Keyed on the dead-lettered message, so re-running a redrive that died after this send
                # does not queue the event twice (within SQS's 5-minute deduplication window).
                fresh = deduplication_id(f"redrive:{message['MessageId']}:{job.key}")
                group = job.group_key or message_group_id(str(job.key))
                self._send(self.queue_url, message_body(job.key), group, fresh)
                self.client.delete_message(QueueUrl=self.dead_letter_url, ReceiptHandle=job.receipt)
                moved += 1
        return moved


class SqsDeliveryQueue:
    """The outbound webhook queue (a standard queue): one message `{"delivery_id"}` tells the outbound
    function to attempt a delivery now, or after `delay_seconds` (SQS allows at most 15 minutes; longer
    waits are picked up by the function's scheduled sweep of the outbox). Order does not matter here:
    each delivery carries its own state in the outbox, and a receiver deduplicates on `webhook-id`."""

    MAX_DELAY_SECONDS = 900
    MAX_BATCH = 10  # SendMessageBatch takes at most 10 entries

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url

    def send(self, delivery_ids: list[str], delay_seconds: float = 0) -> None:
        delay = max(0, min(self.MAX_DELAY_SECONDS, math.ceil(delay_seconds)))
        for i in range(0, len(delivery_ids), self.MAX_BATCH):
            part = delivery_ids[i : i + self.MAX_BATCH]
            resp = self.client.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "MessageBody": json.dumps({"delivery_id": d}), "DelaySeconds": delay}
                    for n, d in enumerate(part)
                ],
            )
            if resp.get("Failed"):
                # Not lost: the deliveries are in the outbox, and the sweep finds them.
                log.warning("could not queue %d outbound delivery(ies): %s", len(resp["Failed"]), resp["Failed"])
