"""The outbound webhook outbox: what downstream systems are told about the index, and its port.

When the worker settles an event it writes, in the same atomic step as the event's new status, one
`Delivery` per subscriber that wants to hear about it (`StateStore.set_event_status(..., outbox=...)`).
A relay (`app.outbound`) then sends each delivery, Standard Webhooks-signed, retrying with backoff until
it is delivered or gives up. So a crash between settling and sending loses nothing: the delivery waits
in the outbox for the next relay run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from stores.paging import Page


class OutboundType(StrEnum):
    """What subscribers can hear about (the `type` of a delivery's body)."""

    DOCUMENT_INDEXED = "document.indexed"
    DOCUMENT_DELETED = "document.deleted"
    DOCUMENT_SKIPPED = "document.skipped"
    DOCUMENT_FAILED = "document.failed"
    EVENT_HELD = "event.held"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or its first)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # gave up after the configured attempts or age; the last response says why


@dataclass(slots=True, frozen=True)
class Subscription:
    """One subscriber of a workspace: where to send, which types (empty: all). The signing secret is not
    here: only the relay that signs needs it, so it never reaches the stores or the worker."""

    id: str
    url: str
    events: frozenset[OutboundType] = frozenset()

    def wants(self, kind: OutboundType) -> bool:
        return not self.events or kind in self.events


@dataclass(slots=True)
class Delivery:
    """One message to one subscriber. `message_id` is the `webhook-id` every attempt carries, so a
    receiver can deduplicate; `body` is the exact JSON that is signed and sent."""

    delivery_id: str
    message_id: str
    workspace: str
    subscriber: str
    url: str
    type: OutboundType
    body: str
    status: DeliveryStatus
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime
    attempts: int = 0
    last_status: int | None = None  # the HTTP status of the last answer
    last_response: str | None = None  # the start of the last answer's body
    last_error: str | None = None  # why the last attempt did not succeed
    delivered_at: datetime | None = None
    file_id: str | None = None
    event_id: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass(slots=True)
class DeliveryAttempt:
    """The result of one attempt, as the relay records it."""

    status: DeliveryStatus
    next_attempt_at: datetime
    last_status: int | None = None
    last_response: str | None = None
    last_error: str | None = None


@dataclass(slots=True, frozen=True)
class StoredSubscription:
    """A subscriber created through the API (`POST /webhook-subscriptions`), kept in the state store with
    the secret eventrag generated for it."""

    workspace: str
    id: str
    url: str
    events: frozenset[OutboundType]
    secret: str
    created_at: datetime

    @property
    def subscription(self) -> Subscription:
        return Subscription(self.id, self.url, self.events)


@dataclass(slots=True)
class Outbound:
    """The subscriptions of every workspace, as the worker needs them to fill the outbox: those from
    settings, and (`stored`, when given) those created through the API."""

    by_workspace: Mapping[str, Sequence[Subscription]] = field(default_factory=dict)
    stored: Callable[[str], Sequence[Subscription]] | None = None

    def subscribers(self, workspace: str, kind: OutboundType) -> list[Subscription]:
        every = [*self.by_workspace.get(workspace, ()), *(self.stored(workspace) if self.stored else ())]
        return [s for s in every if s.wants(kind)]


def message_id(workspace: str, event_id: str, kind: OutboundType, attempt_started: datetime) -> str:
    """Deterministic per settle of an event: a store write retried after a timeout writes the same rows
    (the insert is conditional), while a later settle of the same event (retried on demand) gets new ones."""
    seed = f"{workspace}\0{event_id}\0{kind.value}\0{attempt_started.timestamp():.6f}"
    return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


@runtime_checkable
class OutboxStore(Protocol):
    """The deliveries the state store wrote with settled events, as the relay and the API see them.

    - `claim` takes a due, pending delivery for `lease_seconds` (its `next_attempt_at` moves to the end of
      the lease, so no other relay attempts it meanwhile); None when it is not due, not pending or gone.
    - `record_attempt` stores an attempt's result and counts it.
    - `list_deliveries` is newest first within one workspace; `cursor` is the previous page's `next_cursor`.
    """

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None: ...

    def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]: ...

    def claim(self, delivery_id: str, now: datetime, lease_seconds: float) -> Delivery | None: ...

    def record_attempt(self, delivery_id: str, attempt: DeliveryAttempt) -> Delivery: ...

    def delivery_counts(self, workspace: str) -> dict[str, int]:
        """The workspace's deliveries by status (every status present, zeros included)."""
        ...

    def pending_count(self) -> int:
        """Deliveries still waiting to be sent, across workspaces (a gauge of `/metrics`)."""
        ...

    def purge(self, older_than: datetime) -> int:
        """Forgets delivered and failed deliveries settled before `older_than`; how many it forgot."""
        ...

    def list_deliveries(
        self,
        workspace: str,
        *,
        status: DeliveryStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Delivery]: ...


class Added(StrEnum):
    """What `SubscriptionStore.add_subscription` did."""

    ADDED = "added"
    EXISTS = "exists"  # the workspace has a subscriber with that id: nothing changed
    FULL = "full"  # the workspace has `limit` subscribers already: nothing changed


@runtime_checkable
class SubscriptionStore(Protocol):
    """Subscribers created through the API, per workspace. `add_subscription` adds one unless the workspace
    has a subscriber with that id or `limit` subscribers already, as one atomic step: adds racing each other
    never take a workspace past `limit`."""

    def list_subscriptions(self, workspace: str) -> list[StoredSubscription]: ...

    def get_subscription(self, workspace: str, subscription_id: str) -> StoredSubscription | None: ...

    def add_subscription(self, subscription: StoredSubscription, *, limit: int) -> Added: ...

    def delete_subscription(self, workspace: str, subscription_id: str) -> bool: ...
