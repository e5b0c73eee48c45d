"""What `eventrag ingest` and `eventrag watch` share: file events as a remote source would send them,
signed Standard Webhooks deliveries with retries, and the outcome of a run's events.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import typer

# Statuses an event does not leave by itself.
SETTLED = frozenset({"done", "failed", "superseded", "rejected", "held"})


def file_event_body(
    kind: str,
    *,
    workspace: str,
    file_id: str,
    path: str,
    data: bytes | None,
    version: int | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A webhook body for one change. `data=None` sends no content: the server reads the path from its
    EVENTRAG_SOURCE_ROOT (and deletes carry none)."""
    body: dict[str, Any] = {"workspace": workspace, "file_id": file_id, "path": path}
    if version is not None:
        body["version"] = version
    if data is not None:
        body["content_base64"] = base64.b64encode(data).decode()
    stamp = (timestamp or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return {"type": f"file.{kind}", "timestamp": stamp, "data": body}


def event_id_for(prefix: str, *parts: object) -> str:
    """Deterministic ids: sending the same change twice is one event (the server deduplicates by id)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"{prefix}-{digest}"


class Sender:
    """Signs and posts deliveries; retries 5xx, 429 and connection errors with exponential backoff."""

    def __init__(self, server: str, secret: str, *, attempts: int = 6, backoff_seconds: float = 0.5) -> None:
        from standardwebhooks.webhooks import Webhook

        self.server = server.rstrip("/")
        self.signer = Webhook(secret)
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.client = httpx.Client(base_url=self.server, timeout=60)

    def close(self) -> None:
        self.client.close()

    def send(self, event_id: str, body: Mapping[str, Any]) -> httpx.Response:
        """The server's answer (2xx, or a 4xx that retrying cannot fix). Raises `httpx.HTTPError` when the
        server stays unreachable or keeps failing."""
        raw = json.dumps(body)
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            now = datetime.now(UTC)  # a fresh timestamp (and signature) per attempt: retries are not stale
            headers = {
                "webhook-id": event_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self.signer.sign(event_id, now, raw),
                "content-type": "application/json",
            }
            try:
                response = self.client.post("/webhooks", content=raw, headers=headers)
            except httpx.TransportError:
                if attempt == self.attempts:
                    raise
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                if attempt == self.attempts:
                    response.raise_for_status()
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover


def error_detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


@dataclass(slots=True)
class Outcome:
    """What became of one file of a run."""

    path: str
    kind: str  # indexed, unchanged, deleted, skipped, failed, held, pending
    reason: str | None = None


def outcome_of(path: str, event: Mapping[str, Any] | None) -> Outcome:
    """Classify an event (as `GET /events/{id}` shows it) for the run's report."""
    if event is None:
        return Outcome(path, "failed", "the server does not know this event")
    status, detail, error = event.get("status"), event.get("detail") or "", event.get("error")
    if status == "done":
        if detail.startswith("skipped: "):
            return Outcome(path, "skipped", detail.removeprefix("skipped: "))
        if detail == "deleted":
            return Outcome(path, "deleted")
        return Outcome(path, "indexed", detail or None)
    if status == "superseded":
        return Outcome(path, "unchanged", detail or None)
    if status in ("failed", "rejected"):
        return Outcome(path, "failed", error or detail or status)
    if status == "held":
        return Outcome(path, "held", detail or None)
    return Outcome(path, "pending", status)


def report(outcomes: Iterable[Outcome]) -> int:
    """Print the run's summary and the reason for every file not indexed; returns the number failed."""
    items = list(outcomes)
    counts: dict[str, int] = {}
    for o in items:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    order = ("indexed", "unchanged", "deleted", "skipped", "failed", "held", "pending")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    typer.echo(f"{len(items)} file(s) in this run: {', '.join(parts) or 'nothing to do'}")
    colours = {"skipped": "yellow", "failed": "red", "held": "yellow", "pending": "yellow"}
    for o in items:
        if o.kind in colours:
            typer.secho(f"  {o.kind}: {o.path}: {o.reason}", fg=colours[o.kind])
    return counts.get("failed", 0)
