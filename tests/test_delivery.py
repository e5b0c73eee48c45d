"""The deliveries `eventrag watch` and `eventrag ingest` send: signed as Standard Webhooks, retried with
backoff on 5xx and 429 (freshly signed each time), never retried on 4xx; and how a run's events are
reported."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from app.cli.delivery import Sender, event_id_for, file_event_body, outcome_of
from app.cli.watch import Watcher
from tests.conftest import SECRET_ACME


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[int], list[dict[str, Any]]]]:
    """A loopback receiver that answers the scripted statuses in turn and verifies every signature."""
    statuses: list[int] = []
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers["content-length"]))
            payload = Webhook(SECRET_ACME).verify(raw, dict(self.headers))  # raises on a bad signature
            received.append({"id": self.headers["webhook-id"], "payload": payload})
            status = statuses.pop(0) if statuses else 202
            body = json.dumps({"detail": "busy" if status >= 500 else "ok"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", statuses, received
    finally:
        server.shutdown()
        server.server_close()


def test_5xx_and_429_are_retried_with_fresh_signatures_and_4xx_is_not(
    receiver: tuple[str, list[int], list[dict[str, Any]]],
) -> None:
    url, statuses, received = receiver
    sender = Sender(url, SECRET_ACME, attempts=4, backoff_seconds=0.01)
    try:
        body = file_event_body("created", workspace="acme", file_id="a.md", path="a.md", data=b"# A", version=7)
        statuses.extend([503, 429, 502])
        assert sender.send("evt-1", body).status_code == 202
        assert [r["id"] for r in received] == ["evt-1"] * 4  # one event id however many attempts
        assert received[-1]["payload"]["data"]["content_base64"] == "IyBB"
        statuses.append(413)
        assert sender.send("evt-2", body).status_code == 413
        assert len(received) == 5
    finally:
        sender.close()


def test_event_ids_are_deterministic_per_change() -> None:
    assert event_id_for("watch", "acme", "a.md", 7) == event_id_for("watch", "acme", "a.md", 7)
    assert event_id_for("watch", "acme", "a.md", 7) != event_id_for("watch", "acme", "a.md", 8)


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"status": "done", "detail": "indexed 3 chunk(s): 3 embedded, 0 reused"}, "indexed"),
        ({"status": "done", "detail": "skipped: no text layer (OCR is not enabled)"}, "skipped"),
        ({"status": "failed", "error": "ParseBudgetError: ..."}, "failed"),
        ({"status": "superseded", "detail": "version 1 is not newer"}, "unchanged"),
        ({"status": "queued"}, "pending"),
        (None, "failed"),
    ],
)
def test_outcomes(event: dict[str, Any] | None, kind: str) -> None:
    assert outcome_of("a.pdf", event).kind == kind


def test_the_watcher_ignores_hidden_and_temporary_files(tmp_path: Any) -> None:
    watcher = Watcher(tmp_path, None, tmp_path / "m.json", workspace="acme", ignore=("*.bak",))  # type: ignore[arg-type]
    for ignored in (".git/config", "a/.hidden.md", "~$report.docx", "notes.md~", ".#lock", "#a.md#", "x.swp",
                    "dl.crdownload", "old.bak", "4913"):  # fmt: skip
        assert watcher.ignored(ignored), ignored
    for kept in ("README.Debian", "docs/a.md", "report.docx", "a~b.txt"):
        assert not watcher.ignored(kept), kept
