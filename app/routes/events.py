"""Events: what happened to each delivery, and retrying a failed one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from app.container import Container
from app.deps import ContainerDep, Workspace
from app.routes.paging import next_link
from app.schemas import ErrorBody, EventList, EventOut, EventStatusList, EventStatusQuery
from stores.events import EventStatus
from stores.ports import EventRecord

router = APIRouter(tags=["events"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}


def event_out(rec: EventRecord) -> EventOut:
    ev = rec.event
    return EventOut(
        event_id=ev.event_id,
        workspace=ev.workspace,
        type=ev.type.value,
        file_id=ev.file_id,
        path=ev.path,
        version=ev.version,
        status=rec.status.value,
        attempts=rec.attempts,
        error=rec.error,
        detail=rec.detail,
        received_at=rec.received_at,
        updated_at=rec.updated_at,
    )


def _own_event(container: ContainerDep, workspace: str, event_id: str) -> EventRecord:
    # Events are keyed by (workspace, id): another workspace's event of the same id is simply not there.
    rec = container.state.get_event(workspace, event_id)
    if rec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no event {event_id!r} in this workspace")
    return rec


@router.get("/events", response_model=EventList, responses={**_AUTH, 422: {"model": ErrorBody}})
def list_events(
    request: Request,
    workspace: Workspace,
    container: ContainerDep,
    status_: Annotated[
        EventStatus | None,
        Query(alias="status", description="received, queued, processing, done, failed, superseded, held, rejected"),
    ] = None,
    file_id: Annotated[str | None, Query(max_length=512)] = None,
    since: Annotated[datetime | None, Query(description="received at or after this time (ISO 8601)")] = None,
    cursor: Annotated[str | None, Query(max_length=4096, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> EventList:
    """The caller's events, newest first, with their status, attempts and error; `total` counts every match of
    the filter, `next` is the next page (null on the last)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    page = container.state.page_events(
        workspace, status=status_, file_id=file_id, since=since, cursor=cursor, limit=limit
    )
    return EventList(
        events=[event_out(r) for r in page.items],
        count=len(page.items),
        total=page.total,
        next_cursor=page.next_cursor,
        next=next_link(request, page.next_cursor),
    )


@router.post("/events/status", response_model=EventStatusList, responses={**_AUTH, 422: {"model": ErrorBody}})
def events_status(body: EventStatusQuery, workspace: Workspace, container: ContainerDep) -> EventStatusList:
    """The status of up to 1000 events at once (what `eventrag ingest --wait` polls). Ids that are unknown, or
    another workspace's, are listed in `unknown`."""
    found, unknown = [], []
    for event_id in dict.fromkeys(body.event_ids):
        rec = container.state.get_event(workspace, event_id)
        if rec is None:
            unknown.append(event_id)
        else:
            found.append(event_out(rec))
    return EventStatusList(events=found, unknown=unknown)


@router.get(
    # `:path`: a webhook-id may contain "/" (sent percent-encoded as %2F, which the server decodes).
    "/events/{event_id:path}",
    response_model=EventOut,
    responses={**_AUTH, 404: {"model": ErrorBody, "description": "No such event in the caller's workspace"}},
)
def get_event(event_id: str, workspace: Workspace, container: ContainerDep) -> EventOut:
    """The status of one event: received, queued, processing, done, failed, superseded or held."""
    return event_out(_own_event(container, workspace, event_id))


@router.post(
    "/events/{event_id:path}/retry",
    response_model=EventOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "No such event in the caller's workspace"},
        409: {
            "model": ErrorBody,
            "description": "The event is not failed; only failed events can be retried",
        },
    },
)
def retry_event(event_id: str, workspace: Workspace, container: ContainerDep) -> EventOut:
    """Queue a failed event again, with a fresh attempt budget."""
    rec = _own_event(container, workspace, event_id)
    if rec.status is not EventStatus.FAILED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"event {event_id!r} is {rec.status.value}, not failed")
    return event_out(retry_failed(container, rec))


def retry_failed(container: Container, rec: EventRecord, *, confirmed: bool = False) -> EventRecord:
    """Queue an event again with a fresh attempt budget (a failed event, or a held delete once confirmed)."""
    out = container.state.reset_for_retry(rec.event.workspace, rec.event_id, confirmed=confirmed)
    container.queue.requeue(rec.key, rec.event.group_key)
    container.notify_worker()
    return out
