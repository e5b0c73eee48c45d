"""Webhook bodies: the Standard Webhooks envelope (`type`, `timestamp`, `data`) validated into a `FileEvent`.

What a source may send lives here, on the write path; what an event *is* once accepted (`FileEvent`, its
status and position) is `stores.events`, which both paths share.

Every part of a body is bounded before anything is stored: JSON nesting depth, strings that are not
Unicode (a lone surrogate escape such as `"\\ud800"`), versions beyond what the stores keep exactly (2^63),
timestamps in the future, and metadata (copied into every chunk's index payload) by key count, key and
value length and total size. A violation is a 422 that names the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.errors import InvalidEventError
from stores.events import MAX_SEQUENCER_DIGITS, MAX_VERSION, EventType, FileEvent, MetadataValue

# Metadata keys become payload paths in the index (`metadata.<key>`) and filter keys in queries: a dot or
# a bracket would be read as a nested path there.
METADATA_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Bounds on what one webhook body may carry (settings: `EVENTRAG_METADATA__*`, the tolerance)."""

    max_metadata_keys: int = 32
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 1024
    max_metadata_list_items: int = 64
    max_metadata_bytes: int = 8192
    max_depth: int = 32  # deeper than any envelope needs; json.loads itself gives up near 1,000
    future_tolerance_seconds: float = 300.0  # how far ahead of this server's clock `timestamp` may be


class FileEventData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None = (
        None
    )
    file_id: Annotated[str, Field(min_length=1, max_length=512)]
    path: Annotated[str, Field(min_length=1, max_length=1024)]
    version: Annotated[int, Field(ge=0, le=MAX_VERSION)] | None = None
    sequencer: Annotated[str, Field(pattern=rf"^[0-9A-Fa-f]{{1,{MAX_SEQUENCER_DIGITS}}}$")] | None = None
    content_type: Annotated[str, Field(max_length=255)] | None = None
    content: str | None = None
    content_base64: str | None = None
    url: Annotated[str, Field(max_length=4096)] | None = None
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
    timestamp: datetime = Field(description="when the change happened at the source (ISO 8601)")
    data: FileEventData


def check_json_structure(doc: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and strings (or keys) that are not valid Unicode: a lone
    surrogate escape parses as JSON but cannot be encoded as UTF-8 anywhere downstream."""
    stack: list[tuple[Any, str, int]] = [(doc, "body", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, where)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > max_depth:
            raise InvalidEventError(f"{where}: JSON nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, f"{where} key")
                stack.append((v, f"{where}.{k}" if where != "body" else k, depth + 1))
        else:
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise InvalidEventError(
            f"{where}: contains a lone surrogate escape (\\u{ord(bad[0]):04x}) at character {exc.start}: not"
            " valid Unicode; send the text as valid UTF-8"
        ) from exc


def check_metadata(metadata: dict[str, MetadataValue], limits: BodyLimits) -> None:
    if len(metadata) > limits.max_metadata_keys:
        raise InvalidEventError(
            f"data.metadata: {len(metadata)} keys; at most {limits.max_metadata_keys} are allowed"
            " (EVENTRAG_METADATA__MAX_KEYS)"
        )
    for key, value in metadata.items():
        if len(key) > limits.max_metadata_key_chars or not METADATA_KEY.match(key):
            raise InvalidEventError(
                f"data.metadata: key {key[:80]!r} must be 1-{limits.max_metadata_key_chars} letters, digits,"
                " '_' or '-' (it becomes a filter name)"
            )
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > limits.max_metadata_list_items:
            raise InvalidEventError(
                f"data.metadata.{key}: a list of {len(value)} values; at most {limits.max_metadata_list_items}"
            )
        for item in items:
            if isinstance(item, str) and len(item) > limits.max_metadata_value_chars:
                raise InvalidEventError(
                    f"data.metadata.{key}: a value of {len(item)} characters; at most"
                    f" {limits.max_metadata_value_chars} (EVENTRAG_METADATA__MAX_VALUE_CHARS)"
                )
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > limits.max_metadata_bytes:
        raise InvalidEventError(
            f"data.metadata: {size} bytes as JSON; at most {limits.max_metadata_bytes} (EVENTRAG_METADATA__MAX_BYTES):"
            " metadata is copied into every chunk of the file"
        )


def parse_webhook_body(raw: bytes, limits: BodyLimits | None = None, *, now: datetime | None = None) -> WebhookBody:
    limits = limits or BodyLimits()
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidEventError(f"body: JSON nested deeper than {limits.max_depth} levels") from exc
    check_json_structure(doc, limits.max_depth)
    if not isinstance(doc, dict):
        raise InvalidEventError("body must be a JSON object with type, timestamp and data")
    try:
        body = WebhookBody.model_validate(doc)
    except ValidationError as exc:
        raise InvalidEventError(_explain(exc)) from exc
    check_metadata(body.data.metadata, limits)
    stamp = body.timestamp if body.timestamp.tzinfo else body.timestamp.replace(tzinfo=UTC)
    ahead = stamp - (now or datetime.now(UTC))
    if ahead > timedelta(seconds=limits.future_tolerance_seconds):
        # The timestamp orders a file's events: one from the future would win over every real change after it.
        raise InvalidEventError(
            f"timestamp {body.timestamp.isoformat()} is {int(ahead.total_seconds())} s in the future (more than"
            f" the {limits.future_tolerance_seconds:.0f} s tolerance); check the sender's clock"
        )
    return body


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"]
        if err["type"] == "literal_error" and err["loc"] == ("type",):
            msg = f"unknown event type {err.get('input')!r}; expected file.created, file.updated or file.deleted"
        elif err["loc"] == ("data", "version") and err["type"] == "less_than_equal":
            msg = f"versions must be below 2^63 ({MAX_VERSION} at most): larger ones cannot be stored exactly"
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
        timestamp=body.timestamp,
        version=d.version,
        sequencer=d.sequencer,
        content_type=d.content_type,
        content=d.content,
        content_base64=d.content_base64,
        url=d.url,
        metadata=d.metadata,
    )
