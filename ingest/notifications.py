"""What the worker tells subscribers when it settles an event: the outbox rows written with the new status.

The body follows the Standard Webhooks payload shape (`type`, `timestamp`, `data`):

    {"type": "document.indexed", "timestamp": "2026-11-26T10:00:01.234567Z",
     "data": {"workspace": "acme", "file_id": "f1", "path": "handbook/leave.md", "version": 3,
              "position": "20261126T100000.000000Z|2|v0000000000000000003|msg_...",
              "changed_at": "2026-11-26T10:00:00Z",
              "event_id": "msg_...", "event_type": "file.updated", "status": "indexed",
              "chunk_count": 12, "embedded": 2, "reused": 10, "error": null}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from stores.outbox import Delivery, DeliveryStatus, Outbound, OutboundType, message_id
from stores.ports import EventRecord


@dataclass(slots=True, frozen=True)
class Change:
    """The facts of one settled event that a subscriber hears about."""

    kind: OutboundType
    status: str
    chunk_count: int = 0
    embedded: int = 0
    reused: int = 0
    error: str | None = None


def deliveries_for(outbound: Outbound | None, record: EventRecord, change: Change) -> list[Delivery]:
    """One pending delivery per subscriber of the event's workspace that wants `change.kind`."""
    if outbound is None:
        return []
    ev = record.event
    subscribers = outbound.subscribers(ev.workspace, change.kind)
    if not subscribers:
        return []
    now = datetime.now(UTC)
    msg = message_id(ev.workspace, ev.event_id, change.kind, record.updated_at)
    body = json.dumps(
        {
            "type": change.kind.value,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": {
                "workspace": ev.workspace,
                "file_id": ev.file_id,
                "path": ev.path,
                "version": ev.version,
                # The order rule (docs/consistency.md): deliveries may arrive in any order (retries), and
                # the greater position, compared as a string, is the later change to the file.
                "position": ev.position,
                "changed_at": ev.timestamp.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "event_id": ev.event_id,
                "event_type": ev.type.value,
                "status": change.status,
                "chunk_count": change.chunk_count,
                "embedded": change.embedded,
                "reused": change.reused,
                "error": change.error,
            },
        },
        separators=(",", ":"),
    )
    return [
        Delivery(
            delivery_id="dlv_" + hashlib.sha256(f"{msg}\0{s.id}".encode()).hexdigest()[:32],
            message_id=msg,
            workspace=ev.workspace,
            subscriber=s.id,
            url=s.url,
            type=change.kind,
            body=body,
            status=DeliveryStatus.PENDING,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
            file_id=ev.file_id,
            event_id=ev.event_id,
        )
        for s in subscribers
    ]
