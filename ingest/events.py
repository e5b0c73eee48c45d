"""File events: what a webhook says happened to a file, and where it stands in that file's history.

A webhook body (Standard Webhooks envelope: `type`, `timestamp`, `data`) becomes a `FileEvent`. Each event
gets a `position`: a string that sorts in the order the source changed the file, so the worker can tell a
stale delivery from a fresh one whatever order they arrive in.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.errors import InvalidEventError

MetadataValue = str | int | float | bool | list[str]


class EventType(StrEnum):
    CREATED = "file.created"
    UPDATED = "file.updated"
    DELETED = "file.deleted"


class EventStatus(StrEnum):
    RECEIVED = "received"  # stored, not yet handed to the queue
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"  # gave up after the configured attempts; can be retried on demand
    SUPERSEDED = "superseded"  # older than what is already applied for the file: index untouched
    HELD = "held"  # a delete waiting for confirmation (mass-deletion brake)
    REJECTED = "rejected"  # signed, but invalid: refused with a 4xx, recorded with the reason, never queued


TERMINAL_STATUSES = frozenset({EventStatus.DONE, EventStatus.FAILED, EventStatus.SUPERSEDED, EventStatus.REJECTED})


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


class FileEvent(BaseModel):
    """One verified change to one file, as stored and queued."""

    event_id: str
    workspace: str
    type: EventType
    file_id: str
    path: str
    position: str
    timestamp: datetime
    version: int | None = None
    content_type: str | None = None
    content: str | None = None
    content_base64: str | None = None
    url: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    @property
    def group_key(self) -> str:
        """Events with the same key are applied one at a time, in order (an SQS FIFO message group)."""
        return f"{self.workspace}/{self.file_id}"

    def inline_bytes(self) -> bytes | None:
        if self.content is not None:
            return self.content.encode("utf-8")
        if self.content_base64 is not None:
            return base64.b64decode(self.content_base64)
        return None


def position_key(*, version: int | None, sequencer: str | None, timestamp: datetime) -> str:
    """A string whose order is the order of the changes to one file.

    The event's `version` wins when given, else the source's sequencer (S3's `sequencer` is a hex number),
    else the event timestamp. The prefixes make the kinds sort v > s > t, so an explicit version outranks
    a timestamp if a source ever mixes them for one file.
    """
    if version is not None:
        return f"v:{version:020d}"
    if sequencer is not None:
        return f"s:{sequencer.upper().lstrip('0').rjust(64, '0')}"
    ts = timestamp.astimezone(UTC) if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
    return f"t:{ts.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def describe_position(position: str) -> str:
    kind, _, value = position.partition(":")
    if kind == "v":
        return f"version {int(value)}"
    if kind == "s":
        return f"sequencer {value.lstrip('0') or '0'}"
    return f"timestamp {value}"


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
