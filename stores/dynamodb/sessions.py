"""`SessionStore` on the sessions table: key (`workspace`, `session_id`), the turns as JSON strings,
`expires_at` (TTL)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import (
    DynamoSettings,
    default_client,
    error_code,
    from_dynamo,
    seconds,
    serializer,
    to_dynamo,
    ts,
)
from stores.sessions import Session, Turn


class DynamoSessionStore:
    """`stores.sessions.SessionStore` on the sessions table; sessions expire (TTL) `ttl` after their last
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
        return Session(
            workspace=values["workspace"],
            session_id=values["session_id"],
            turns=[Turn(**json.loads(t)) for t in values.get("turns", [])],
            created_at=ts(values["created_at"]),
            updated_at=ts(values["updated_at"]),
        )

    def get_session(self, workspace: str, session_id: str) -> Session | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_dynamo({"workspace": workspace, "session_id": session_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        if not item:
            return None
        values = from_dynamo(item)
        # TTL deletes expired items within days, not at once: an expired session is already gone.
        if values.get("expires_at") is not None and float(values["expires_at"]) < time.time():
            return None
        return self._session(values)

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session:
        key = to_dynamo({"workspace": workspace, "session_id": session_id})
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
                        ":now": serializer.serialize(seconds(now)),
                        ":x": serializer.serialize(int(now + self.ttl.total_seconds())),
                    },
                    ReturnValues="ALL_NEW",
                )
                return self._session(from_dynamo(resp["Attributes"]))
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                self.client.delete_item(TableName=self.table, Key=key)
        raise RuntimeError(f"session {session_id!r} could not be written")  # pragma: no cover

    def delete_session(self, workspace: str, session_id: str) -> bool:
        resp = self.client.delete_item(
            TableName=self.table,
            Key=to_dynamo({"workspace": workspace, "session_id": session_id}),
            ReturnValues="ALL_OLD",
        )
        return bool(resp.get("Attributes"))
