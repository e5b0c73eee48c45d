"""Signing webhook deliveries the way a Standard Webhooks sender does, with the reference library."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks.webhooks import Webhook

# A versioned event's default timestamp: version N changed N seconds after this, the way a sender whose
# clock agrees with its versions stamps them. Version-less events default to now.
VERSIONED_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def file_event(
    kind: str,
    file_id: str,
    *,
    path: str | None = None,
    content: str | None = None,
    version: int | None = None,
    workspace: str | None = "acme",
    content_type: str | None = "text/markdown",
    metadata: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {"file_id": file_id, "path": path or file_id}
    if workspace is not None:
        data["workspace"] = workspace
    if version is not None:
        data["version"] = version
    if content is not None:
        data["content"] = content
    if content_type is not None:
        data["content_type"] = content_type
    if metadata:
        data["metadata"] = metadata
    data.update(extra)
    if timestamp is None:
        timestamp = VERSIONED_EPOCH + timedelta(seconds=version) if version is not None else datetime.now(UTC)
    stamp = timestamp.isoformat().replace("+00:00", "Z")
    return {"type": f"file.{kind}", "timestamp": stamp, "data": data}


def sign(
    secret: str,
    body: dict[str, Any] | bytes | str,
    *,
    event_id: str | None = None,
    sent: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    event_id = event_id or f"msg_{uuid.uuid4().hex}"
    sent = sent or datetime.now(UTC)
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, sent, raw.decode()),
        "content-type": "application/json",
    }
    return raw, headers
