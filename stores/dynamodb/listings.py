"""The operator listings of `DynamoStateStore`: events and documents a page at a time, and `/stats`.

Events: a status goes through the `by_status` index (its sort key, `received_at`, also bounds `since`),
a file through `by_file`; the workspace's whole history is a query on the workspace's partition of the
table (key: workspace, event id). Documents: the workspace's partition, sorted by path here. The
matching items are read, counted (`total`) and sorted like the SQLite store, so both adapters page the
same way: newest event first, documents by (path, file id), the cursor being the last item's sort key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from stores.dynamodb.common import DynamoTable, seconds, to_dynamo, ts
from stores.events import EventStatus
from stores.paging import Page, cursor_number, decode_cursor, encode_cursor
from stores.ports import DocumentRecord, DocumentStatus, EventRecord, WorkspaceStats

UNSETTLED = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING)


class DynamoListings(DynamoTable):
    events_table: str
    documents_table: str

    @staticmethod
    def _event(values: dict[str, Any]) -> EventRecord:
        raise NotImplementedError

    @staticmethod
    def _document(values: dict[str, Any]) -> DocumentRecord:
        raise NotImplementedError

    def _status_items(
        self, status: EventStatus, *, workspace: str | None, since: datetime | None = None, **extra: Any
    ) -> Iterator[dict[str, Any]]:
        names: dict[str, str] = {"#s": "status"}
        values: dict[str, Any] = {":s": status.value}
        condition = "#s = :s"
        if since is not None:
            condition += " AND #r >= :since"
            names["#r"], values[":since"] = "received_at", seconds(since.timestamp())
        kwargs: dict[str, Any] = {}
        if workspace is not None:
            kwargs["FilterExpression"] = "#w = :w"
            names["#w"], values[":w"] = "workspace", workspace
        yield from self._items(
            "query",
            TableName=self.events_table,
            IndexName="by_status",
            KeyConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo(values),
            **kwargs,
            **extra,
        )

    def _matching_events(
        self, workspace: str, status: EventStatus | None, file_id: str | None, since: datetime | None
    ) -> Iterator[dict[str, Any]]:
        if status is not None and file_id is None:
            yield from self._status_items(status, workspace=workspace, since=since)
            return
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        filters: list[str] = []
        if status is not None:
            filters.append("#s = :s")
            names["#s"], values[":s"] = "status", status.value
        if since is not None:
            filters.append("#r >= :since")
            names["#r"], values[":since"] = "received_at", seconds(since.timestamp())
        kwargs: dict[str, Any]
        if file_id is not None:
            # group_key is "<workspace>/<file_id>": it names the workspace too.
            operation = "query"
            kwargs = {"IndexName": "by_file", "KeyConditionExpression": "#g = :g"}
            names["#g"], values[":g"] = "group_key", f"{workspace}/{file_id}"
        else:
            # The table's partition key is the workspace: its partition is the workspace's whole history.
            operation, kwargs = "query", {"KeyConditionExpression": "#w = :w"}
            names["#w"], values[":w"] = "workspace", workspace
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        yield from self._items(
            operation,
            TableName=self.events_table,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo(values),
            **kwargs,
        )

    def page_events(
        self,
        workspace: str,
        *,
        status: EventStatus | None = None,
        file_id: str | None = None,
        since: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[EventRecord]:
        found = list(self._matching_events(workspace, status, file_id, since))
        found.sort(key=lambda v: (Decimal(v["received_at"]), v["event_id"]), reverse=True)
        total = len(found)
        if cursor is not None:
            received, last_id = decode_cursor("events", workspace, cursor, 2)
            after = (cursor_number(received), str(last_id))
            found = [v for v in found if (Decimal(v["received_at"]), v["event_id"]) < after]
        page = found[:limit]
        next_cursor = None
        if len(found) > limit:
            last = page[-1]
            next_cursor = encode_cursor("events", workspace, [str(last["received_at"]), last["event_id"]])
        return Page([self._event(v) for v in page], total, next_cursor)

    def page_documents(
        self,
        workspace: str,
        *,
        status: DocumentStatus | None = None,
        path_prefix: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DocumentRecord]:
        kwargs: dict[str, Any] = {
            "TableName": self.documents_table,
            "KeyConditionExpression": "#w = :w",
            "ExpressionAttributeNames": {"#w": "workspace"},
            "ExpressionAttributeValues": {":w": workspace},
        }
        filters = []
        if status is not None:
            filters.append("#s = :s")
            kwargs["ExpressionAttributeNames"]["#s"] = "status"
            kwargs["ExpressionAttributeValues"][":s"] = status.value
        if path_prefix:
            filters.append("begins_with(#p, :p)")
            kwargs["ExpressionAttributeNames"]["#p"] = "path"
            kwargs["ExpressionAttributeValues"][":p"] = path_prefix
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        kwargs["ExpressionAttributeValues"] = to_dynamo(kwargs["ExpressionAttributeValues"])
        docs = [self._document(v) for v in self._items("query", **kwargs)]
        docs.sort(key=lambda d: (d.path, d.file_id))
        total = len(docs)
        if cursor is not None:
            last_path, last_id = decode_cursor("documents", workspace, cursor, 2)
            docs = [d for d in docs if (d.path, d.file_id) > (str(last_path), str(last_id))]
        page = docs[:limit]
        next_cursor = (
            encode_cursor("documents", workspace, [page[-1].path, page[-1].file_id]) if len(docs) > limit else None
        )
        return Page(page, total, next_cursor)

    def workspace_stats(self, workspace: str, now: datetime) -> WorkspaceStats:
        documents: dict[str, int] = {s.value: 0 for s in DocumentStatus}
        chunks = embedded = reused = 0
        for v in self._items(
            "query",
            TableName=self.documents_table,
            KeyConditionExpression="#w = :w",
            ProjectionExpression="#s, chunk_count, embedded, reused",
            ExpressionAttributeNames={"#w": "workspace", "#s": "status"},
            ExpressionAttributeValues=to_dynamo({":w": workspace}),
        ):
            documents[v["status"]] = documents.get(v["status"], 0) + 1
            if v["status"] == DocumentStatus.INDEXED.value:
                chunks += int(v.get("chunk_count", 0))
                embedded += int(v.get("embedded", 0))
                reused += int(v.get("reused", 0))

        def count(status: EventStatus, since: datetime | None = None) -> int:
            return sum(
                int(page.get("Count", 0))
                for page in self._pages(
                    "query",
                    **self._status_query_kwargs(status, workspace, since),
                    Select="COUNT",
                )
            )

        hour, day = now - timedelta(hours=1), now - timedelta(days=1)
        oldest = None
        unsettled = 0
        for status in UNSETTLED:
            items = list(self._status_items(status, workspace=workspace))
            unsettled += len(items)
            if items:
                first = min(Decimal(v["received_at"]) for v in items)
                oldest = first if oldest is None else min(oldest, first)
        return WorkspaceStats(
            workspace=workspace,
            documents=documents,
            chunks=chunks,
            embedded=embedded,
            reused=reused,
            events_last_hour={s.value: count(s, hour) for s in EventStatus},
            events_last_day={s.value: count(s, day) for s in EventStatus},
            unsettled=unsettled,
            held=count(EventStatus.HELD),
            oldest_unsettled_at=ts(oldest) if oldest is not None else None,
        )

    def _status_query_kwargs(self, status: EventStatus, workspace: str, since: datetime | None) -> dict[str, Any]:
        names = {"#s": "status", "#w": "workspace"}
        values: dict[str, Any] = {":s": status.value, ":w": workspace}
        condition = "#s = :s"
        if since is not None:
            condition += " AND #r >= :since"
            names["#r"], values[":since"] = "received_at", seconds(since.timestamp())
        return {
            "TableName": self.events_table,
            "IndexName": "by_status",
            "KeyConditionExpression": condition,
            "FilterExpression": "#w = :w",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_dynamo(values),
        }

    def oldest_unsettled(self) -> datetime | None:
        oldest = None
        for status in UNSETTLED:
            resp = self.client.query(
                TableName=self.events_table,
                IndexName="by_status",
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_dynamo({":s": status.value}),
                ScanIndexForward=True,  # sorted by received_at: the first is the oldest
                Limit=1,
            )
            for item in resp.get("Items", []):
                value = Decimal(item["received_at"]["N"])
                oldest = value if oldest is None else min(oldest, value)
        return ts(oldest) if oldest is not None else None
