"""The AWS state store: events (`events.py`) and the document registry (`documents.py`) in DynamoDB.

The tables are the ones `serverless.yml` defines (its `resources` section is the schema; the tests create
their moto tables from it):

- events, key (`workspace`, `event_id`): `file_id`, `group_key`, `status`, `kind`, `attempts`, `error`,
  `detail`, `confirmed`, `payload` (the `FileEvent` as JSON), `received_at` / `updated_at` (epoch seconds)
  and `expires_at` (the TTL attribute). Index `by_file` (group_key, received_at) lists a file's events,
  `by_status` (status, received_at) an event status.
- documents, key (`workspace`, `file_id`): the `DocumentRecord` fields; `metadata` as a JSON string, so
  values come back with their JSON types (DynamoDB numbers would come back as `Decimal`). The switch is a
  conditional write on `position` (a compare-and-set).
- sessions, key (`workspace`, `session_id`): the turns as JSON strings, `expires_at` (TTL).
- outbox, key `delivery_id`: outbound webhook deliveries (`outbox.py`), written in the same transaction
  that settles their event.

Reads that decide something (`get_event`, `get_document`, `active_revisions`) are strongly consistent;
listings go through indexes, which DynamoDB keeps eventually consistent.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

from stores.dynamodb.common import DynamoSettings, default_client
from stores.dynamodb.documents import DynamoDocuments
from stores.dynamodb.events import DynamoEvents
from stores.dynamodb.listings import DynamoListings


class DynamoStateStore(DynamoEvents, DynamoDocuments, DynamoListings):
    """`StateStore` on the events and documents tables. Thread-safe: boto3 clients are."""

    def __init__(
        self,
        client: Any,
        *,
        events_table: str,
        documents_table: str,
        outbox_table: str = "eventrag-outbox",
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.client = client
        self.events_table = events_table
        self.documents_table = documents_table
        self.outbox_table = outbox_table
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: DynamoSettings, *, client: Any | None = None) -> DynamoStateStore:
        return cls(
            client if client is not None else default_client("dynamodb"),
            events_table=settings.dynamodb_events_table,
            documents_table=settings.dynamodb_documents_table,
            outbox_table=settings.dynamodb_outbox_table,
            retention=timedelta(days=settings.event_retention_days),
        )

    def workspaces(self) -> list[str]:
        """Every workspace with a document or an event: a scan of both tables (IAM grants Scan for it)."""
        found: set[str] = set()
        for table in (self.documents_table, self.events_table):
            for item in self._items(
                "scan", TableName=table, ProjectionExpression="#w", ExpressionAttributeNames={"#w": "workspace"}
            ):
                found.add(item["workspace"])
        return sorted(found)

    def batch(self) -> AbstractContextManager[None]:
        """Each write is its own (conditional) request: DynamoDB has no transaction spanning a batch of
        events' writes (TransactWriteItems would cap it at 100 items and fail it whole on one condition)."""
        return nullcontext()

    def close(self) -> None:
        """Nothing to release: the boto3 client holds no connection that outlives a request."""
