"""`SubscriptionStore` on the subscriptions table: key (`workspace`, `id`); `events` as a JSON list, the
generated `secret`, `created_at` (epoch seconds). Reads are strongly consistent: a subscriber created or
deleted through the API is seen by the next settled event (after the worker's short cache)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import DynamoTable, error_code, from_dynamo, seconds, to_dynamo, ts
from stores.outbox import OutboundType, StoredSubscription


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
        return sorted((self._subscription(v) for v in items), key=lambda s: (s.created_at, s.id))

    def get_subscription(self, workspace: str, subscription_id: str) -> StoredSubscription | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_dynamo({"workspace": workspace, "id": subscription_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return self._subscription(from_dynamo(item)) if item else None

    def add_subscription(self, s: StoredSubscription) -> bool:
        try:
            self.client.put_item(
                TableName=self.table,
                Item=to_dynamo(
                    {
                        "workspace": s.workspace,
                        "id": s.id,
                        "url": s.url,
                        "events": json.dumps(sorted(e.value for e in s.events)),
                        "secret": s.secret,
                        "created_at": seconds(s.created_at.timestamp()),
                    }
                ),
                ConditionExpression="attribute_not_exists(id)",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def delete_subscription(self, workspace: str, subscription_id: str) -> bool:
        resp = self.client.delete_item(
            TableName=self.table, Key=to_dynamo({"workspace": workspace, "id": subscription_id}), ReturnValues="ALL_OLD"
        )
        return bool(resp.get("Attributes"))
