"""The documents table: the document registry, key (`workspace`, `file_id`).

The `DocumentRecord` fields; `metadata` as a JSON string, so values come back with their JSON types
(DynamoDB numbers would come back as `Decimal`). Reads that decide something (`get_document`,
`active_revisions`) are strongly consistent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from stores.dynamodb.common import (
    DynamoTable,
    error_code,
    from_dynamo,
    seconds,
    serializer,
    to_dynamo,
    ts,
)
from stores.ports import ActiveRevision, DocumentRecord, DocumentStatus


class DynamoDocuments(DynamoTable):
    """The document half of `DynamoStateStore`."""

    documents_table: str

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
            updated_at=ts(values["updated_at"]) if values.get("updated_at") is not None else None,
        )

    def get_document(self, workspace: str, file_id: str) -> DocumentRecord | None:
        resp = self.client.get_item(
            TableName=self.documents_table,
            Key=to_dynamo({"workspace": workspace, "file_id": file_id}),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return self._document(from_dynamo(item)) if item else None

    def _workspace_documents(self, workspace: str, status: DocumentStatus | None, **extra: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self.documents_table,
            "KeyConditionExpression": "#w = :w",
            "ExpressionAttributeNames": {"#w": "workspace"},
            "ExpressionAttributeValues": {":w": serializer.serialize(workspace)},
            **extra,
        }
        if status is not None:
            kwargs["FilterExpression"] = "#s = :s"
            kwargs["ExpressionAttributeNames"]["#s"] = "status"
            kwargs["ExpressionAttributeValues"][":s"] = serializer.serialize(status.value)
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

    def switch_document(self, record: DocumentRecord, *, if_revision: str | None = None) -> bool:
        """One conditional PutItem replaces the whole record: DynamoDB applies a single-item write atomically,
        and only over an older (or equal, absent, or legacy) position. DynamoDB compares strings by their
        UTF-8 bytes, the order positions are written in; positions written before the current rule start
        with a letter (>= "a") and are replaced by anything. With `if_revision`, the condition also requires
        the stored revision to be that one (which implies the item exists)."""
        if record.position is None:
            raise ValueError("a switch needs the position of the event it applies")
        try:
            self._put_document(record, if_revision)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _put_document(self, record: DocumentRecord, if_revision: str | None = None) -> None:
        condition = "attribute_not_exists(#p) OR #p <= :p OR #p >= :legacy"
        names = {"#p": "position"}
        values: dict[str, Any] = {":p": record.position, ":legacy": "a"}
        if if_revision is not None:
            condition = f"#r = :r AND ({condition})"
            names["#r"] = "revision"
            values[":r"] = if_revision
        self.client.put_item(
            TableName=self.documents_table,
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo(values),
            Item=to_dynamo(
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
                    "updated_at": seconds(time.time()),
                }
            ),
        )

    def note_document_error(
        self,
        workspace: str,
        file_id: str,
        path: str,
        error: str,
        *,
        position: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """Record that the latest event for a file failed, keeping whatever revision is active. One
        UpdateItem: it creates the record when the file has none, like the SQLite store's insert. With
        `position`, only if no newer event has been applied meanwhile. The document names the failed event
        (`last_event_id`), so a retry is one step away."""
        extra: dict[str, Any] = {}
        if position is not None:
            extra = {
                "ConditionExpression": "attribute_not_exists(#pos) OR #pos < :pos OR #pos >= :legacy",
            }
        try:
            self._note_error(workspace, file_id, path, error, position, event_id, extra)
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def _note_error(
        self,
        workspace: str,
        file_id: str,
        path: str,
        error: str,
        position: str | None,
        event_id: str | None,
        extra: dict[str, Any],
    ) -> None:
        names = {
            "#s": "status",
            "#e": "last_error",
            "#u": "updated_at",
            "#p": "path",
            "#c": "chunk_count",
            "#em": "embedded",
            "#r": "reused",
            "#m": "metadata",
        }
        values: dict[str, Any] = {
            ":s": DocumentStatus.FAILED.value,
            ":e": error,
            ":u": seconds(time.time()),
            ":p": path,
            ":zero": 0,
            ":m": "{}",
        }
        if position is not None:
            names["#pos"] = "position"
            values[":pos"] = position
            values[":legacy"] = "a"
        if event_id is not None:
            names["#l"] = "last_event_id"
            values[":l"] = event_id
        self.client.update_item(
            TableName=self.documents_table,
            Key=to_dynamo({"workspace": workspace, "file_id": file_id}),
            UpdateExpression=(
                "SET #s = :s, #e = :e, #u = :u, #p = if_not_exists(#p, :p), #c = if_not_exists(#c, :zero),"
                " #em = if_not_exists(#em, :zero), #r = if_not_exists(#r, :zero), #m = if_not_exists(#m, :m)"
                + (", #l = :l" if event_id is not None else "")
            ),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=to_dynamo(values),
            **extra,
        )

    def active_revisions(self, workspace: str, file_ids: Sequence[str]) -> dict[str, ActiveRevision]:
        keys = [{"workspace": workspace, "file_id": f} for f in dict.fromkeys(file_ids)]
        names = {"#f": "file_id", "#r": "revision", "#v": "version"}
        found = self._batch_get(self.documents_table, keys, names=names)
        return {
            v["file_id"]: ActiveRevision(v["revision"], int(v["version"]) if v.get("version") is not None else None)
            for v in found
            if v.get("revision") is not None
        }
