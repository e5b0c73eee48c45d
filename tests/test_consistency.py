"""The index equals the latest version of every file, whatever the delivery does: direct tests over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from retrieval.search import SearchRequest
from stores.events import FileEvent
from stores.ports import Chunk, IndexPoint, SearchFilter, SearchMode
from tests.conftest import Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

FAST: dict[str, Any] = {"mass_delete_share": 1.0}


def doc(topic: str, version: int, paragraphs: int = 1) -> str:
    return "\n\n".join(
        f"{topic} paragraph {i} of version {version} mentions {topic}v{version}p{i}." for i in range(paragraphs)
    )


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(model=HashEmbedder(), worker={"backoff_seconds": 0.0, **FAST})


def searchable(h: Harness, file_id: str, query: str = "paragraph version") -> set[int | None]:
    """Versions of `file_id` that a search can return."""
    hits = h.container.searcher.search(
        SearchRequest("acme", query, top_k=50, mode=SearchMode.DENSE, flt=SearchFilter(file_ids=(file_id,)))
    )
    return {hit.version for hit in hits}


def status(h: Harness, event_id: str) -> str:
    return str(h.get(f"/events/{event_id}").json()["status"])


def test_out_of_order_delivery_keeps_the_newest(h: Harness) -> None:
    new = h.post_event(file_event("updated", "f", content=doc("alpha", 2), version=2)).json()["event_id"]
    old = h.post_event(file_event("created", "f", content=doc("alpha", 1), version=1)).json()["event_id"]
    h.drain()
    assert status(h, new) == "done"
    assert status(h, old) == "superseded"
    assert "not newer" in h.get(f"/events/{old}").json()["detail"]
    assert searchable(h, "f") == {2}
    assert h.get("/documents/f").json()["version"] == 2


def test_duplicate_while_queued_returns_the_original(h: Harness) -> None:
    body = file_event("created", "f", content=doc("beta", 1), version=1)
    a = h.post_event(body, event_id="same-id").json()
    b = h.post_event(file_event("created", "f", content="different payload", version=9), event_id="same-id")
    assert b.status_code == 200 and b.json()["event_id"] == a["event_id"] and b.json()["status"] == "queued"
    assert h.drain() == 1
    assert searchable(h, "f") == {1}


def test_sequencer_and_timestamp_order_events_without_versions(h: Harness) -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # Two updates of the same instant: S3's sequencer decides (compared as S3 documents it: right-padded).
    newer = h.post_event(
        file_event("updated", "s3obj", content=doc("gamma", 2), sequencer="C0F6F405D6ED209E1", timestamp=t0)
    )
    older = h.post_event(
        file_event("updated", "s3obj", content=doc("gamma", 1), sequencer="0A0F6F405D6ED209E2", timestamp=t0)
    )
    h.drain()
    assert status(h, newer.json()["event_id"]) == "done"
    assert status(h, older.json()["event_id"]) == "superseded"

    late = h.post_event(file_event("updated", "plain", content=doc("zeta", 2), timestamp=t0 + timedelta(seconds=5)))
    early = h.post_event(file_event("created", "plain", content=doc("zeta", 1), timestamp=t0))
    h.drain()
    assert status(h, late.json()["event_id"]) == "done"
    assert status(h, early.json()["event_id"]) == "superseded"


def test_tombstone_stops_a_late_create(h: Harness) -> None:
    h.post_event(file_event("created", "f", content=doc("delta", 1), version=1))
    h.drain()
    h.post_event(file_event("deleted", "f", version=3))
    h.drain()
    late = h.post_event(file_event("created", "f", content=doc("delta", 2), version=2)).json()["event_id"]
    h.drain()
    assert status(h, late) == "superseded"
    assert searchable(h, "f") == set()
    assert h.get("/documents/f").json()["status"] == "deleted"
    # A newer create after the delete brings the file back.
    h.post_event(file_event("created", "f", content=doc("delta", 4), version=4))
    h.drain()
    assert searchable(h, "f") == {4}


def test_retries_back_off_then_fail_and_can_be_retried_on_demand(
    make_harness: Callable[..., Harness],
) -> None:
    broken = {"on": True}

    def fault(step: str, event: FileEvent) -> None:
        if broken["on"] and step == "embedded" and event.version == 2:
            raise RuntimeError("embedding backend unavailable")

    h = make_harness(model=HashEmbedder(), fault=fault, worker={"backoff_seconds": 0.0, "max_attempts": 3, **FAST})
    h.post_event(file_event("created", "f", content=doc("eps", 1), version=1))
    h.drain()
    ev = h.post_event(file_event("updated", "f", content=doc("eps", 2), version=2)).json()["event_id"]
    h.drain()
    e = h.get(f"/events/{ev}").json()
    assert e["status"] == "failed" and e["attempts"] == 3
    assert "embedding backend unavailable" in e["error"] and "gave up after 3" in e["error"]
    d = h.get("/documents/f").json()
    assert d["status"] == "failed" and "embedding backend unavailable" in d["last_error"]
    assert searchable(h, "f") == {1}  # the last good version keeps answering

    broken["on"] = False
    r = h.client.post(f"/events/{ev}/retry", headers={"X-API-Key": "key-acme-0123456789abcdef"})
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["attempts"] == 0
    h.drain()
    assert status(h, ev) == "done"
    assert searchable(h, "f") == {2}
    assert h.get("/documents/f").json()["status"] == "indexed"
    again = h.client.post(f"/events/{ev}/retry", headers={"X-API-Key": "key-acme-0123456789abcdef"})
    assert again.status_code == 409 and "not failed" in again.json()["detail"]


def test_backoff_delays_grow(make_harness: Callable[..., Harness]) -> None:
    def fault(step: str, event: FileEvent) -> None:
        if step == "fetched":
            raise RuntimeError("source flaky")

    h = make_harness(model=HashEmbedder(), fault=fault, worker={"backoff_seconds": 30.0, **FAST})
    ev = h.post_event(file_event("created", "f", content="x", version=1)).json()["event_id"]
    assert h.drain() == 1  # the retry waits 30 s: not claimable now
    assert h.drain() == 0
    e = h.get(f"/events/{ev}").json()
    assert e["status"] == "queued" and e["attempts"] == 1 and "source flaky" in e["error"]


def test_mass_deletion_is_held_until_confirmed(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(
        model=HashEmbedder(), worker={"backoff_seconds": 0.0, "mass_delete_share": 0.2, "mass_delete_min": 3}
    )
    for i in range(10):
        h.post_event(file_event("created", f"f{i}", content=doc(f"t{i}", 1), version=1))
    h.drain()
    h.post_event(file_event("deleted", "f0", version=2))  # 1 of 10: below the minimum burst
    h.drain()
    assert h.get("/documents/f0").json()["status"] == "deleted"
    ids = [h.post_event(file_event("deleted", f"f{i}", version=2)).json()["event_id"] for i in range(1, 5)]
    h.drain()
    held = h.get("/held-deletes").json()
    assert held["count"] >= 2 and all(e["status"] == "held" for e in held["events"])
    assert "mass-deletion brake" in held["events"][0]["detail"]
    assert sum(1 for i in range(1, 5) if searchable(h, f"f{i}") == {1}) == held["count"]

    r = h.client.post("/held-deletes/confirm", json={}, headers={"X-API-Key": "key-acme-0123456789abcdef"})
    assert r.status_code == 200 and r.json()["count"] == held["count"]
    h.drain()
    assert all(status(h, e) == "done" for e in ids)
    assert all(searchable(h, f"f{i}") == set() for i in range(5))
    assert h.get("/held-deletes").json()["count"] == 0


def test_reconcile_reports_and_repairs(h: Harness) -> None:
    for f in ("a", "b", "c"):
        h.post_event(file_event("created", f, content=doc(f, 1, paragraphs=3), version=1))
    h.drain()
    key = {"X-API-Key": "key-acme-0123456789abcdef"}
    assert h.client.post("/reconcile", headers=key).json()["clean"] is True

    # Damage the index behind the registry's back: lose b's points, add an orphan revision for c.
    h.container.index.delete_file("acme", "b")
    orphan = IndexPoint(
        "acme",
        "c",
        "c",
        "v:00000000000000000000",
        0,
        "text/markdown",
        Chunk(0, "stale text", 0, 10),
        HashEmbedder().embed_query("stale text"),
    )
    h.container.index.upsert([orphan])
    report = h.client.post("/reconcile", headers=key).json()
    kinds = {(p["file_id"], p["kind"]) for p in report["problems"]}
    assert kinds == {("b", "missing"), ("c", "orphan")}
    assert searchable(h, "b") == set()

    report = h.client.post("/reconcile?repair=true", headers=key).json()
    assert all(p["repaired"] for p in report["problems"])
    h.drain()
    assert h.client.post("/reconcile", headers=key).json()["clean"] is True
    assert searchable(h, "b") == {1}


def test_only_changed_chunks_are_re_embedded(make_harness: Callable[..., Harness]) -> None:
    model = HashEmbedder()
    h = make_harness(model=model, chunking={"chunk_tokens": 40, "overlap_tokens": 0}, worker=FAST)
    paragraphs = [f"Section {i} explains topic {i} in some detail with words w{i}a w{i}b w{i}c." for i in range(30)]
    h.post_event(file_event("created", "long", content="\n\n".join(paragraphs), version=1))
    h.drain()
    first = h.get("/documents/long").json()
    assert first["chunk_count"] >= 10 and first["embedded"] == first["chunk_count"] and first["reused"] == 0
    paragraphs[17] = "Section 17 was rewritten entirely and now covers something else."
    before = model.embedded_texts
    h.post_event(file_event("updated", "long", content="\n\n".join(paragraphs), version=2))
    h.drain()
    second = h.get("/documents/long").json()
    assert second["embedded"] <= 2 and second["reused"] >= second["chunk_count"] - 2
    assert model.embedded_texts - before == second["embedded"]


def test_one_file_at_a_time_many_files_at_once(make_harness: Callable[..., Harness]) -> None:
    lock = threading.Lock()
    active: dict[str, int] = {}
    overlap_same_file: list[str] = []
    seen_together: list[set[str]] = []
    in_flight: set[str] = set()

    def fault(step: str, event: FileEvent) -> None:
        with lock:
            if step == "fetched":
                active[event.file_id] = active.get(event.file_id, 0) + 1
                if active[event.file_id] > 1:
                    overlap_same_file.append(event.file_id)
                in_flight.add(event.file_id)
                seen_together.append(set(in_flight))
            elif step == "cleaned":
                active[event.file_id] -= 1
                in_flight.discard(event.file_id)
        time.sleep(0.002)  # widen the window in which a second event of one file could slip in

    h = make_harness(
        model=HashEmbedder(),
        fault=fault,
        worker={"threads": 3, "batch_size": 4, "poll_seconds": 0.01, **FAST},
    )
    for v in range(1, 6):
        for f in ("a", "b", "c", "d"):
            h.post_event(file_event("updated", f, content=doc(f, v), version=v))
    assert h.container.loop is not None
    h.container.loop.start()
    deadline = time.monotonic() + 60
    while h.container.queue.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    h.container.loop.stop()
    assert h.container.queue.pending() == 0
    assert overlap_same_file == []
    assert max(len(s) for s in seen_together) > 1  # different files were in flight together
    for f in ("a", "b", "c", "d"):
        assert searchable(h, f) == {5}
