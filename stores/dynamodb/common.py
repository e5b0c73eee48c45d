"""Shared pieces of the DynamoDB adapters: the client, DynamoDB's typed JSON, paging.

The tables are the ones `serverless.yml` defines (its `resources` section is the schema; the tests create
their moto tables from it). The adapters: `state.py` (the `StateStore`, over `events.py` and
`documents.py`) and `sessions.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

# BatchGetItem takes at most 100 keys per call
# (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html).
BATCH_GET_KEYS = 100

serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class DynamoSettings(Protocol):
    """What the adapters read from `app.settings.Settings` (stores never imports app)."""

    dynamodb_events_table: str
    dynamodb_documents_table: str
    dynamodb_sessions_table: str
    dynamodb_outbox_table: str
    event_retention_days: float


def default_client(service: str) -> Any:
    import boto3

    return boto3.session.Session().client(service)


def to_dynamo(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB's typed JSON; None means "no attribute" (what SQL's NULL meant)."""
    return {k: serializer.serialize(v) for k, v in values.items() if v is not None}


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def seconds(value: float) -> Decimal:
    """Epoch seconds to microseconds: enough to order events, exact in DynamoDB's decimal numbers."""
    return Decimal(f"{value:.6f}")


def ts(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class DynamoTable:
    """Paging over one boto3 client (thread-safe: boto3 clients are)."""

    client: Any

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from self.client.get_paginator(operation).paginate(**kwargs)

    def _items(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self._pages(operation, **kwargs):
            for item in page.get("Items", []):
                yield from_dynamo(item)
