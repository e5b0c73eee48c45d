"""`OutboxStore` on the outbox table: key `delivery_id`, the `Delivery` fields, times as epoch seconds.

Index `by_workspace` (workspace, created_at) lists a workspace's deliveries newest first; index `due`
(due, next_attempt_at) is sparse: `due` = "pending" exists only while a delivery waits, so the relay's
sweep reads exactly the waiting ones, oldest due first. Delivered and failed deliveries get `expires_at`
(the table's TTL attribute) `retention` later, so the table forgets them as SQLite's `purge` does. The
worker writes deliveries in the same TransactWriteItems that settles their event
(`DynamoEvents.set_event_status`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import DynamoTable, error_code, from_dynamo, seconds, to_dynamo, ts
from stores.outbox import Delivery, DeliveryAttempt, DeliveryStatus, OutboundType
from stores.paging import Page, cursor_number, decode_cursor, encode_cursor

PENDING = DeliveryStatus.PENDING.value


def _item(d: Delivery) -> dict[str, Any]:
    return to_dynamo(
        {
            "delivery_id": d.delivery_id,
            "message_id": d.message_id,
            "workspace": d.workspace,
            "subscriber": d.subscriber,
            "url": d.url,
            "type": d.type.value,
            "body": d.body,
            "status": d.status.value,
            "due": PENDING if d.status is DeliveryStatus.PENDING else None,
            "attempts": d.attempts,
            "next_attempt_at": seconds(d.next_attempt_at.timestamp()),
            "last_status": d.last_status,
            "last_response": d.last_response,
            "last_error": d.last_error,
            "file_id": d.file_id,
            "event_id": d.event_id,
            "created_at": seconds(d.created_at.timestamp()),
            "updated_at": seconds(d.updated_at.timestamp()),
        }
    )


def put_delivery_args(table: str, d: Delivery) -> dict[str, Any]:
    """A conditional put (never overwrites a delivery already written), for PutItem or a transaction."""
    return {"TableName": table, "Item": _item(d), "ConditionExpression": "attribute_not_exists(delivery_id)"}


def add_deliveries(client: Any, table: str, deliveries: Sequence[Delivery]) -> None:
    for d in deliveries:
        try:
            client.put_item(**put_delivery_args(table, d))
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise


class DynamoOutboxStore(DynamoTable):
    def __init__(self, client: Any, *, table: str, retention: timedelta = timedelta(days=7)) -> None:
        self.client = client
        self.table = table
        self.retention = retention

    @staticmethod
    def _delivery(v: dict[str, Any]) -> Delivery:
        def opt_int(name: str) -> int | None:
            return int(v[name]) if v.get(name) is not None else None

        return Delivery(
            delivery_id=v["delivery_id"],
            message_id=v["message_id"],
            workspace=v["workspace"],
            subscriber=v["subscriber"],
            url=v["url"],
            type=OutboundType(v["type"]),
            body=v["body"],
            status=DeliveryStatus(v["status"]),
            created_at=ts(v["created_at"]),
            updated_at=ts(v["updated_at"]),
            next_attempt_at=ts(v["next_attempt_at"]),
            attempts=int(v.get("attempts", 0)),
            last_status=opt_int("last_status"),
            last_response=v.get("last_response"),
            last_error=v.get("last_error"),
            delivered_at=ts(v["delivered_at"]) if v.get("delivered_at") is not None else None,
            file_id=v.get("file_id"),
            event_id=v.get("event_id"),
        )

    def add_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        add_deliveries(self.client, self.table, deliveries)

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_dynamo({"delivery_id": delivery_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return self._delivery(from_dynamo(item)) if item else None

    def _due_query(self, now: datetime, **extra: Any) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "IndexName": "due",
            "KeyConditionExpression": "#d = :d AND #n <= :now",
            "ExpressionAttributeNames": {"#d": "due", "#n": "next_attempt_at"},
            "ExpressionAttributeValues": to_dynamo({":d": PENDING, ":now": seconds(now.timestamp())}),
            **extra,
        }

    def due_deliveries(self, now: datetime, limit: int = 100) -> list[Delivery]:
        out: list[Delivery] = []
        for item in self._items("query", **self._due_query(now)):
            # The index is eventually consistent: the table has the truth.
            d = self.get_delivery(item["delivery_id"])
            if d is not None and d.status is DeliveryStatus.PENDING and d.next_attempt_at <= now:
                out.append(d)
            if len(out) >= limit:
                break
        return out

    def claim(self, delivery_id: str, now: datetime, lease_seconds: float) -> Delivery | None:
        try:
            resp = self.client.update_item(
                TableName=self.table,
                Key=to_dynamo({"delivery_id": delivery_id}),
                UpdateExpression="SET #n = :lease, #u = :now",
                ConditionExpression="#s = :pending AND #n <= :now",
                ExpressionAttributeNames={"#n": "next_attempt_at", "#u": "updated_at", "#s": "status"},
                ExpressionAttributeValues=to_dynamo(
                    {
                        ":lease": seconds(now.timestamp() + lease_seconds),
                        ":now": seconds(now.timestamp()),
                        ":pending": PENDING,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return self._delivery(from_dynamo(resp["Attributes"]))

    def record_attempt(self, delivery_id: str, attempt: DeliveryAttempt) -> Delivery:
        now = time.time()
        sets: dict[str, Any] = {
            "status": attempt.status.value,
            "next_attempt_at": seconds(attempt.next_attempt_at.timestamp()),
            "updated_at": seconds(now),
        }
        remove = []
        for name, value in (
            ("last_status", attempt.last_status),
            ("last_response", attempt.last_response),
            ("last_error", attempt.last_error),
        ):
            if value is None:
                remove.append(name)
            else:
                sets[name] = value
        if attempt.status is DeliveryStatus.PENDING:
            sets["due"] = PENDING
        else:
            remove.append("due")
            sets["expires_at"] = int(now + self.retention.total_seconds())
        if attempt.status is DeliveryStatus.DELIVERED:
            sets["delivered_at"] = seconds(now)
        names = {f"#{i}": k for i, k in enumerate([*sets, *remove])}
        key_of = {k: n for n, k in names.items()}
        expression = "SET " + ", ".join(f"{key_of[k]} = :{i}" for i, k in enumerate(sets))
        expression += ", #attempts = if_not_exists(#attempts, :zero) + :one"
        if remove:
            expression += " REMOVE " + ", ".join(key_of[k] for k in remove)
        values = {f":{i}": v for i, v in enumerate(sets.values())} | {":zero": 0, ":one": 1}
        try:
            resp = self.client.update_item(
                TableName=self.table,
                Key=to_dynamo({"delivery_id": delivery_id}),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(delivery_id)",
                ExpressionAttributeNames={**names, "#attempts": "attempts"},
                ExpressionAttributeValues=to_dynamo(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise KeyError(delivery_id) from exc
            raise
        return self._delivery(from_dynamo(resp["Attributes"]))

    def _workspace_query(self, workspace: str, status: DeliveryStatus | None, **extra: Any) -> dict[str, Any]:
        names = {"#w": "workspace"}
        values: dict[str, Any] = {":w": workspace}
        kwargs: dict[str, Any] = {}
        if status is not None:
            kwargs["FilterExpression"] = "#s = :s"
            names["#s"], values[":s"] = "status", status.value
        return {
            "TableName": self.table,
            "IndexName": "by_workspace",
            "KeyConditionExpression": "#w = :w",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_dynamo(values),
            **kwargs,
            **extra,
        }

    def list_deliveries(
        self,
        workspace: str,
        *,
        status: DeliveryStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Delivery]:
        total = sum(
            int(p.get("Count", 0))
            for p in self._pages("query", **self._workspace_query(workspace, status, Select="COUNT"))
        )
        extra: dict[str, Any] = {"ScanIndexForward": False}
        if cursor is not None:
            created, last_id = decode_cursor("deliveries", workspace, cursor, 2)
            extra["ExclusiveStartKey"] = to_dynamo(
                {"workspace": workspace, "created_at": cursor_number(created), "delivery_id": str(last_id)}
            )
        found: list[dict[str, Any]] = []
        for item in self._items("query", **self._workspace_query(workspace, status, **extra)):
            found.append(item)
            if len(found) > limit:
                break
        page = found[:limit]
        next_cursor = None
        if len(found) > limit:
            next_cursor = encode_cursor("deliveries", workspace, [str(page[-1]["created_at"]), page[-1]["delivery_id"]])
        return Page([self._delivery(v) for v in page], total, next_cursor)

    def delivery_counts(self, workspace: str) -> dict[str, int]:
        counts = {s.value: 0 for s in DeliveryStatus}
        for v in self._items(
            "query",
            TableName=self.table,
            IndexName="by_workspace",
            KeyConditionExpression="#w = :w",
            ProjectionExpression="#st",
            ExpressionAttributeNames={"#w": "workspace", "#st": "status"},
            ExpressionAttributeValues=to_dynamo({":w": workspace}),
        ):
            counts[v["status"]] = counts.get(v["status"], 0) + 1
        return counts

    def pending_count(self) -> int:
        return sum(
            int(p.get("Count", 0))
            for p in self._pages(
                "query",
                TableName=self.table,
                IndexName="due",
                KeyConditionExpression="#d = :d",
                ExpressionAttributeNames={"#d": "due"},
                ExpressionAttributeValues=to_dynamo({":d": PENDING}),
                Select="COUNT",
            )
        )
