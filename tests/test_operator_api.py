"""The operator's API over HTTP: event history and documents a page at a time (totals, cursors, filters),
`/stats`, a document's chunks and passages, and every list kept to the caller's workspace."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import KEY_BETA, SECRET_BETA, Harness
from tests.fakes.documents import scanned_pdf
from tests.fakes.webhooks import file_event

# A folder per workspace that does not exist: events without inline content fail (file not found).
SOURCE_ROOT = str(Path(__file__).resolve().parent / "events" / "{workspace}")


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(source_root=SOURCE_ROOT)


def walk(h: Harness, url: str, key: str, items: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Follow `next` links to the end; returns every item and the totals each page reported."""
    out: list[dict[str, Any]] = []
    totals: list[int] = []
    next_url: str | None = url
    while next_url is not None:
        resp = h.get(next_url, key=key)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["count"] == len(page[items])
        out.extend(page[items])
        totals.append(page["total"])
        assert (page["next"] is None) == (page["next_cursor"] is None)
        next_url = page["next"]
    return out, totals


def seed(h: Harness) -> dict[str, str]:
    """Seven acme files (five indexed, one failed, one skipped) and two beta files; returns event ids."""
    ids: dict[str, str] = {}
    for i in range(5):
        body = file_event("created", f"doc{i}", path=f"hr/doc{i}.md", content=f"# Doc {i}\n\nPolicy number {i}.")
        ids[f"doc{i}"] = h.post_event(body).json()["event_id"]
    ids["missing"] = h.post_event(file_event("created", "missing", path="ops/missing.md")).json()["event_id"]
    # A scanned PDF has no text layer: the file is skipped, with the reason.
    scan = base64.b64encode(scanned_pdf()).decode()
    ids["binary"] = h.post_event(
        file_event("created", "binary", path="ops/scan.pdf", content_type="application/pdf", content_base64=scan)
    ).json()["event_id"]
    for i in range(2):
        h.post_event(file_event("created", f"b{i}", content="beta text", workspace="beta"), secret=SECRET_BETA)
    h.drain()
    return ids


def test_documents_pages_with_totals_cursors_and_filters(h: Harness) -> None:
    seed(h)
    docs, totals = walk(h, "/documents?limit=3", "key-acme-0123456789abcdef", "documents")
    assert totals == [7, 7, 7]
    assert [d["path"] for d in docs] == sorted(d["path"] for d in docs)  # by path, no repeats, none missing
    assert len({d["file_id"] for d in docs}) == 7

    failed = h.get("/documents?status=failed").json()
    assert (failed["total"], [d["file_id"] for d in failed["documents"]]) == (1, ["missing"])
    hr, totals = walk(h, "/documents?path_prefix=hr/&limit=2", "key-acme-0123456789abcdef", "documents")
    assert {d["file_id"] for d in hr} == {f"doc{i}" for i in range(5)} and totals == [5, 5, 5]
    both = h.get("/documents?status=indexed&path_prefix=hr/doc1").json()
    assert [d["file_id"] for d in both["documents"]] == ["doc1"] and both["total"] == 1

    beta = h.get("/documents", key=KEY_BETA).json()
    assert beta["total"] == 2 and {d["workspace"] for d in beta["documents"]} == {"beta"}


def test_failed_and_skipped_documents_name_their_last_event(h: Harness) -> None:
    ids = seed(h)
    missing = h.get("/documents/missing").json()
    assert missing["status"] == "failed" and missing["last_event_id"] == ids["missing"] and missing["last_error"]
    skipped = h.get("/documents/binary").json()
    assert skipped["status"] == "skipped" and skipped["last_event_id"] == ids["binary"]
    # ... so a retry is one step away
    event = h.get(f"/events/{missing['last_event_id']}").json()
    assert event["status"] == "failed"
    assert (
        h.client.post(
            f"/events/{missing['last_event_id']}/retry", headers={"X-API-Key": "key-acme-0123456789abcdef"}
        ).json()["status"]
        == "queued"
    )


def test_events_newest_first_with_totals_cursors_and_filters(h: Harness) -> None:
    ids = seed(h)
    events, totals = walk(h, "/events?limit=2", "key-acme-0123456789abcdef", "events")
    assert totals == [7, 7, 7, 7]
    assert [e["event_id"] for e in events] == [
        ids[k] for k in ["binary", "missing", *(f"doc{i}" for i in range(4, -1, -1))]
    ]
    assert [e["received_at"] for e in events] == sorted((e["received_at"] for e in events), reverse=True)

    failed = h.get("/events?status=failed").json()
    assert failed["total"] == 1 and failed["events"][0]["event_id"] == ids["missing"]
    assert failed["events"][0]["error"]
    one_file = h.get("/events?file_id=doc3").json()
    assert [e["event_id"] for e in one_file["events"]] == [ids["doc3"]]
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert h.get(f"/events?since={quote(future)}").json()["total"] == 0
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    assert h.get(f"/events?since={quote(past)}&status=done").json()["total"] == 6

    beta = h.get("/events", key=KEY_BETA).json()
    assert beta["total"] == 2 and {e["workspace"] for e in beta["events"]} == {"beta"}
    assert h.get("/events?file_id=doc3", key=KEY_BETA).json()["total"] == 0


def test_a_cursor_must_come_from_the_same_listing(h: Harness) -> None:
    seed(h)
    cursor = h.get("/documents?limit=1").json()["next_cursor"]
    resp = h.get(f"/events?cursor={cursor}")
    assert resp.status_code == 422 and "cursor" in resp.json()["detail"]
    assert h.get("/documents?cursor=not-a-cursor!").status_code == 422
    assert h.get("/events?status=nonsense").status_code == 422
    # A cursor of acme's listing does not page beta's: event ids are per workspace.
    acme_cursor = h.get("/events?limit=1").json()["next_cursor"]
    refused = h.get(f"/events?cursor={acme_cursor}", key=KEY_BETA)
    assert refused.status_code == 422 and "another workspace" in refused.json()["detail"]


def test_events_filter_by_rejected_and_held_with_the_same_id_in_two_workspaces(
    make_harness: Callable[..., Harness],
) -> None:
    """Issue 10's statuses through the listing: a signed but invalid delivery is `rejected`, a delete the
    brake stops is `held`; the same webhook id in another workspace is another event."""
    h = make_harness(
        worker={"backoff_seconds": 0.0, "poll_seconds": 0.05, "mass_delete_share": 0.2, "mass_delete_min": 1}
    )
    for name in ("a", "b"):
        h.post_event(file_event("created", name, content=f"# {name}\n\nText of {name}.", version=1))
    bad = {"type": "file.updated", "timestamp": datetime.now(UTC).isoformat(), "data": {"file_id": "x"}}
    assert h.post_event(bad, event_id="same-id").status_code == 422
    h.post_event(file_event("created", "c", content="beta", workspace="beta"), secret=SECRET_BETA, event_id="same-id")
    h.drain()
    h.post_event(file_event("deleted", "a", version=2), event_id="del-a")
    h.drain()

    rejected = h.get("/events?status=rejected").json()
    assert rejected["total"] == 1 and rejected["events"][0]["event_id"] == "same-id"
    assert rejected["events"][0]["error"]
    held = h.get("/events?status=held").json()
    assert [e["event_id"] for e in held["events"]] == ["del-a"] and held["total"] == 1
    beta = h.get("/events", key=KEY_BETA).json()
    assert [(e["event_id"], e["status"]) for e in beta["events"]] == [("same-id", "done")]
    assert h.get("/events?status=rejected", key=KEY_BETA).json()["total"] == 0


def test_stats_per_workspace(h: Harness) -> None:
    seed(h)
    stats = h.get("/stats").json()
    assert stats["workspace"] == "acme"
    assert stats["documents"]["indexed"] == 5 and stats["documents"]["failed"] == 1
    assert stats["documents"]["skipped"] == 1
    assert stats["chunks"] == sum(d["chunk_count"] for d in h.get("/documents?status=indexed").json()["documents"])
    assert stats["embeddings"]["embedded"] + stats["embeddings"]["reused"] == stats["chunks"]
    assert stats["events_last_hour"]["done"] == 6 and stats["events_last_hour"]["failed"] == 1
    assert stats["events_last_day"] == stats["events_last_hour"]
    assert stats["queue_depth"] == 0 and stats["oldest_queued_age_seconds"] is None

    h.post_event(file_event("updated", "doc1", path="hr/doc1.md", content="# Doc 1\n\nChanged.", version=2))
    waiting = h.get("/stats").json()
    assert waiting["queue_depth"] == 1 and waiting["queue_pending"] == 1
    assert waiting["oldest_queued_age_seconds"] >= 0
    beta = h.get("/stats", key=KEY_BETA).json()
    assert beta["documents"]["indexed"] == 2 and beta["queue_depth"] == 0


def test_chunks_and_passages_of_a_document(h: Harness) -> None:
    text = "# Leave\n\nEmployees get 25 days of annual leave. " + "Padding sentence here. " * 40
    h.post_event(file_event("created", "hr/leave", path="hr/leave.md", content=text, version=4))
    h.drain()
    chunks = h.get("/documents/hr/leave/chunks").json()
    assert chunks["version"] == 4 and len(chunks["chunks"]) >= 2
    assert [c["index"] for c in chunks["chunks"]] == list(range(len(chunks["chunks"])))
    first = chunks["chunks"][0]
    passage = h.get(f"/documents/hr/leave/passage?start={first['start'] + 9}&end={first['start'] + 30}&context=9")
    body = passage.json()
    assert body["text"] == first["text"][9:30] and body["before"] == first["text"][:9]
    assert body["after"] == first["text"][30:39]
    assert h.get("/documents/hr/leave/passage?start=0&end=999999").status_code == 422
    assert h.get("/documents/hr/leave/chunks", key=KEY_BETA).status_code == 404


def test_me_names_the_workspace(h: Harness) -> None:
    assert h.get("/me").json() == {"workspace": "acme", "single_user": False}
    assert h.get("/me", key=KEY_BETA).json()["workspace"] == "beta"
    assert h.client.get("/me").status_code == 401


def test_any_webhook_id_round_trips_through_the_event_routes(h: Harness) -> None:
    """A webhook-id may hold "/", "?", "#" or spaces: the Location it is answered with, and the event routes
    given that id percent-encoded, all find the event. (No "%" here: Starlette's TestClient decodes a path
    twice; uvicorn decodes it once, as the web page test shows.)"""
    odd = "drive/file 1?rev=2#x"
    resp = h.post_event(file_event("created", "odd", path="ops/odd.md"), event_id=odd)
    assert resp.status_code == 202, resp.text
    location = resp.headers["location"]
    assert location == f"/events/{quote(odd, safe='')}" == resp.json()["status_url"]
    assert h.get(location).json()["event_id"] == odd
    h.drain()  # no such file under the source root: failed
    assert h.get(location).json()["status"] == "failed"
    retried = h.client.post(f"{location}/retry", headers={"X-API-Key": "key-acme-0123456789abcdef"})
    assert retried.status_code == 202 and retried.json()["event_id"] == odd
    assert h.get(location, key=KEY_BETA).status_code == 404
