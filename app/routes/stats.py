"""GET /stats: the figures of the caller's workspace an operator watches (the web page's Health view)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from app.deps import ContainerDep, Workspace
from app.schemas import ErrorBody, StatsOut

router = APIRouter(tags=["operations"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}


@router.get("/stats", response_model=StatsOut, responses=_AUTH)
def stats(workspace: Workspace, container: ContainerDep) -> StatsOut:
    """Documents by status, chunks, embeddings made vs reused, events by status in the last hour and day,
    the queue depth and the age of the oldest queued event (ingest lag), outbound deliveries by status."""
    now = datetime.now(UTC)
    s = container.state.workspace_stats(workspace, now)
    oldest = s.oldest_unsettled_at
    return StatsOut(
        workspace=workspace,
        documents=s.documents,
        chunks=s.chunks,
        embeddings={"embedded": s.embedded, "reused": s.reused},
        events_last_hour=s.events_last_hour,
        events_last_day=s.events_last_day,
        queue_depth=s.unsettled,
        oldest_queued_age_seconds=round((now - oldest).total_seconds(), 3) if oldest is not None else None,
        held=s.held,
        queue_pending=container.queue.pending(),
        deliveries=container.outbox.delivery_counts(workspace) if container.outbox is not None else {},
    )
