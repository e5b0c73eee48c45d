"""Receiving a webhook: verify, parse, store durably, queue. Never fetches, parses or embeds a file.

The Standard Webhooks scheme (https://www.standardwebhooks.com): the signature is HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`, computed here by the reference `standardwebhooks` package. The
secret that verifies a delivery identifies its workspace, so one workspace's secret cannot write into another,
and events are keyed by (workspace, webhook-id): another workspace can neither squat nor see an id.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook

from ingest.errors import (
    InvalidEventError,
    SignatureError,
    StaleTimestampError,
    WorkspaceMismatchError,
)
from ingest.sources import ContentRouter
from ingest.webhook_body import BodyLimits, build_event, parse_webhook_body
from stores.events import EventStatus, EventType, FileEvent, describe_position
from stores.ports import EventRecord, JobQueue, StateStore
from stores.telemetry import EVENTS_DUPLICATE, EVENTS_RECEIVED, EVENTS_REJECTED

log = logging.getLogger(__name__)

# A `received` event younger than this may still be on its way to the queue (the receiver stores first,
# then enqueues): the sweep leaves it alone.
SWEEP_MIN_AGE = timedelta(seconds=60)


@dataclass(slots=True)
class Delivery:
    record: EventRecord
    duplicate: bool


class WebhookVerifier:
    def __init__(self, secrets: Mapping[str, list[str]], tolerance_seconds: int = 300) -> None:
        self._signers = [(ws, Webhook(s)) for ws, items in secrets.items() for s in items]
        self.tolerance = tolerance_seconds

    def verify(self, body: bytes, headers: Mapping[str, str]) -> tuple[str, str]:
        """Returns (event id, workspace of the secret that signed it)."""
        h = {k.lower(): v for k, v in headers.items()}
        msg_id, ts, sig = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
        named = (("webhook-id", msg_id), ("webhook-timestamp", ts), ("webhook-signature", sig))
        missing = [n for n, v in named if not v]
        if missing:
            raise SignatureError(f"missing Standard Webhooks header(s): {', '.join(missing)}")
        assert msg_id and ts and sig
        if len(msg_id) > 256:
            raise SignatureError("webhook-id is longer than 256 characters")
        try:
            sent = int(ts)
        except ValueError as exc:
            raise SignatureError("webhook-timestamp must be integer seconds since the epoch") from exc
        skew = time.time() - sent
        if abs(skew) > self.tolerance:
            word = "old" if skew > 0 else "far in the future"
            raise StaleTimestampError(
                f"webhook-timestamp is {abs(int(skew))} s {word}; the tolerance is {self.tolerance} s (replayed or"
                " delayed delivery, or a wrong clock at the sender)"
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEventError("body is not UTF-8") from exc
        given: list[bytes] = []
        for part in sig.split():
            version, _, value = part.partition(",")
            if version != "v1" or not value:
                continue
            try:
                given.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                continue
        if not given:
            raise SignatureError("webhook-signature has no v1 signature")
        stamp = datetime.fromtimestamp(sent, UTC)
        for workspace, signer in self._signers:
            expected = base64.b64decode(signer.sign(msg_id, stamp, text).split(",", 1)[1])
            if any(hmac.compare_digest(expected, g) for g in given):
                return msg_id, workspace
        raise SignatureError("no signature matches a configured webhook secret")


def receive_webhook(
    body: bytes,
    headers: Mapping[str, str],
    *,
    verifier: WebhookVerifier,
    state: StateStore,
    queue: JobQueue,
    sources: ContentRouter,
    limits: BodyLimits | None = None,
) -> Delivery:
    """Verify and durably record one delivery; the caller answers 202 only after this returns."""
    event_id, signer_workspace = verifier.verify(body, headers)
    try:
        parsed = parse_webhook_body(body, limits)
        workspace = parsed.data.workspace or signer_workspace
        if workspace != signer_workspace:
            raise WorkspaceMismatchError(
                f"the secret that signed this delivery belongs to workspace {signer_workspace!r}, which cannot"
                f" write to workspace {workspace!r}"
            )
        event = build_event(event_id, workspace, parsed)
        sources.check(event)
    except (InvalidEventError, WorkspaceMismatchError) as exc:
        record_rejection(event_id, signer_workspace, body, exc, state)
        raise
    return record_and_enqueue(event, state=state, queue=queue)


def record_rejection(event_id: str, workspace: str, body: bytes, error: Exception, state: StateStore) -> None:
    """Keep a signed but invalid delivery visible as `rejected` in `GET /events/{id}`, with the reason.

    Only deliveries with a valid signature are recorded (unsigned junk is not ours to store). Nothing is
    queued and the index is never touched. An id already used by a valid event keeps that event; a later
    valid delivery with this id replaces the rejection.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    raw: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
    kind = raw.get("type") if raw.get("type") in {t.value for t in EventType} else None
    stub = FileEvent(
        event_id=event_id,
        workspace=workspace,
        type=EventType(kind) if kind else EventType.UPDATED,
        file_id=_printable(data.get("file_id"), 512),
        path=_printable(data.get("path"), 1024),
        timestamp=datetime.now(UTC),
    )
    record, created = state.add_event(stub, EventStatus.REJECTED)
    if created:
        state.set_event_status(workspace, event_id, EventStatus.REJECTED, error=str(error))
        EVENTS_REJECTED.inc()
        log.warning(
            "rejected %s: %s",
            event_id,
            error,
            extra={"event_id": event_id, "workspace": workspace, "file_id": stub.file_id},
        )


def _printable(value: Any, limit: int) -> str:
    """A field of a refused body, made safe to store: a string, cut to `limit`, valid Unicode."""
    text = value if isinstance(value, str) else ""
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def record_and_enqueue(event: FileEvent, *, state: StateStore, queue: JobQueue) -> Delivery:
    """Store an event durably, then queue it; a known event id is not queued again (unless it was stored
    but never queued). Shared by webhooks and S3 notifications."""
    record, created = state.add_event(event, EventStatus.RECEIVED)
    if not created and record.status is not EventStatus.RECEIVED:
        EVENTS_DUPLICATE.labels(event.type.value).inc()
        return Delivery(record, duplicate=True)
    if created:
        EVENTS_RECEIVED.labels(event.type.value).inc()
    # Stored first, queued second: a crash between the two leaves a `received` event that a redelivery or
    # the sweep queues again; the reverse order could queue an event that was never stored.
    queue.enqueue(event.key, event.group_key)
    record = state.set_event_status(event.workspace, event.event_id, EventStatus.QUEUED)
    log.info(
        "queued %s %s (%s)",
        event.type.value,
        event.path,
        describe_position(event.position),
        extra={"event_id": event.event_id, "workspace": event.workspace, "file_id": event.file_id},
    )
    return Delivery(record, duplicate=not created)


def requeue_received(
    state: StateStore, queue: JobQueue, *, min_age: timedelta = SWEEP_MIN_AGE, limit: int = 1000
) -> int:
    """The sweep: queue events stored as `received` at least `min_age` ago whose enqueue never happened
    (the process died between the two writes). Runs at start-up, every minute in `eventrag serve`, and on a
    schedule on AWS. Enqueueing twice is harmless (the queue deduplicates; a second run only finishes)."""
    cutoff = datetime.now(UTC) - min_age
    stale = [r for r in state.events_with_status(EventStatus.RECEIVED, limit=limit) if r.received_at <= cutoff]
    for rec in stale:
        queue.enqueue(rec.key, rec.event.group_key)
        state.set_event_status(rec.event.workspace, rec.event_id, EventStatus.QUEUED)
    if stale:
        log.info("queued %d event(s) stored but never queued", len(stale))
    return len(stale)
