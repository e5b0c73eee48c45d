"""Settling an event: its final status, its outbox rows, one log line and the metrics, together; and, for a
failure, whether it is tried again (with backoff) or given up on (recorded on the event and the document).

Every step of the worker ends an event here (`ingest.worker` tells the steps), so each status is told to
subscribers (`ingest.notifications`) and counted the same way whichever step decided it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ingest.errors import PermanentError, SourceUnavailableError
from ingest.notifications import Change, deliveries_for
from ingest.plans import Outcome, OutcomeKind, WorkerConfig
from stores.events import EventKey, EventStatus, FileEvent, describe_position, explain_order, parse_position
from stores.outbox import Delivery, Outbound, OutboundType
from stores.ports import DocumentRecord, EventRecord, StateStore
from stores.telemetry import EVENTS_APPLIED, EVENTS_FAILED, EVENTS_HELD, EVENTS_RETRIED, INGEST_LAG

# The worker's log lines keep the worker's logger name, whichever of its modules settles the event (the
# name is a field of every JSON log line: what a log query filters on).
log = logging.getLogger("ingest.worker")

# Told about deliveries just written to the outbox (wakes the local relay, or queues them on AWS).
OutboxHook = Callable[[Sequence[Delivery]], None]


@dataclass(slots=True, kw_only=True)
class Settler:
    """Ends events for every step of the worker; `started` holds when each event's attempt began (for the
    settle log line), from step 1 until the event settles or goes back to the queue."""

    state: StateStore
    config: WorkerConfig
    outbound: Outbound | None = None
    on_outbox: OutboxHook | None = None
    started: dict[EventKey, float] = field(default_factory=dict, init=False)

    def settle(
        self,
        record: EventRecord,
        status: EventStatus,
        *,
        detail: str | None = None,
        error: str | None = None,
        change: Change | None = None,
        summary: str | None = None,
        told: list[Delivery] | None = None,
    ) -> None:
        """With `told` (settling inside a `StateStore.batch`), the deliveries are added to it for `tell`
        after the commit instead of being handed to the relay now."""
        ev = record.event
        outbox = deliveries_for(self.outbound, record, change) if change is not None else []
        self.state.set_event_status(ev.workspace, ev.event_id, status, detail=detail, error=error, outbox=outbox)
        if told is None:
            self.tell(outbox)
        else:
            told.extend(outbox)
        lag = (datetime.now(UTC) - record.received_at).total_seconds()
        INGEST_LAG.observe(max(0.0, lag))
        started = self.started.get(ev.key)
        took = f", {time.perf_counter() - started:.1f} s" if started is not None else ""
        kind = ev.type.value
        if status is EventStatus.FAILED:
            EVENTS_FAILED.labels(kind).inc()
            log.warning("failed %s: %s%s", ev.path, error, took, extra=log_fields(ev))
        elif status is EventStatus.HELD:
            EVENTS_HELD.inc()
            log.warning("held delete of %s: %s", ev.path, detail, extra=log_fields(ev))
        else:
            result = change.status if change is not None else status.value
            EVENTS_APPLIED.labels(kind, result).inc()
            log.info("%s%s", summary or f"{result} {ev.path}", took, extra=log_fields(ev))

    def tell(self, outbox: Sequence[Delivery]) -> None:
        if outbox and self.on_outbox is not None:
            try:
                self.on_outbox(outbox)
            except Exception:  # the rows are durable; the relay's sweep sends them anyway
                log.warning("could not hand %d delivery(ies) to the relay now", len(outbox), exc_info=True)

    def set_status(
        self, ev: FileEvent, status: EventStatus, *, error: str | None = None, detail: str | None = None
    ) -> EventRecord:
        return self.state.set_event_status(ev.workspace, ev.event_id, status, error=error, detail=detail)

    def superseded_at_switch(self, record: EventRecord) -> Outcome:
        """The switch's compare-and-set refused: something newer was applied while the event was prepared."""
        ev = record.event
        now = self.state.get_document(ev.workspace, ev.file_id)
        winner = now.position if now is not None and now.position else None
        detail = "not newer than what was applied while it was processed"
        if winner is not None:
            detail += f": {describe_position(winner)} wins, because {explain_order(winner, ev.position)}"
        self.settle(record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
        return Outcome(OutcomeKind.SUPERSEDED, detail)

    def failure(self, record: EventRecord, exc: Exception) -> Outcome:
        """A step failed: the event goes back to the queue with a backoff, or, for a permanent error or the
        last attempt, fails (on the document and the event)."""
        ev = record.event
        message = f"{type(exc).__name__}: {exc}"
        attempts = record.attempts
        permanent = isinstance(exc, PermanentError)
        if permanent or attempts >= self.config.max_attempts:
            why = message if permanent else f"{message} (gave up after {attempts} attempt(s))"
            # The document first: a crash between the two leaves the event processing (retried), never a
            # failed event whose document does not say so. Only an event newer than the applied one marks
            # the document (a stale failure leaves the newer work as it is).
            self.state.note_document_error(
                ev.workspace, ev.file_id, ev.path, why, position=ev.position, event_id=ev.event_id
            )
            self.settle(
                record, EventStatus.FAILED, error=why, change=Change(OutboundType.DOCUMENT_FAILED, "failed", error=why)
            )
            return Outcome(OutcomeKind.FAILED, why)
        delay = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2 ** max(0, attempts - 1))
        if isinstance(exc, SourceUnavailableError) and exc.retry_after is not None:
            # The source said when to come back (HTTP 429/503 Retry-After): sooner would be refused again.
            delay = min(self.config.backoff_max_seconds, max(delay, exc.retry_after))
        EVENTS_RETRIED.labels(ev.type.value).inc()
        log.info(
            "event %s attempt %d failed (%s); retrying in %.1fs",
            ev.key,
            attempts,
            message,
            delay,
            extra=log_fields(ev),
        )
        self.set_status(ev, EventStatus.QUEUED, error=message)
        return Outcome(OutcomeKind.RETRY, message, delay)


def log_fields(ev: FileEvent) -> dict[str, str]:
    """The fields every log line about an event carries."""
    return {"event_id": ev.event_id, "workspace": ev.workspace, "file_id": ev.file_id}


def version_label(ev: FileEvent) -> str:
    """` v3` after a path in a log line, or nothing for an event without a version."""
    return f" v{ev.version}" if ev.version is not None else ""


def replaces(previous: DocumentRecord | None, ev: FileEvent) -> str:
    """What a settled event's detail says of the position it replaced, and why it wins."""
    replaced = previous.position if previous is not None else None
    if replaced and replaced != ev.position and parse_position(replaced) is not None:
        return f"; replaces {describe_position(replaced)}, because {explain_order(ev.position, replaced)}"
    return ""
