"""File events: what happened to a file, and where it stands in that file's history.

A verified webhook body (`ingest.webhook_body`) becomes a `FileEvent`, the record both paths share. Events
are keyed by (workspace, event id): one workspace's `webhook-id`s never collide with another's.

Each event has a `position`, a string whose byte order is the order rule of docs/consistency.md: the later
`timestamp` wins; at the same instant a delete beats an update beats a create; then the higher version (or
S3 sequencer); then the greater event id. Every event gets one, whatever keys it carries, so one rule orders
every pair of events of a file and the final state is the maximum of the events delivered, whatever order
they came in. The stores compare positions as strings (SQLite's BINARY collation, DynamoDB's UTF-8 byte
order) for the compare-and-set that makes a revision searchable.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator

MetadataValue = str | int | float | bool | list[str]

# The largest version a store keeps exactly: SQLite INTEGER and the 19 digits of the position are 64-bit.
MAX_VERSION = 2**63 - 1
# S3 sequencers are hex strings; AWS does not give a maximum length, 64 digits leaves ample room.
MAX_SEQUENCER_DIGITS = 64


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
# Statuses of an event that may still change the index: reconcile leaves such files alone.
IN_FLIGHT_STATUSES = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING)


@dataclass(frozen=True, slots=True)
class EventKey:
    """What identifies an event: the workspace and the sender's `webhook-id` (or a derived id)."""

    workspace: str
    event_id: str

    def __str__(self) -> str:
        return f"{self.workspace}/{self.event_id}"


class FileEvent(BaseModel):
    """One verified change to one file, as stored and queued."""

    event_id: str
    workspace: str
    type: EventType
    file_id: str
    path: str
    timestamp: datetime
    version: int | None = None
    sequencer: str | None = None
    content_type: str | None = None
    content: str | None = None
    content_base64: str | None = None
    url: str | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    # The source only says the file may have changed (S3 removed one version of an object): the worker
    # reads the file's current state, and a file that is no longer there is a delete.
    resync: bool = False

    @model_validator(mode="before")
    @classmethod
    def _drop_stored_position(cls, data: Any) -> Any:
        # Payloads stored before positions were derived carry one; it is recomputed from the fields.
        if isinstance(data, dict) and "position" in data:
            data = {k: v for k, v in data.items() if k != "position"}
        return data

    @property
    def key(self) -> EventKey:
        return EventKey(self.workspace, self.event_id)

    @property
    def group_key(self) -> str:
        """Events with the same key are applied one at a time, in order (an SQS FIFO message group)."""
        return f"{self.workspace}/{self.file_id}"

    @property
    def position(self) -> str:
        return position_key(
            timestamp=self.timestamp,
            kind=self.type,
            version=self.version,
            sequencer=self.sequencer,
            event_id=self.event_id,
        )

    def inline_bytes(self) -> bytes | None:
        if self.content is not None:
            return self.content.encode("utf-8")
        if self.content_base64 is not None:
            return base64.b64decode(self.content_base64)
        return None


# the order rule ------------------------------------------------------------------------------------------
_KIND_RANK = {EventType.CREATED: "1", EventType.UPDATED: "2", EventType.DELETED: "3"}
_KIND_NAME = {"1": "create", "2": "update", "3": "delete"}


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _stamp(ts: datetime) -> str:
    t = _utc(ts)
    # Written by hand: strftime's %Y does not zero-pad years before 1000 on every platform.
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}.{t.microsecond:06d}Z"


def sequencer_sort_key(sequencer: str) -> str:
    """S3's rule for comparing sequencers of one object key: "The sequencers can be of different lengths.
    So, to compare these values, first right pad the shorter value with zeros, and then do a lexicographical
    comparison." (Amazon S3 User Guide, "Event message structure", the `sequencer` key:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html). Upper case,
    so hex letters sort after digits as their values do."""
    return sequencer.upper().ljust(MAX_SEQUENCER_DIGITS, "0")


def position_key(
    *, timestamp: datetime, kind: EventType, version: int | None, sequencer: str | None, event_id: str
) -> str:
    """`timestamp|kind|counter|event id`, each part fixed-width except the last, so byte order is the rule:

    - the timestamp to the microsecond, UTC;
    - the kind: 1 create < 2 update < 3 delete (only decides between events of the same instant);
    - the counter: `-` none < `s` + the right-padded S3 sequencer < `v` + the 19-digit version (only
      decides between events of the same instant and kind);
    - the event id: two distinct events of one workspace never share a position.
    """
    if version is not None:
        if not 0 <= version <= MAX_VERSION:
            raise ValueError(f"version must be between 0 and {MAX_VERSION}")
        counter = f"v{version:019d}"
    elif sequencer is not None:
        if not 0 < len(sequencer) <= MAX_SEQUENCER_DIGITS:
            raise ValueError(f"a sequencer has 1 to {MAX_SEQUENCER_DIGITS} hex digits")
        counter = "s" + sequencer_sort_key(sequencer)
    else:
        counter = "-"
    return f"{_stamp(timestamp)}|{_KIND_RANK[kind]}|{counter}|{event_id}"


def is_legacy_position(position: str) -> bool:
    """Positions written before this rule (`v:...`, `s:...`, `t:...`) start with a letter; the rule's start
    with a year. A legacy position is older than any position of the rule (the next event replaces it)."""
    return position[:1].isalpha()


def position_is_newer(candidate: str, applied: str | None) -> bool:
    """Whether an event at `candidate` replaces what is applied at `applied` (strictly newer)."""
    if applied is None:
        return True
    if is_legacy_position(candidate) != is_legacy_position(applied):
        return is_legacy_position(applied)
    return candidate > applied


@dataclass(frozen=True, slots=True)
class PositionParts:
    stamp: str
    kind: str
    counter: str
    event_id: str

    @property
    def timestamp(self) -> str:
        s = self.stamp
        return f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:22]}Z".replace(".000000Z", "Z")

    @property
    def version(self) -> int | None:
        return int(self.counter[1:]) if self.counter.startswith("v") else None

    @property
    def counter_text(self) -> str | None:
        if self.counter.startswith("v"):
            return f"version {int(self.counter[1:])}"
        if self.counter.startswith("s"):
            return f"sequencer {self.counter[1:].rstrip('0') or '0'}"
        return None

    @property
    def kind_name(self) -> str:
        return _KIND_NAME.get(self.kind, "change")


def parse_position(position: str) -> PositionParts | None:
    if is_legacy_position(position):
        return None
    stamp, kind, counter, event_id = position.split("|", 3)
    return PositionParts(stamp, kind, counter, event_id)


def describe_position(position: str) -> str:
    parts = parse_position(position)
    if parts is None:
        return f"position {position} (recorded before the current order rule)"
    counter = f", {parts.counter_text}" if parts.counter_text else ""
    return f"the {parts.kind_name} of {parts.timestamp}{counter} (event {parts.event_id})"


def explain_order(newer: str, older: str) -> str:
    """Which rule of docs/consistency.md puts `newer` after `older`, in words."""
    a, b = parse_position(newer), parse_position(older)
    if b is None:
        return "the applied position predates the current order rule"
    assert a is not None
    if a.stamp != b.stamp:
        why = f"its timestamp {a.timestamp} is later than {b.timestamp}"
        va, vb = a.version, b.version
        if va is not None and vb is not None and va < vb:
            why += (
                f"; the timestamp decides although version {va} is lower than version {vb} (a counter restarted"
                " after a delete, or versions that disagree with the clock)"
            )
        elif a.counter[:1] == b.counter[:1] == "s" and a.counter < b.counter:
            why += "; the timestamp decides although the sequencer is lower (sequencer and clock disagree)"
        return why
    if a.kind != b.kind:
        return f"both happened at {a.timestamp}; at the same instant a {a.kind_name} wins over a {b.kind_name}"
    if a.counter != b.counter:
        if a.counter_text and b.counter_text and a.counter[:1] == b.counter[:1]:
            return f"both are {a.kind_name}s at {a.timestamp}; {a.counter_text} is higher than {b.counter_text}"
        return (
            f"both are {a.kind_name}s at {a.timestamp}; {a.counter_text or 'no counter'} sorts after"
            f" {b.counter_text or 'no counter'} (a tie that only the kinds of counter break)"
        )
    return (
        f"both are {a.kind_name}s at {a.timestamp} with the same counter; the tie is broken by the event id"
        f" ({a.event_id!r} after {b.event_id!r})"
    )
