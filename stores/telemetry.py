"""Metrics and log context, shared by both paths (they import only `stores`).

Metrics are prometheus-client collectors in the process-wide default registry, served by `GET /metrics`.
Defining a collector connects to nothing, so this is safe at import. Labels are kept to bounded sets
(event type, outcome, search mode): a label per workspace or file would grow without limit.

Log context: `bind(event_id=..., workspace=..., file_id=...)` attaches those fields to every log record
made inside the block (a `contextvars` value, so threads and async tasks each see their own); the JSON log
formatter (`app.logs`) writes them as fields of the line.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# -- the write path -------------------------------------------------------------------------------------
EVENTS_RECEIVED = Counter("eventrag_events_received", "Webhook and S3 events stored (duplicates not counted)", ["type"])
EVENTS_DUPLICATE = Counter("eventrag_events_duplicate", "Deliveries of an event id already stored", ["type"])
EVENTS_REJECTED = Counter("eventrag_events_rejected", "Signed deliveries refused as invalid (recorded)")
EVENTS_APPLIED = Counter(
    "eventrag_events_applied",
    "Events applied to the index, by type and result (indexed, deleted, skipped, superseded)",
    ["type", "result"],
)
EVENTS_FAILED = Counter("eventrag_events_failed", "Events that failed for good (retries used up)", ["type"])
EVENTS_RETRIED = Counter("eventrag_events_retried", "Event attempts that failed and will be retried", ["type"])
EVENTS_HELD = Counter("eventrag_events_held", "Deletes held by the mass-deletion brake")
INGEST_LAG = Histogram(
    "eventrag_ingest_lag_seconds",
    "From an event being stored to it being settled",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
EMBED_BATCH_SIZE = Histogram(
    "eventrag_embedding_batch_size",
    "Texts per call of the embedding model",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
EMBED_SECONDS = Histogram(
    "eventrag_embedding_seconds",
    "Seconds per call of the embedding model (one batch)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHUNKS = Counter("eventrag_chunks", "Chunks indexed, by where their vector came from", ["source"])

# -- the read path --------------------------------------------------------------------------------------
SEARCH_SECONDS = Histogram(
    "eventrag_search_seconds",
    "Seconds per search (embed the query, search the index, keep active revisions)",
    ["mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ANSWER_SECONDS = Histogram(
    "eventrag_answer_seconds",
    "Seconds per answer, from question to the whole answer",
    ["mode"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LLM_ERRORS = Counter("eventrag_llm_errors", "Chat model calls that failed after the client's retries", ["kind"])

# -- outbound webhooks ----------------------------------------------------------------------------------
DELIVERY_ATTEMPTS = Counter(
    "eventrag_webhook_delivery_attempts", "Outbound webhook attempts, by result (delivered, retry, failed)", ["result"]
)
DELIVERY_SECONDS = Histogram(
    "eventrag_webhook_delivery_seconds",
    "Seconds per outbound webhook attempt",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# -- read when /metrics is scraped ----------------------------------------------------------------------
QUEUE_DEPTH = Gauge("eventrag_queue_depth", "Jobs in the ingest queue (waiting or in flight)")
OLDEST_QUEUED_AGE = Gauge(
    "eventrag_oldest_queued_event_age_seconds", "Age of the oldest event not yet settled (the ingest lag now)"
)
OUTBOX_PENDING = Gauge("eventrag_webhook_deliveries_pending", "Outbound webhook deliveries waiting to be sent")

# -- log context ----------------------------------------------------------------------------------------
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("eventrag_log_context", default=None)

# Fields every log line about an event carries (JSON logs); `LogContextFilter` fills them in.
EVENT_FIELDS = ("event_id", "workspace", "file_id")


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Attach `fields` to every log record made in this block (nested blocks add to the outer fields)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> dict[str, Any]:
    return dict(_context.get() or {})


class LogContextFilter(logging.Filter):
    """Copies the bound fields onto each record (fields given with `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
