"""Outbound webhook subscribers of the caller's workspace: list, create (with a generated secret), delete.

Subscribers from `EVENTRAG_OUTBOUND_WEBHOOKS` are listed too (`source: settings`) but are changed only
there. A new subscriber's URL must pass the SSRF rules now (`stores.ssrf`), so a refused URL is a 422 at
once, not a delivery that fails for hours; the relay checks it again before every attempt.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from app.deps import ContainerDep, Workspace
from app.outbound.relay import ALLOW_HINT
from app.outbound.subscriptions import subscriber_id
from app.schemas import ErrorBody
from stores.outbox import Added, OutboundType, StoredSubscription
from stores.ssrf import check_url

router = APIRouter(tags=["outbound webhooks"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}
MAX_PER_WORKSPACE = 20  # as for settings: one settled event writes one outbox row per subscriber


class SubscriptionIn(BaseModel):
    model_config = {"extra": "forbid"}

    url: str = Field(max_length=2048, description="https:// (or http://) endpoint that receives the deliveries")
    events: list[OutboundType] = Field(default_factory=list, description="types to send; empty = all")
    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a stable name; default: from the URL")


class SubscriptionOut(BaseModel):
    id: str
    url: str
    events: list[str]
    source: Literal["api", "settings"]
    created_at: datetime | None = None


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="the Standard Webhooks secret to verify deliveries with; shown only now")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionOut]
    count: int


def _listing(container: ContainerDep, workspace: str) -> list[SubscriptionOut]:
    configured = [
        SubscriptionOut(id=s.id, url=s.url, events=sorted(e.value for e in s.events), source="settings")
        for s in container.subscribers.outbound.by_workspace.get(workspace, ())
    ]
    store = container.subscription_store
    created = [
        SubscriptionOut(
            id=s.id, url=s.url, events=sorted(e.value for e in s.events), source="api", created_at=s.created_at
        )
        for s in (store.list_subscriptions(workspace) if store is not None else [])
    ]
    return configured + created


@router.get("/webhook-subscriptions", response_model=SubscriptionList, responses=_AUTH)
def list_subscriptions(workspace: Workspace, container: ContainerDep) -> SubscriptionList:
    """The workspace's subscribers, from settings and from this API (secrets are never shown again)."""
    found = _listing(container, workspace)
    return SubscriptionList(subscriptions=found, count=len(found))


@router.post(
    "/webhook-subscriptions",
    response_model=SubscriptionCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        **_AUTH,
        409: {"model": ErrorBody, "description": "The workspace already has a subscriber with that id"},
        422: {"model": ErrorBody, "description": "Bad URL or type, a URL the SSRF rules refuse, or too many"},
    },
)
def create_subscription(body: SubscriptionIn, workspace: Workspace, container: ContainerDep) -> SubscriptionCreated:
    """Add a subscriber; the answer carries its signing secret, generated here and shown only once."""
    store = container.subscription_store
    if store is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no subscription store is configured")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    check_url(body.url, allow_private=container.settings.outbound.allow_private, hint=ALLOW_HINT)
    configured = container.subscribers.outbound.by_workspace.get(workspace, ())
    sid = body.id or subscriber_id(body.url)
    if any(s.id == sid for s in configured):
        raise HTTPException(status.HTTP_409_CONFLICT, f"subscriber {sid!r} exists; delete it or choose another id")
    record = StoredSubscription(workspace, sid, body.url, frozenset(body.events), secret, datetime.now(UTC))
    # The store counts and adds in one step: creates racing each other never pass the limit.
    added = store.add_subscription(record, limit=MAX_PER_WORKSPACE - len(configured))
    if added is Added.EXISTS:
        raise HTTPException(status.HTTP_409_CONFLICT, f"subscriber {sid!r} exists; delete it or choose another id")
    if added is Added.FULL:
        raise HTTPException(422, f"a workspace has at most {MAX_PER_WORKSPACE} subscribers; delete one first")
    if container.stored_subscriptions is not None:
        container.stored_subscriptions.forget(workspace)
    return SubscriptionCreated(
        id=sid,
        url=body.url,
        events=sorted(e.value for e in body.events),
        source="api",
        created_at=record.created_at,
        secret=secret,
    )


@router.delete(
    "/webhook-subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "No such subscriber in the caller's workspace"},
        409: {"model": ErrorBody, "description": "The subscriber is configured in settings"},
    },
)
def delete_subscription(subscription_id: str, workspace: Workspace, container: ContainerDep) -> Response:
    """Remove a subscriber created through this API; its pending deliveries then fail ("no longer configured")."""
    if any(s.id == subscription_id for s in container.subscribers.outbound.by_workspace.get(workspace, ())):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"subscriber {subscription_id!r} is configured in EVENTRAG_OUTBOUND_WEBHOOKS"
        )
    store = container.subscription_store
    if store is None or not store.delete_subscription(workspace, subscription_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subscriber {subscription_id!r} in this workspace")
    if container.stored_subscriptions is not None:
        container.stored_subscriptions.forget(workspace)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
