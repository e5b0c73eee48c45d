"""Webhook bodies: the Standard Webhooks envelope (`type`, `timestamp`, `data`) validated into a `FileEvent`.

What a source may send lives here, on the write path; what an event *is* once accepted (`FileEvent`, its
status and position) is `stores.events`, which both paths share.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.errors import InvalidEventError
from stores.events import EventType, FileEvent, MetadataValue, position_key


class FileEventData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None = (
        None
    )
    file_id: Annotated[str, Field(min_length=1, max_length=512)]
    path: Annotated[str, Field(min_length=1, max_length=1024)]
    version: Annotated[int, Field(ge=0)] | None = None
    sequencer: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,64}$")] | None = None
    content_type: str | None = None
    content: str | None = None
    content_base64: str | None = None
    url: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("path must not contain NUL bytes")
        return v

    @model_validator(mode="after")
    def _one_content_source(self) -> FileEventData:
        given = [n for n in ("content", "content_base64", "url") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of content, content_base64 and url (got {', '.join(given)})")
        if self.content_base64 is not None:
            try:
                base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"content_base64 is not valid base64: {exc}") from exc
        return self


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["file.created", "file.updated", "file.deleted"]
    timestamp: datetime
    data: FileEventData


def parse_webhook_body(raw: bytes) -> WebhookBody:
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidEventError("body must be a JSON object with type, timestamp and data")
    try:
        return WebhookBody.model_validate(doc)
    except ValidationError as exc:
        raise InvalidEventError(_explain(exc)) from exc


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"]
        if err["type"] == "literal_error" and err["loc"] == ("type",):
            msg = f"unknown event type {err.get('input')!r}; expected file.created, file.updated or file.deleted"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def build_event(event_id: str, workspace: str, body: WebhookBody) -> FileEvent:
    d = body.data
    return FileEvent(
        event_id=event_id,
        workspace=workspace,
        type=EventType(body.type),
        file_id=d.file_id,
        path=d.path,
        position=position_key(version=d.version, sequencer=d.sequencer, timestamp=body.timestamp),
        timestamp=body.timestamp,
        version=d.version,
        content_type=d.content_type,
        content=d.content,
        content_base64=d.content_base64,
        url=d.url,
        metadata=d.metadata,
    )
