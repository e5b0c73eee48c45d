"""GET /metrics: Prometheus text format (prometheus-client), for a scraper.

Protected outside loopback: with `EVENTRAG_METRICS_API_KEY` set, a scrape must send it as a bearer token
(Prometheus: `authorization: {credentials: ...}` in the scrape config) or as `X-API-Key`; without one,
the route answers only in loopback single-user mode (`eventrag serve` on 127.0.0.1). `EVENTRAG_METRICS_ENABLED
=false` turns it off (404). Workspace API keys do not open it: the figures cover every workspace.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import ContainerDep
from app.schemas import ErrorBody
from stores.telemetry import OLDEST_QUEUED_AGE, OUTBOX_PENDING, QUEUE_DEPTH

router = APIRouter(tags=["operations"])


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.headers.get("x-api-key")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format"},
        401: {"model": ErrorBody, "description": "Missing or wrong metrics key"},
        403: {"model": ErrorBody, "description": "No metrics key configured and not in loopback single-user mode"},
        404: {"model": ErrorBody, "description": "Metrics are turned off"},
    },
)
def metrics(request: Request, container: ContainerDep) -> Response:
    """Counters and histograms of events, ingest lag, the queue, embedding, search, answers and deliveries."""
    settings = container.settings
    if not settings.metrics_enabled:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "metrics are turned off (EVENTRAG_METRICS_ENABLED=false)")
    if settings.metrics_api_key is not None:
        given = _presented_key(request)
        expected = settings.metrics_api_key.get_secret_value()
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the metrics key as `Authorization: Bearer <key>`")
    elif not settings.anonymous_workspace:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "set EVENTRAG_METRICS_API_KEY to scrape /metrics outside loopback single-user mode",
        )
    QUEUE_DEPTH.set(container.queue.pending())
    oldest = container.state.oldest_unsettled()
    OLDEST_QUEUED_AGE.set((datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0)
    if container.outbox is not None:
        OUTBOX_PENDING.set(container.outbox.pending_count())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
