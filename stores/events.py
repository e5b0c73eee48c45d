"""File events: what happened to a file, and where it stands in that file's history.

A verified webhook body (`ingest.webhook_body`) becomes a `FileEvent`, the record both paths share. Each
event gets a `position`: a string that sorts in the order the source changed the file, so the worker can
tell a stale delivery from a fresh one whatever order they arrive in.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

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
