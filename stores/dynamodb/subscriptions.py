"""`SubscriptionStore` on the subscriptions table: key (`workspace`, `id`); `events` as a JSON list, the
generated `secret`, `created_at` (epoch seconds). Reads are strongly consistent: a subscriber created or
deleted through the API is seen by the next settled event (after the worker's short cache).

Each workspace's subscribers are counted in one more item of the table (id `#count`, which no subscriber id
can be: they are letters, digits, `_`, `.` and `-`), changed in the same transaction as each add and delete,
so adds racing each other never take a workspace past its limit. A table written before the count existed
gets it on its first add or delete, counted from its items."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import DynamoTable, error_code, from_dynamo, seconds, to_dynamo, ts
from stores.outbox import Added, OutboundType, StoredSubscription

COUNT_ID = "#count"
_CONFLICT_RETRIES = 8  # transactions of one workspace that collide on its count item are simply tried again


class DynamoSubscriptionStore(DynamoTable):
    def __init__(self, client: Any, *, table: str) -> None:
        self.client = client
        self.table = table

    @staticmethod
    def _subscription(v: dict[str, Any]) -> StoredSubscription:
        return StoredSubscription(
            workspace=v["workspace"],
            id=v["id"],
            url=v["url"],
            events=frozenset(OutboundType(e) for e in json.loads(v["events"])),
            secret=v["secret"],
            created_at=ts(v["created_at"]),
        )

    def list_subscriptions(self, workspace: str) -> list[StoredSubscription]:
        items = self._items(
            "query",
            TableName=self.table,
            KeyConditionExpression="#w = :w",
            ExpressionAttributeNames={"#w": "workspace"},
            ExpressionAttributeValues=to_dynamo({":w": workspace}),
            ConsistentRead=True,
        )
        found = (self._subscription(v) for v in items if v["id"] != COUNT_ID)
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def get_subscription(self, workspace: str, subscription_id: str) -> StoredSubscription | None:
        if subscription_id == COUNT_ID:
            return None
        resp = self.client.get_item(
            TableName=self.table, Key=to_dynamo({"workspace": workspace, "id": subscription_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return self._subscription(from_dynamo(item)) if item else None

    def add_subscription(self, s: StoredSubscription, *, limit: int) -> Added:
        item = {
            "workspace": s.workspace,
            "id": s.id,
            "url": s.url,
            "events": json.dumps(sorted(e.value for e in s.events)),
            "secret": s.secret,
            "created_at": seconds(s.created_at.timestamp()),
        }
        put = {"TableName": self.table, "Item": to_dynamo(item), "ConditionExpression": "attribute_not_exists(id)"}
        count = self._count_change(s.workspace, +1, below=limit)
        reasons = self._transact(s.workspace, [{"Put": put}, {"Update": count}])
        if reasons is None:
            return Added.ADDED
        if reasons[0] == "ConditionalCheckFailed":
            return Added.EXISTS
        return Added.FULL

    def delete_subscription(self, workspace: str, subscription_id: str) -> bool:
        if subscription_id == COUNT_ID:
            return False
        delete = {
            "TableName": self.table,
            "Key": to_dynamo({"workspace": workspace, "id": subscription_id}),
            "ConditionExpression": "attribute_exists(id)",
        }
        return self._transact(workspace, [{"Delete": delete}, {"Update": self._count_change(workspace, -1)}]) is None

    def _count_change(self, workspace: str, by: int, *, below: int | None = None) -> dict[str, Any]:
        """The update of the workspace's count by `by`, on condition that it is `below` that (when given)."""
        values: dict[str, Any] = {":by": by}
        change: dict[str, Any] = {
            "TableName": self.table,
            "Key": to_dynamo({"workspace": workspace, "id": COUNT_ID}),
            "UpdateExpression": "SET #n = #n + :by",
            "ExpressionAttributeNames": {"#n": "n"},
        }
        if below is not None:
            change["ConditionExpression"] = "#n < :below"
            values[":below"] = below
        change["ExpressionAttributeValues"] = to_dynamo(values)
        return change

    def _transact(self, workspace: str, items: list[dict[str, Any]]) -> list[str] | None:
        """Runs the transaction; None when it committed, else the reason code of each item when a condition
        failed. Retried when it only collided with another transaction of the workspace."""
        self._ensure_count(workspace)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.client.transact_write_items(TransactItems=items)
                return None
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in reasons:
                    return reasons
                if "TransactionConflict" not in reasons or attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _ensure_count(self, workspace: str) -> None:
        key = to_dynamo({"workspace": workspace, "id": COUNT_ID})
        if "Item" in self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True):
            return
        counted = len(self.list_subscriptions(workspace))
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_dynamo({"workspace": workspace, "id": COUNT_ID, "n": counted}),
                ConditionExpression="attribute_not_exists(id)",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":  # another writer counted first
                raise
