"""The events table: deliveries deduplicated by (workspace, event id), their status, attempts and detail.

Key (`workspace`, `event_id`): one workspace's webhook ids never collide with another's. Attributes:
`file_id`, `group_key`, `status`, `kind`, `attempts`, `error`, `detail`, `confirmed`, `payload` (the
`FileEvent` as JSON), `received_at` / `updated_at` (epoch seconds) and `expires_at` (the TTL attribute).
Index `by_file` (group_key, received_at) lists a file's events, `by_status` (status, received_at) an event
status. `get_event` reads strongly consistent; listings go through the indexes, which DynamoDB keeps
eventually consistent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import DynamoTable, error_code, from_dynamo, seconds, serializer, to_dynamo, ts
from stores.dynamodb.outbox import add_deliveries, put_delivery_args
from stores.events import TERMINAL_STATUSES, EventStatus, EventType, FileEvent
from stores.outbox import Delivery
from stores.ports import EventRecord


class DynamoEvents(DynamoTable):
    """The event half of `DynamoStateStore`."""

    events_table: str
    outbox_table: str
    retention: timedelta

    @staticmethod
    def _event(values: dict[str, Any]) -> EventRecord:
        return EventRecord(
            event=FileEvent.model_validate_json(values["payload"]),
            status=EventStatus(values["status"]),
            received_at=ts(values["received_at"]),
            updated_at=ts(values["updated_at"]),
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
            "received_at": seconds(now),
            "updated_at": seconds(now),
            "expires_at": self._expiry(now) if status in TERMINAL_STATUSES else None,
            # The key of the sparse `recent_deletes` index: delete events only.
            "delete_workspace": event.workspace if event.type is EventType.DELETED else None,
        }
        # A rejected delivery never swallows a later valid one with the same id: it is replaced.
        condition = "attribute_not_exists(event_id)"
        names: dict[str, str] = {}
        condition_values: dict[str, Any] = {}
        if status is not EventStatus.REJECTED:
            condition += " OR #s = :rejected"
            names["#s"] = "status"
            condition_values[":rejected"] = serializer.serialize(EventStatus.REJECTED.value)
        extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        if condition_values:
            extra["ExpressionAttributeValues"] = condition_values
        # Two tries: the item that made the put fail can expire (TTL) before it is read back.
        for _ in range(2):
            try:
                self.client.put_item(
                    TableName=self.events_table,
                    Item=to_dynamo(values),
                    ConditionExpression=condition,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **extra,
                )
                return self._event(values), True
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                existing = exc.response.get("Item")
                if existing is not None:
                    return self._event(from_dynamo(existing)), False
                record = self.get_event(event.workspace, event.event_id)
                if record is not None:
                    return record, False
        raise RuntimeError(f"event {event.event_id!r} neither stored nor readable")  # pragma: no cover

    def get_event(self, workspace: str, event_id: str) -> EventRecord | None:
        resp = self.client.get_item(
            TableName=self.events_table,
            Key=to_dynamo({"workspace": workspace, "event_id": event_id}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return self._event(from_dynamo(item)) if item else None

    def _update_args(
        self,
        workspace: str,
        event_id: str,
        sets: dict[str, Any],
        *,
        remove: Sequence[str] = (),
        add_attempts: int = 0,
    ) -> dict[str, Any]:
        names = {f"#{i}": name for i, name in enumerate([*sets, *remove])}
        by_name = {name: key for key, name in names.items()}
        parts = [f"{by_name[name]} = :{i}" for i, name in enumerate(sets)]
        values = {f":{i}": serializer.serialize(value) for i, value in enumerate(sets.values())}
        if add_attempts:
            names["#attempts"], values[":inc"] = "attempts", serializer.serialize(add_attempts)
            parts.append("#attempts = if_not_exists(#attempts, :zero) + :inc")
            values[":zero"] = serializer.serialize(0)
        expression = "SET " + ", ".join(parts)
        if remove:
            expression += " REMOVE " + ", ".join(by_name[name] for name in remove)
        names["#key"] = "event_id"
        return {
            "TableName": self.events_table,
            "Key": to_dynamo({"workspace": workspace, "event_id": event_id}),
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_exists(#key)",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _update_event(
        self,
        workspace: str,
        event_id: str,
        sets: dict[str, Any],
        *,
        remove: Sequence[str] = (),
        add_attempts: int = 0,
    ) -> EventRecord:
        args = self._update_args(workspace, event_id, sets, remove=remove, add_attempts=add_attempts)
        try:
            resp = self.client.update_item(**args, ReturnValues="ALL_NEW")
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise KeyError(event_id) from exc
            raise
        return self._event(from_dynamo(resp["Attributes"]))

    def set_event_status(
        self,
        workspace: str,
        event_id: str,
        status: EventStatus,
        *,
        error: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
        outbox: Sequence[Delivery] = (),
    ) -> EventRecord:
        now = time.time()
        sets: dict[str, Any] = {"status": status.value, "updated_at": seconds(now)}
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
        attempts = 1 if count_attempt else 0
        if outbox:
            return self._update_with_outbox(workspace, event_id, sets, remove, attempts, outbox)
        return self._update_event(workspace, event_id, sets, remove=remove, add_attempts=attempts)

    def _update_with_outbox(
        self,
        workspace: str,
        event_id: str,
        sets: dict[str, Any],
        remove: list[str],
        add_attempts: int,
        outbox: Sequence[Delivery],
    ) -> EventRecord:
        """The status and the deliveries in one TransactWriteItems (all or nothing, at most 100 items). A
        delivery already there (a retried write whose first try went through) is kept as it is."""
        update = self._update_args(workspace, event_id, sets, remove=remove, add_attempts=add_attempts)
        puts = [put_delivery_args(self.outbox_table, d) for d in outbox]
        try:
            self.client.transact_write_items(TransactItems=[{"Update": update}, *({"Put": p} for p in puts)])
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise KeyError(event_id) from exc
            if "ConditionalCheckFailed" not in reasons[1:]:
                raise
            # Some deliveries exist already: write the status, then the missing deliveries alone.
            self._update_event(workspace, event_id, sets, remove=remove, add_attempts=add_attempts)
            add_deliveries(self.client, self.outbox_table, outbox)
        record = self.get_event(workspace, event_id)
        if record is None:  # pragma: no cover - it was just updated
            raise KeyError(event_id)
        return record

    def reset_for_retry(self, workspace: str, event_id: str, *, confirmed: bool = False) -> EventRecord:
        """Back to `queued` with a fresh attempt budget; `confirmed` only ever turns on."""
        sets: dict[str, Any] = {"status": EventStatus.QUEUED.value, "attempts": 0, "updated_at": seconds(time.time())}
        if confirmed:
            sets["confirmed"] = True
        return self._update_event(workspace, event_id, sets, remove=["expires_at"])

    def count_recent_deletes(self, workspace: str, since: datetime) -> int:
        """Delete events of the workspace applied (`done`) since `since`: the workspace's delete events
        changed since then, from the sparse `recent_deletes` index (delete events only, sorted by
        `updated_at`), filtered to `done`. Delete events stored before that index existed are not in it:
        for one brake window after the upgrade, the brake counts only the deletes received since. While
        DynamoDB still builds the index (CloudFormation does not wait for it), the count is read the old
        way, through `by_status`."""
        names = {"#u": "updated_at", "#s": "status"}
        values = {":w": workspace, ":since": seconds(since.timestamp()), ":s": EventStatus.DONE.value}
        try:
            return self._count(
                IndexName="recent_deletes",
                KeyConditionExpression="#d = :w AND #u >= :since",
                FilterExpression="#s = :s",
                ExpressionAttributeNames={**names, "#d": "delete_workspace"},
                ExpressionAttributeValues=to_dynamo(values),
            )
        except ClientError as exc:
            # DynamoDB says ValidationException for an index missing or backfilling (moto: ResourceNotFound).
            if error_code(exc) not in ("ValidationException", "ResourceNotFoundException"):
                raise
        # `by_status` is sorted by `received_at`, but an old delete can be applied late (held, then
        # confirmed; retried), so the whole `done` partition is read and filtered.
        return self._count(
            IndexName="by_status",
            KeyConditionExpression="#s = :s",
            FilterExpression="#w = :w AND #k = :k AND #u >= :since",
            ExpressionAttributeNames={**names, "#w": "workspace", "#k": "kind"},
            ExpressionAttributeValues=to_dynamo({**values, ":k": EventType.DELETED.value}),
        )

    def _count(self, **query: Any) -> int:
        pages = self._pages("query", TableName=self.events_table, Select="COUNT", **query)
        return sum(int(page.get("Count", 0)) for page in pages)

    def list_events(
        self, workspace: str, *, status: EventStatus | None = None, file_id: str | None = None, limit: int = 100
    ) -> list[EventRecord]:
        """Newest first. A file's events come from `by_file`, a status from `by_status`, the rest from the
        workspace's partition of the table."""
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
            # The table's partition key is the workspace; the partition is sorted by event id, not by time.
            kwargs, operation = {"KeyConditionExpression": "#w = :w"}, "query_unordered"
            names["#w"], values[":w"] = "workspace", workspace
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        found: list[dict[str, Any]] = []
        for item in self._items(
            "query",
            TableName=self.events_table,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo(values),
            **kwargs,
        ):
            found.append(item)
            # An index query returns newest first, so it can stop; the partition is unordered and read whole.
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
            ExpressionAttributeValues=to_dynamo({":s": status.value}),
        ):
            out.append(self._event(item))
            if len(out) >= limit:
                break
        return out

    def purge_events(self, older_than: datetime) -> int:
        """Nothing to do: the table's TTL on `expires_at` forgets terminal events (set when an event becomes
        done, superseded or failed, `event_retention_days` later). Returns 0, the number purged here."""
        return 0
