"""POST /webhooks: verify, store, queue, answer 202. The file itself is processed later by the worker."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.deps import ContainerDep
from app.schemas import Accepted, ErrorBody

router = APIRouter(tags=["ingest"])


async def _read_body(request: Request, limit: int) -> bytes:
    from ingest.errors import PayloadTooLargeError

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > limit:
            raise PayloadTooLargeError(f"body exceeds the limit of {limit} bytes")
    return bytes(body)


@router.post(
    "/webhooks",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses={
        200: {"model": Accepted, "description": "A duplicate delivery: the original event, unchanged"},
        401: {"model": ErrorBody, "description": "Missing or bad signature headers, or a stale timestamp"},
        403: {"model": ErrorBody, "description": "The signing secret belongs to another workspace"},
        413: {"model": ErrorBody, "description": "The body is larger than EVENTRAG_MAX_BODY_BYTES"},
        422: {
            "model": ErrorBody,
            "description": "Malformed JSON, unknown event type, invalid or oversized fields, a timestamp in the future",
        },
        503: {"model": ErrorBody, "description": "The event store or queue is unavailable; retry later"},
    },
    # The body is read raw (the signature covers its exact bytes); its schema is documented here and
    # filled in from `ingest.webhook_body.WebhookBody` when the OpenAPI document is built (app.main).
    openapi_extra={
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
                "description": description,
            }
            for name, description in (
                ("webhook-id", "the event id: unique per event within a workspace; a repeat is a duplicate"),
                ("webhook-timestamp", "integer seconds since the epoch; within EVENTRAG_WEBHOOK_TOLERANCE_SECONDS"),
                ("webhook-signature", "`v1,<base64 HMAC-SHA256>` (Standard Webhooks); several, space-separated"),
            )
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookBody"}}},
        },
    },
)
async def post_webhook(request: Request, response: Response, container: ContainerDep) -> Accepted:
    """Receive a Standard Webhooks delivery about a file (created, updated, deleted).

    The event is committed to the state store before the 202, so a crash afterwards never loses it. The
    `webhook-id` header is the event id within the workspace: a repeated delivery returns the original event
    and changes nothing (a delivery that was refused with a 4xx does not count: a later valid one is applied).
    """
    # The write path is imported on the first delivery, not with the app: a process that only answers
    # questions (the Lambda API function serving /query) never loads it.
    from ingest.receiver import receive_webhook

    body = await _read_body(request, container.settings.max_body_bytes)
    delivery = await run_in_threadpool(
        receive_webhook,
        body,
        dict(request.headers),
        verifier=container.verifier,
        state=container.state,
        queue=container.queue,
        sources=container.sources,
        limits=container.limits,
    )
    container.notify_worker()
    event_id = delivery.record.event_id
    # The id as one percent-encoded path segment: a webhook-id may hold "/", "?", "#" or spaces.
    status_url = f"{request.url_for('list_events').path}/{quote(event_id, safe='')}"
    response.headers["Location"] = status_url
    if delivery.duplicate:
        response.status_code = status.HTTP_200_OK
    return Accepted(
        event_id=event_id,
        status=delivery.record.status.value,
        status_url=status_url,
        duplicate=delivery.duplicate,
    )


__all__ = ["router", "HTTPException"]
