"""AWS Lambda entry points: thin wrappers over the same app and worker the local server runs.

- `api_handler`: the FastAPI app under Mangum (API Gateway HTTP API v2, Lambda Function URLs).
- `ingest_handler`: an SQS batch; each record names one event; the same `IngestWorker.process` applies
  them, and only the records that must be retried are reported (`ReportBatchItemFailures`).
- `s3_handler`: S3 ObjectCreated/ObjectRemoved notifications become file events on the same queue.

The container is built on the first invocation (cold start) and reused while the execution environment
lives; nothing is built at import.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.container import Container, build_container
from app.settings import Settings

log = logging.getLogger(__name__)

_container: Container | None = None
_api: Any = None


def container() -> Container:
    global _container
    if _container is None:
        _container = build_container(Settings())
    return _container


def set_container(c: Container | None) -> None:
    """Tests (and embedders of eventrag) install their own container; `None` resets to lazy building."""
    global _container, _api
    _container, _api = c, None


def api_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _api
    if _api is None:
        from mangum import Mangum

        from app.main import create_app

        # lifespan="off": Mangum would run start-up and shut-down around every invocation; the container
        # lives for the whole execution environment instead, and Lambda has no in-process worker.
        _api = Mangum(create_app(container(), start_worker=False), lifespan="off")
    result: dict[str, Any] = _api(event, context)
    return result


def ingest_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Process an SQS batch; report the records to deliver again (SQS then backs off, then dead-letters)."""
    from ingest.worker import OutcomeKind

    c = container()
    records = event.get("Records", [])
    ids: dict[str, str] = {}  # event id -> SQS message id
    failures: list[dict[str, str]] = []
    for record in records:
        try:
            body = json.loads(record["body"])
            ids[body["event_id"]] = record["messageId"]
        except (KeyError, ValueError, TypeError):
            log.error("unreadable queue message %s; sending it to the dead-letter queue", record.get("messageId"))
            failures.append({"itemIdentifier": record.get("messageId", "")})
    if ids:
        try:
            outcomes = c.worker.process(list(ids))
        except Exception:
            log.exception("batch failed as a whole; every record will be retried")
            return {"batchItemFailures": [{"itemIdentifier": m} for m in ids.values()] + failures}
        for event_id, outcome in outcomes.items():
            # A FAILED event is recorded in the state store; reporting it too sends the message to the DLQ
            # after maxReceiveCount, where `eventrag redrive` can pick it up.
            if outcome.kind in (OutcomeKind.RETRY, OutcomeKind.FAILED):
                failures.append({"itemIdentifier": ids[event_id]})
    return {"batchItemFailures": failures}


def s3_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Turn S3 notifications into file events (ordered by the S3 `sequencer`) and queue them."""
    from ingest.s3_events import receive_s3_notification

    c = container()
    accepted = receive_s3_notification(event, state=c.state, queue=c.queue, settings_workspace=c.settings.s3_workspace)
    return {"accepted": accepted}
