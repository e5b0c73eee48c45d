"""The AWS state: events, the document registry and conversation sessions in DynamoDB.

The tables are the ones `serverless.yml` defines (its `resources` section is the schema; the tests create
their moto tables from it):

- events, key `event_id`: `workspace`, `file_id`, `group_key`, `status`, `kind`, `attempts`, `error`,
  `detail`, `confirmed`, `payload` (the `FileEvent` as JSON), `received_at` / `updated_at` (epoch seconds)
  and `expires_at` (the TTL attribute). Index `by_file` (group_key, received_at) lists a file's events,
  `by_status` (status, received_at) an event status.
- documents, key (`workspace`, `file_id`): the `DocumentRecord` fields; `metadata` as a JSON string, so
  values come back with their JSON types (DynamoDB numbers would come back as `Decimal`).
- sessions, key (`workspace`, `session_id`): the turns as JSON strings, `expires_at` (TTL).

Reads that decide something (`get_event`, `get_document`, `active_revisions`) are strongly consistent;
listings go through indexes, which DynamoDB keeps eventually consistent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from ingest.events import TERMINAL_STATUSES, EventStatus, EventType, FileEvent
from ingest.ports import DocumentRecord, DocumentStatus, EventRecord

if TYPE_CHECKING:
    from retrieval.sessions import Session, Turn

log = logging.getLogger(__name__)

# BatchGetItem takes at most 100 keys per call
# (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html).
BATCH_GET_KEYS = 100

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoSettings(Protocol):
    """What the adapters read from `app.settings.Settings` (ingest never imports app)."""

    dynamodb_events_table: str
    dynamodb_documents_table: str
    dynamodb_sessions_table: str
    event_retention_days: float


def default_client(service: str) -> Any:
    import boto3

    return boto3.session.Session().client(service)


def _item(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB's typed JSON; None means "no attribute" (what SQL's NULL meant)."""
    return {k: _serializer.serialize(v) for k, v in values.items() if v is not None}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _seconds(value: float) -> Decimal:
    """Epoch seconds to microseconds: enough to order events, exact in DynamoDB's decimal numbers."""
    return Decimal(f"{value:.6f}")


def _ts(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class DynamoStateStore:
    """`StateStore` on the events and documents tables. Thread-safe: boto3 clients are."""

    def __init__(
        self,
        client: Any,
        *,
        events_table: str,
        documents_table: str,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.client = client
        self.events_table = events_table
        self.documents_table = documents_table
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: DynamoSettings, *, client: Any | None = None) -> DynamoStateStore:
        return cls(
            client if client is not None else default_client("dynamodb"),
            events_table=settings.dynamodb_events_table,
            documents_table=settings.dynamodb_documents_table,
            retention=timedelta(days=settings.event_retention_days),
        )

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from self.client.get_paginator(operation).paginate(**kwargs)

    def _items(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self._pages(operation, **kwargs):
            for item in page.get("Items", []):
                yield _plain(item)

    # events -------------------------------------------------------------------------------------------
    @staticmethod
    def _event(values: dict[str, Any]) -> EventRecord:
        return EventRecord(
            event=FileEvent.model_validate_json(values["payload"]),
            status=EventStatus(values["status"]),
            received_at=_ts(values["received_at"]),
            updated_at=_ts(values["updated_at"]),
            attempts=int(values.get("attempts", 0)),
            error=values.get("error"),
            detail=values.get("detail"),
            confirmed=bool(values.get("confirmed", False)),
        )

    def _expiry(self, now: float) -> int:
        # TTL wants whole epoch seconds. Set only on terminal events, so a held delete or a queued event
        # never expires while it waits: the same rule as `SqliteStateStore.purge_events`.
        return int(now + self.retention.total_seconds())

    def add_event(self, event: FileEvent, status: EventStatus) -> tuple[EventRecord, bool]:
        now = time.time()
        values = {
            "event_id": event.event_id,
            "workspace": event.workspace,
            "file_id": event.file_id,
            "group_key": event.group_key,
            "status": status.value,
            "kind": event.type.value,
            "attempts": 0,
            "confirmed": False,
            "payload": event.model_dump_json(),
            "received_at": _seconds(now),
            "updated_at": _seconds(now),
            "expires_at": self._expiry(now) if status in TERMINAL_STATUSES else None,
        }
        # Two tries: the item that made the put fail can expire (TTL) before it is read back.
        for _ in range(2):
            try:
                self.client.put_item(
                    TableName=self.events_table,
                    Item=_item(values),
                    ConditionExpression="attribute_not_exists(event_id)",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return self._event(values), True
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                existing = exc.response.get("Item")
                if existing is not None:
                    return self._event(_plain(existing)), False
                record = self.get_event(event.event_id)
                if record is not None:
                    return record, False
        raise RuntimeError(f"event {event.event_id!r} neither stored nor readable")  # pragma: no cover

    def get_event(self, event_id: str) -> EventRecord | None:
        resp = self.client.get_item(TableName=self.events_table, Key=_item({"event_id": event_id}), ConsistentRead=True)
        item = resp.get("Item")
        return self._event(_plain(item)) if item else None

    def _update_event(
        self, event_id: str, sets: dict[str, Any], *, remove: Sequence[str] = (), add_attempts: int = 0
    ) -> EventRecord:
        names = {f"#{i}": name for i, name in enumerate([*sets, *remove])}
        by_name = {name: key for key, name in names.items()}
        parts = [f"{by_name[name]} = :{i}" for i, name in enumerate(sets)]
        values = {f":{i}": _serializer.serialize(value) for i, value in enumerate(sets.values())}
        if add_attempts:
            names["#attempts"], values[":inc"] = "attempts", _serializer.serialize(add_attempts)
            parts.append("#attempts = if_not_exists(#attempts, :zero) + :inc")
            values[":zero"] = _serializer.serialize(0)
        expression = "SET " + ", ".join(parts)
        if remove:
            expression += " REMOVE " + ", ".join(by_name[name] for name in remove)
        names["#key"] = "event_id"
        try:
            resp = self.client.update_item(
                TableName=self.events_table,
                Key=_item({"event_id": event_id}),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(#key)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                raise KeyError(event_id) from exc
            raise
        return self._event(_plain(resp["Attributes"]))

    def set_event_status(
        self,
        event_id: str,
        status: EventStatus,
        *,
        error: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
    ) -> EventRecord:
        now = time.time()
        sets: dict[str, Any] = {"status": status.value, "updated_at": _seconds(now)}
        remove: list[str] = []
        for name, value in (("error", error), ("detail", detail)):
            if value is None:
                remove.append(name)
            else:
                sets[name] = value
        if status in TERMINAL_STATUSES:
            sets["expires_at"] = self._expiry(now)
        else:
            remove.append("expires_at")
        return self._update_event(event_id, sets, remove=remove, add_attempts=1 if count_attempt else 0)

    def reset_for_retry(self, event_id: str, *, confirmed: bool = False) -> EventRecord:
        """Back to `queued` with a fresh attempt budget; `confirmed` only ever turns on."""
        sets: dict[str, Any] = {"status": EventStatus.QUEUED.value, "attempts": 0, "updated_at": _seconds(time.time())}
        if confirmed:
            sets["confirmed"] = True
        return self._update_event(event_id, sets, remove=["expires_at"])

    def count_recent_deletes(self, workspace: str, since: datetime) -> int:
        """Delete events of the workspace applied (`done`) since `since`.

        The `by_status` index is sorted by `received_at`, but an old delete can be applied late (held, then
        confirmed; retried), so the whole `done` partition is read and filtered: a cost that grows with the
        events of the retention window.
        """
        total = 0
        for page in self._pages(
            "query",
            TableName=self.events_table,
            IndexName="by_status",
            KeyConditionExpression="#s = :s",
            FilterExpression="#w = :w AND #k = :k AND #u >= :since",
            ExpressionAttributeNames={"#s": "status", "#w": "workspace", "#k": "kind", "#u": "updated_at"},
            ExpressionAttributeValues=_item(
                {
                    ":s": EventStatus.DONE.value,
                    ":w": workspace,
                    ":k": EventType.DELETED.value,
                    ":since": _seconds(since.timestamp()),
                }
            ),
            Select="COUNT",
        ):
            total += int(page.get("Count", 0))
        return total

    def list_events(
        self, workspace: str, *, status: EventStatus | None = None, file_id: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest first. A file's events come from `by_file`, a status from `by_status`; the rest is a scan."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        filters: list[str] = []
        if file_id is not None:
            # group_key is "<workspace>/<file_id>" and workspace names cannot contain "/": it names both.
            kwargs: dict[str, Any] = {
                "IndexName": "by_file",
                "KeyConditionExpression": "#g = :g",
                "ScanIndexForward": False,
            }
            names["#g"], values[":g"] = "group_key", f"{workspace}/{file_id}"
            if status is not None:
                filters.append("#s = :s")
                names["#s"], values[":s"] = "status", status.value
            operation = "query"
        elif status is not None:
            kwargs = {"IndexName": "by_status", "KeyConditionExpression": "#s = :s", "ScanIndexForward": False}
            names["#s"], values[":s"] = "status", status.value
            filters.append("#w = :w")
            names["#w"], values[":w"] = "workspace", workspace
            operation = "query"
        else:
            # No index has the workspace alone as its key; IAM grants Scan for this listing.
            kwargs, operation = {}, "scan"
            filters.append("#w = :w")
            names["#w"], values[":w"] = "workspace", workspace
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        found: list[dict[str, Any]] = []
        for item in self._items(
            operation,
            TableName=self.events_table,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=_item(values),
            **kwargs,
        ):
            found.append(item)
            # A query returns newest first, so it can stop; a scan is unordered and must read everything.
            if operation == "query" and len(found) >= limit:
                break
        found.sort(key=lambda v: (-float(v["received_at"]), v["event_id"]))
        return [self._event(v) for v in found[:limit]]

    def events_with_status(self, status: EventStatus, limit: int = 1000) -> list[EventRecord]:
        """Oldest first, across workspaces (the start-up sweep of `received` events)."""
        out: list[EventRecord] = []
        for item in self._items(
            "query",
            TableName=self.events_table,
            IndexName="by_status",
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_item({":s": status.value}),
        ):
            out.append(self._event(item))
            if len(out) >= limit:
                break
        return out

    def purge_events(self, older_than: datetime) -> int:
        """Nothing to do: the table's TTL on `expires_at` forgets terminal events (set when an event becomes
        done, superseded or failed, `event_retention_days` later). Returns 0, the number purged here."""
        return 0

    # documents ----------------------------------------------------------------------------------------
    @staticmethod
    def _document(values: dict[str, Any]) -> DocumentRecord:
        def opt_int(name: str) -> int | None:
            return int(values[name]) if values.get(name) is not None else None

        return DocumentRecord(
            workspace=values["workspace"],
            file_id=values["file_id"],
            path=values["path"],
            status=DocumentStatus(values["status"]),
            position=values.get("position"),
            revision=values.get("revision"),
            version=opt_int("version"),
            content_type=values.get("content_type"),
            chunk_count=int(values.get("chunk_count", 0)),
            embedded=int(values.get("embedded", 0)),
            reused=int(values.get("reused", 0)),
            last_event_id=values.get("last_event_id"),
            last_error=values.get("last_error"),
            metadata=json.loads(values.get("metadata") or "{}"),
            updated_at=_ts(values["updated_at"]) if values.get("updated_at") is not None else None,
        )

    def get_document(self, workspace: str, file_id: str) -> DocumentRecord | None:
        resp = self.client.get_item(
            TableName=self.documents_table,
            Key=_item({"workspace": workspace, "file_id": file_id}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return self._document(_plain(item)) if item else None

    def _workspace_documents(self, workspace: str, status: DocumentStatus | None, **extra: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.documents_table,
            "KeyConditionExpression": "#w = :w",
            "ExpressionAttributeNames": {"#w": "workspace"},
            "ExpressionAttributeValues": {":w": _serializer.serialize(workspace)},
            **extra,
        }
        if status is not None:
            kwargs["FilterExpression"] = "#s = :s"
            kwargs["ExpressionAttributeNames"]["#s"] = "status"
            kwargs["ExpressionAttributeValues"][":s"] = _serializer.serialize(status.value)
        return kwargs

    def list_documents(
        self, workspace: str, *, status: DocumentStatus | None = None, limit: int = 1000, offset: int = 0
    ) -> list[DocumentRecord]:
        """Ordered by path, then file id, like the SQLite store. The partition is sorted by file id, so the
        whole (filtered) partition is read to sort it."""
        docs = [self._document(v) for v in self._items("query", **self._workspace_documents(workspace, status))]
        docs.sort(key=lambda d: (d.path, d.file_id))
        return docs[offset : offset + limit]

    def count_documents(self, workspace: str, status: DocumentStatus) -> int:
        return sum(
            int(page.get("Count", 0))
            for page in self._pages("query", **self._workspace_documents(workspace, status, Select="COUNT"))
        )

    def switch_document(self, record: DocumentRecord) -> None:
        """One PutItem replaces the whole record: DynamoDB applies a single-item write atomically."""
        self.client.put_item(
            TableName=self.documents_table,
            Item=_item(
                {
                    "workspace": record.workspace,
                    "file_id": record.file_id,
                    "path": record.path,
                    "status": record.status.value,
                    "position": record.position,
                    "revision": record.revision,
                    "version": record.version,
                    "content_type": record.content_type,
                    "chunk_count": record.chunk_count,
                    "embedded": record.embedded,
                    "reused": record.reused,
                    "last_event_id": record.last_event_id,
                    "last_error": record.last_error,
                    "metadata": json.dumps(record.metadata),
                    "updated_at": _seconds(time.time()),
                }
            ),
        )

    def note_document_error(self, workspace: str, file_id: str, path: str, error: str) -> None:
        """Record that the latest event for a file failed, keeping whatever revision is active. One
        UpdateItem: it creates the record when the file has none, like the SQLite store's insert."""
        self.client.update_item(
            TableName=self.documents_table,
            Key=_item({"workspace": workspace, "file_id": file_id}),
            UpdateExpression=(
                "SET #s = :s, #e = :e, #u = :u, #p = if_not_exists(#p, :p), #c = if_not_exists(#c, :zero),"
                " #em = if_not_exists(#em, :zero), #r = if_not_exists(#r, :zero), #m = if_not_exists(#m, :m)"
            ),
            ExpressionAttributeNames={
                "#s": "status",
                "#e": "last_error",
                "#u": "updated_at",
                "#p": "path",
                "#c": "chunk_count",
                "#em": "embedded",
                "#r": "reused",
                "#m": "metadata",
            },
            ExpressionAttributeValues=_item(
                {
                    ":s": DocumentStatus.FAILED.value,
                    ":e": error,
                    ":u": _seconds(time.time()),
                    ":p": path,
                    ":zero": 0,
                    ":m": "{}",
                }
            ),
        )

    def active_revisions(self, workspace: str, file_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(dict.fromkeys(file_ids))
        for i in range(0, len(ids), BATCH_GET_KEYS):
            request: dict[str, Any] = {
                self.documents_table: {
                    "Keys": [_item({"workspace": workspace, "file_id": f}) for f in ids[i : i + BATCH_GET_KEYS]],
                    "ProjectionExpression": "#f, #r",
                    "ExpressionAttributeNames": {"#f": "file_id", "#r": "revision"},
                    "ConsistentRead": True,
                }
            }
            retries = 0
            while request:
                resp = self.client.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.documents_table, []):
                    values = _plain(item)
                    if values.get("revision") is not None:
                        out[values["file_id"]] = values["revision"]
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    # Throttled or over the response size: AWS asks for an exponential backoff.
                    retries += 1
                    time.sleep(min(1.0, 0.05 * 2**retries))
        return out

    def workspaces(self) -> list[str]:
        """Every workspace with a document or an event: a scan of both tables (IAM grants Scan for it)."""
        found: set[str] = set()
        for table in (self.documents_table, self.events_table):
            for item in self._items(
                "scan", TableName=table, ProjectionExpression="#w", ExpressionAttributeNames={"#w": "workspace"}
            ):
                found.add(item["workspace"])
        return sorted(found)

    def close(self) -> None:
        """Nothing to release: the boto3 client holds no connection that outlives a request."""


class DynamoSessionStore:
    """`retrieval.sessions.SessionStore` on the sessions table; sessions expire (TTL) `ttl` after their last
    turn. Turns are kept as JSON strings: citations carry floats, which DynamoDB numbers would turn into
    `Decimal`. An item holds at most 400 KB, so a very long conversation fails to grow rather than being cut."""

    def __init__(self, client: Any, *, table: str, ttl: timedelta = timedelta(days=30)) -> None:
        self.client = client
        self.table = table
        self.ttl = ttl

    @classmethod
    def from_settings(cls, settings: DynamoSettings, *, client: Any | None = None) -> DynamoSessionStore:
        agent = getattr(settings, "agent", None)
        days = float(getattr(agent, "session_ttl_days", 30.0))
        return cls(
            client if client is not None else default_client("dynamodb"),
            table=settings.dynamodb_sessions_table,
            ttl=timedelta(days=days),
        )

    @staticmethod
    def _session(values: dict[str, Any]) -> Session:
        from retrieval.sessions import Session, Turn

        return Session(
            workspace=values["workspace"],
            session_id=values["session_id"],
            turns=[Turn(**json.loads(t)) for t in values.get("turns", [])],
            created_at=_ts(values["created_at"]),
            updated_at=_ts(values["updated_at"]),
        )

    def get_session(self, workspace: str, session_id: str) -> Session | None:
        resp = self.client.get_item(
            TableName=self.table, Key=_item({"workspace": workspace, "session_id": session_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        if not item:
            return None
        values = _plain(item)
        # TTL deletes expired items within days, not at once: an expired session is already gone.
        if values.get("expires_at") is not None and float(values["expires_at"]) < time.time():
            return None
        return self._session(values)

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session:
        key = _item({"workspace": workspace, "session_id": session_id})
        for _ in range(2):
            now = time.time()
            try:
                # One UpdateItem appends atomically: two requests of one session never lose each other's turns.
                resp = self.client.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression=(
                        "SET #t = list_append(if_not_exists(#t, :empty), :new), #c = if_not_exists(#c, :now),"
                        " #u = :now, #x = :x"
                    ),
                    # An expired session that TTL has not deleted yet must not be continued.
                    ConditionExpression="attribute_not_exists(#x) OR #x >= :now",
                    ExpressionAttributeNames={
                        "#t": "turns",
                        "#c": "created_at",
                        "#u": "updated_at",
                        "#x": "expires_at",
                    },
                    ExpressionAttributeValues={
                        ":empty": {"L": []},
                        ":new": {"L": [{"S": json.dumps(asdict(t))} for t in turns]},
                        ":now": _serializer.serialize(_seconds(now)),
                        ":x": _serializer.serialize(int(now + self.ttl.total_seconds())),
                    },
                    ReturnValues="ALL_NEW",
                )
                return self._session(_plain(resp["Attributes"]))
            except ClientError as exc:
                if _error_code(exc) != "ConditionalCheckFailedException":
                    raise
                self.client.delete_item(TableName=self.table, Key=key)
        raise RuntimeError(f"session {session_id!r} could not be written")  # pragma: no cover

    def delete_session(self, workspace: str, session_id: str) -> bool:
        resp = self.client.delete_item(
            TableName=self.table,
            Key=_item({"workspace": workspace, "session_id": session_id}),
            ReturnValues="ALL_OLD",
        )
        return bool(resp.get("Attributes"))
