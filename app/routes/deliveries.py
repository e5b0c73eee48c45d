"""GET /webhook-deliveries: the caller's outbound webhook deliveries, with their status and last answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.deps import ContainerDep, Workspace
from app.routes.paging import next_link
from app.schemas import DeliveryList, DeliveryOut, ErrorBody
from stores.outbox import Delivery, DeliveryStatus

router = APIRouter(tags=["operations"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        delivery_id=d.delivery_id,
        message_id=d.message_id,
        subscriber=d.subscriber,
        url=d.url,
        type=d.type.value,
        status=d.status.value,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status is DeliveryStatus.PENDING else None,
        last_status=d.last_status,
        last_response=d.last_response,
        last_error=d.last_error,
        file_id=d.file_id,
        event_id=d.event_id,
        payload=d.payload,
        created_at=d.created_at,
        updated_at=d.updated_at,
        delivered_at=d.delivered_at,
    )


@router.get("/webhook-deliveries", response_model=DeliveryList, responses={**_AUTH, 422: {"model": ErrorBody}})
def list_deliveries(
    request: Request,
    workspace: Workspace,
    container: ContainerDep,
    status_: Annotated[DeliveryStatus | None, Query(alias="status", description="pending, delivered or failed")] = None,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeliveryList:
    """Outbound webhook deliveries of the caller's workspace, newest first: status, attempts, last answer."""
    if container.outbox is None:
        return DeliveryList(deliveries=[], count=0, total=0)
    page = container.outbox.list_deliveries(workspace, status=status_, cursor=cursor, limit=limit)
    return DeliveryList(
        deliveries=[delivery_out(d) for d in page.items],
        count=len(page.items),
        total=page.total,
        next_cursor=page.next_cursor,
        next=next_link(request, page.next_cursor),
    )
