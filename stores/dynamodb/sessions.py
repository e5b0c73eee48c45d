"""`SessionStore` on the sessions table: key (`workspace`, `session_id`), the turns as JSON strings,
`expires_at` (TTL)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
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
from stores.sessions import DEFAULT_MAX_BYTES, DEFAULT_MAX_TURNS, Session, Turn, keep_newest


class DynamoSessionStore:
    """`stores.sessions.SessionStore` on the sessions table; sessions expire (TTL) `ttl` after their last
    turn. Turns are kept as JSON strings: citations carry floats, which DynamoDB numbers would turn into
    `Decimal`. An item holds at most 400 KB, so the stored turns are bounded (`max_bytes`, well below it):
    an append drops the oldest turns beyond the bounds. The append is a read, then a conditional write on
    the item's revision `rev`; two appends to one session at once retry rather than lose each other."""

    def __init__(
        self,
        client: Any,
        *,
        table: str,
        ttl: timedelta = timedelta(days=30),
        max_turns: int = DEFAULT_MAX_TURNS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.client = client
        self.table = table
        self.ttl = ttl
        self.max_turns = max_turns
        self.max_bytes = max_bytes

    @classmethod
    def from_settings(cls, settings: DynamoSettings, *, client: Any | None = None) -> DynamoSessionStore:
        agent = getattr(settings, "agent", None)
        days = float(getattr(agent, "session_ttl_days", 30.0))
        return cls(
            client if client is not None else default_client("dynamodb"),
            table=settings.dynamodb_sessions_table,
            ttl=timedelta(days=days),
            max_turns=int(getattr(agent, "session_max_turns", DEFAULT_MAX_TURNS)),
            max_bytes=int(getattr(agent, "session_max_bytes", DEFAULT_MAX_BYTES)),
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

    def _read(self, workspace: str, session_id: str) -> dict[str, Any] | None:
        resp = self.client.get_item(
            TableName=self.table, Key=to_dynamo({"workspace": workspace, "session_id": session_id}), ConsistentRead=True
        )
        item = resp.get("Item")
        return from_dynamo(item) if item else None

    @staticmethod
    def _expired(values: dict[str, Any], now: float) -> bool:
        # TTL deletes expired items within days, not at once: an expired session is already gone.
        return values.get("expires_at") is not None and float(values["expires_at"]) < now

    def get_session(self, workspace: str, session_id: str) -> Session | None:
        values = self._read(workspace, session_id)
        if values is None or self._expired(values, time.time()):
            return None
        return self._session(values)

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session:
        for _ in range(8):
            now = time.time()
            current = self._read(workspace, session_id)
            fresh = current is None or self._expired(current, now)
            old_turns: list[str] = [] if fresh or current is None else list(current.get("turns", []))
            kept = keep_newest(
                [*old_turns, *(t.to_json() for t in turns)], max_turns=self.max_turns, max_bytes=self.max_bytes
            )
            rev = 0 if current is None else int(current.get("rev", 0))
            item = {
                "workspace": workspace,
                "session_id": session_id,
                "turns": kept,
                "created_at": seconds(now) if fresh or current is None else current["created_at"],
                "updated_at": seconds(now),
                "expires_at": int(now + self.ttl.total_seconds()),
                "rev": rev + 1,
            }
            if current is None:
                condition, names, values = "attribute_not_exists(#k)", {"#k": "session_id"}, {}
            elif "rev" in current:
                condition, names, values = "#rev = :rev", {"#rev": "rev"}, {":rev": serializer.serialize(rev)}
            else:  # written before revisions were kept
                condition, names, values = "attribute_not_exists(#rev)", {"#rev": "rev"}, {}
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item=to_dynamo(item),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=names,
                    **({"ExpressionAttributeValues": values} if values else {}),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                continue  # another append won the race: read again
            return self._session(item)
        raise RuntimeError(f"session {session_id!r} could not be written: too many concurrent appends")

    def delete_session(self, workspace: str, session_id: str) -> bool:
        resp = self.client.delete_item(
            TableName=self.table,
            Key=to_dynamo({"workspace": workspace, "session_id": session_id}),
            ReturnValues="ALL_OLD",
        )
        return bool(resp.get("Attributes"))
