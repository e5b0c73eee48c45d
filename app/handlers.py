"""AWS Lambda entry points: thin wrappers over the same app and worker the local server runs.

- `api_handler`: the FastAPI app under Mangum (API Gateway HTTP API v2, Lambda Function URLs).
- `ingest_handler`: an SQS batch; each record names one event; the same `IngestWorker.process` applies
  them, and only the records that must be retried are reported (`ReportBatchItemFailures`).
- `s3_handler`: S3 ObjectCreated/ObjectRemoved/LifecycleExpiration notifications become file events on the
  same queue.
- `sweep_handler` (scheduled): queue events stored but never queued (the process died between the writes).
- `reconcile_handler` (scheduled): reconcile every workspace; report only, unless
  `EVENTRAG_RECONCILE_REPAIR=true`.
- `outbound_handler`: drains the outbox: attempts the deliveries the outbound queue names, and every
  minute (an EventBridge schedule) sweeps the outbox for due ones.

The container is built on the first invocation (cold start) and reused while the execution environment
lives; nothing is built at import.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.container import Container, build_container, build_state_and_queue
from app.logs import configure_logging
from app.settings import Settings
from stores.ports import JobQueue, StateStore

log = logging.getLogger(__name__)

_container: Container | None = None
_api: Any = None


def container() -> Container:
    global _container
    if _container is None:
        settings = Settings()
        configure_logging(settings)
        _container = build_container(settings)
    return _container


def set_container(c: Container | None) -> None:
    """Tests (and embedders of eventrag) install their own container; `None` resets to lazy building."""
    global _container, _api, _s3_parts, _maintenance, _outbound
    _container, _api, _s3_parts, _maintenance, _outbound = c, None, None, None, None


def api_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _api
    if _api is None:
        _api = lambda_api(container())
    result: dict[str, Any] = _api(event, context)
    return result


def lambda_api(c: Container) -> Any:
    """The app under Mangum, as the API function serves it (`python -m bench` times this too)."""
    from mangum import Mangum

    from app.main import create_app

    # lifespan="off": Mangum would run start-up and shut-down around every invocation; the container lives
    # for the whole execution environment instead, and Lambda has no in-process worker. An execution
    # environment runs one invocation at a time.
    return Mangum(create_app(c, start_worker=False, one_request_at_a_time=True), lifespan="off")


def ingest_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Process an SQS batch; report the records to deliver again.

    A FIFO batch can hold several messages of one group (one file), in order. The worker plans a whole
    batch before it applies it, so it must never get two events of one file at once: the batch is applied
    in rounds, the n-th message of every group in round n. A failed message does not hold back the ones
    after it; the positions keep the index right whatever order they are applied in.

    Reported records come back: RETRY (transient) after the visibility timeout; FAILED (a permanent error,
    or the attempts used up; the error is on the event and the document) at once, so its remaining receives
    happen now and SQS moves it to the dead-letter queue after maxReceiveCount receives instead of keeping
    the file's later events waiting for hours. A redelivered event that is already FAILED is reported
    failed again, so it can only end in the DLQ, where `eventrag redrive` picks it up. maxReceiveCount is
    EVENTRAG_WORKER__MAX_ATTEMPTS (serverless.yml sets both from `maxAttempts`), so "failed" in the state
    store and "in the DLQ" mean the same thing. An unreadable message is sent on to the DLQ the same way.
    """
    from ingest.plans import OutcomeKind
    from stores.events import EventKey
    from stores.ports import Job
    from stores.sqs import parse_message_body

    c = container()
    failures: list[str] = []  # SQS message ids
    groups: dict[str, list[tuple[EventKey, dict[str, Any]]]] = {}  # group -> (event, record), in queue order

    def fail_now(record: dict[str, Any]) -> None:
        failures.append(record.get("messageId", ""))
        group = record.get("attributes", {}).get("MessageGroupId", "")
        job = Job("", "", group, 0, record.get("receiptHandle", ""))
        try:
            c.queue.release(job, 0)
        except Exception:  # it still reaches the DLQ, one visibility timeout per receive later
            log.warning("could not make message %s visible again", record.get("messageId"), exc_info=True)

    for record in event.get("Records", []):
        key = parse_message_body(str(record.get("body", "")))
        if key is None:
            log.error("unreadable queue message %s; sending it to the dead-letter queue", record.get("messageId"))
            fail_now(record)
            continue
        group = record.get("attributes", {}).get("MessageGroupId") or str(key)
        groups.setdefault(group, []).append((key, record))

    while groups:
        batch = {items[0][0]: items[0][1] for items in groups.values()}
        groups = {g: items[1:] for g, items in groups.items() if len(items) > 1}
        try:
            outcomes = c.worker.process(list(batch))
        except Exception:
            log.exception("batch failed as a whole; its records and the rest of the batch will be retried")
            failures.extend(r["messageId"] for r in batch.values())
            failures.extend(r["messageId"] for items in groups.values() for _, r in items)
            break
        for key, record in batch.items():
            kind = outcomes[key].kind
            if kind is OutcomeKind.FAILED:
                fail_now(record)
            elif kind is OutcomeKind.RETRY:
                failures.append(record["messageId"])
    return {"batchItemFailures": [{"itemIdentifier": m} for m in failures]}


_s3_parts: tuple[Settings, StateStore, JobQueue] | None = None
_maintenance: tuple[StateStore, JobQueue, Any] | None = None
_outbound: Any = None


def outbound_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Attempt outbound webhook deliveries: those named by an SQS batch, or (a scheduled event) every due one.

    A failed attempt is recorded in the outbox with its next attempt time; when that is within SQS's 15
    minutes, the delivery is queued again with that delay, otherwise the sweep picks it up. Records are
    never reported failed: the outbox, not the queue, holds each delivery's state.
    """
    global _outbound
    from datetime import UTC, datetime

    from stores.outbox import DeliveryStatus

    if _outbound is None:
        from app.container import build_outbox, with_remote_secrets
        from app.outbound.relay import OutboundRelay
        from app.outbound.subscriptions import StoredLookup, build_subscribers, secret_lookup

        if _container is not None:
            relay = _container.relay
            _outbound = (relay, _container.delivery_queue)
        else:
            settings = with_remote_secrets(Settings())
            configure_logging(settings)
            outbox, queue, subscription_store = build_outbox(settings)
            secret_for = secret_lookup(build_subscribers(settings), StoredLookup(subscription_store))
            _outbound = (OutboundRelay(outbox, secret_for, settings.outbound), queue)
    relay, queue = _outbound
    if "Records" not in event:
        return {"attempted": relay.deliver_due(limit=100)}
    attempted = 0
    for record in event["Records"]:
        try:
            delivery_id = str(json.loads(record["body"])["delivery_id"])
        except (KeyError, ValueError, TypeError):
            log.error("unreadable outbound message %s; dropped (the sweep covers the outbox)", record.get("messageId"))
            continue
        result = relay.attempt(delivery_id)
        if result is None:
            continue
        attempted += 1
        if result.status is DeliveryStatus.PENDING and queue is not None:
            wait = (result.next_attempt_at - datetime.now(UTC)).total_seconds()
            if wait <= queue.MAX_DELAY_SECONDS:
                queue.send([delivery_id], delay_seconds=wait)
    return {"batchItemFailures": [], "attempted": attempted}


def s3_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Turn S3 notifications into file events (ordered by the S3 `sequencer`) and queue them.

    Needs the state store and the queue only; without an installed container it builds just those, so
    the function never loads the index or the embedding model (no torch at its cold start)."""
    global _s3_parts
    from ingest.s3_events import receive_s3_notification

    if _container is not None:
        settings, state, queue = _container.settings, _container.state, _container.queue
    else:
        if _s3_parts is None:
            s3_settings = Settings()
            configure_logging(s3_settings)
            _s3_parts = (s3_settings, *build_state_and_queue(s3_settings))
        settings, state, queue = _s3_parts
    accepted = receive_s3_notification(event, state=state, queue=queue, settings_workspace=settings.s3_workspace)
    return {"accepted": accepted}


def _maintenance_parts(with_index: bool) -> tuple[StateStore, JobQueue, Any]:
    """The state store, the queue and (for reconcile) the index: never the embedding model, so the
    scheduled functions start without torch."""
    global _maintenance
    if _container is not None:
        return _container.state, _container.queue, _container.index
    if _maintenance is None or (with_index and _maintenance[2] is None):
        from app.container import build_index, with_remote_secrets

        settings = with_remote_secrets(Settings())
        configure_logging(settings)
        state, queue = build_state_and_queue(settings)
        _maintenance = (state, queue, build_index(settings) if with_index else None)
    return _maintenance


def sweep_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: queue the events stored as `received` a while ago but never queued (the api or s3
    function died between storing and queueing). The queue deduplicates, so a sweep racing a slow
    receiver costs nothing."""
    from ingest.receiver import requeue_received

    state, queue, _ = _maintenance_parts(with_index=False)
    queued = requeue_received(state, queue)
    log.info("sweep: queued %d event(s) left as received", queued)
    return {"queued": queued}


def reconcile_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: reconcile every workspace against the index. Reports (in the log and the result) unless
    EVENTRAG_RECONCILE_REPAIR is true; with it, repairs as `POST /reconcile?repair=true` does."""
    from ingest.reconcile import reconcile

    repair = _container.settings.reconcile_repair if _container is not None else Settings().reconcile_repair
    state, queue, index = _maintenance_parts(with_index=True)
    reports = []
    for workspace in state.workspaces():
        report = reconcile(workspace, state=state, index=index, queue=queue, repair=repair)
        for p in report.problems:
            log.warning(
                "reconcile %s: %s %s: %s%s",
                workspace,
                p.kind,
                p.file_id,
                p.detail,
                f" -> {p.repaired}" if p.repaired else "",
            )
        reports.append(
            {
                "workspace": workspace,
                "clean": report.clean,
                "documents_checked": report.documents_checked,
                "points_checked": report.points_checked,
                "problems": len(report.problems),
                "repaired": sum(1 for p in report.problems if p.repaired),
            }
        )
    return {"repair": repair, "workspaces": reports}
