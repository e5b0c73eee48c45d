"""Repair never undoes or hides newer work: reconcile in the middle of a write, a newer version applied
while a repair is pending, a stale writer whose lease ran out, two processes sharing one SQLite file.

The interleavings are injected at the worker's marked steps (the fault hook) and the end state is checked
through the API and the index."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from app.container import Container, build_container
from ingest.receiver import record_and_enqueue
from ingest.webhook_body import build_event, parse_webhook_body
from stores.events import FileEvent
from tests.conftest import KEY_ACME, Harness, base_settings
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

FAST = {"backoff_seconds": 0.0, "mass_delete_share": 1.0}
SMALL = {"chunk_tokens": 32, "overlap_tokens": 4}  # several chunks per version: a partial write would show


def doc(version: int) -> str:
    return "\n\n".join(f"Paragraph {i} of version {version} mentions v{version}p{i}." for i in range(4))


def versions(h: Harness) -> set[int]:
    res = h.query("paragraph version mentions", top_k=20, extractive=True).json()
    return {c["version"] for c in res["citations"] if c["file_id"] == "f"}


def reconcile(h: Harness, repair: bool = True) -> dict[str, Any]:
    r = h.client.post(f"/reconcile?repair={'true' if repair else 'false'}", headers={"X-API-Key": KEY_ACME})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_repair_between_upsert_and_switch_keeps_the_new_revision(make_harness: Callable[..., Harness]) -> None:
    box: dict[str, Harness] = {}
    reports: list[dict[str, Any]] = []

    def fault(step: str, event: FileEvent) -> None:
        if step == "upserted" and event.version == 2:
            reports.append(reconcile(box["h"]))  # an operator's repair lands in the middle of the write

    h = box["h"] = make_harness(model=HashEmbedder(), fault=fault, worker=FAST, chunking=SMALL)
    h.post_event(file_event("created", "f", content=doc(1), version=1))
    h.drain()
    h.post_event(file_event("updated", "f", content=doc(2), version=2))
    h.drain()
    assert reports, "the repair did not run"
    assert versions(h) == {2}
    d = h.get("/documents/f").json()
    assert (d["status"], d["version"]) == ("indexed", 2) and d["chunk_count"] > 1
    record = h.container.state.get_document("acme", "f")
    assert record is not None and h.container.index.file_revisions("acme", "f") == {record.revision: d["chunk_count"]}
    after = reconcile(h, repair=False)
    assert after["clean"] and after["problems"] == [], after


def test_a_newer_version_applied_while_a_repair_is_pending_is_kept(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(model=HashEmbedder(), worker=FAST)
    h.post_event(file_event("created", "f", content=doc(1), version=1))
    h.drain()
    h.container.index.delete_file("acme", "f")  # points lost: the repair re-applies the last event (v1)

    state = h.container.state
    real_get_document = state.get_document
    applied: list[bool] = []

    def apply_v2() -> None:
        applied.append(True)
        h.post_event(file_event("updated", "f", content=doc(2), version=2))
        h.drain()

    def get_document_then_v2_lands(workspace: str, file_id: str) -> Any:
        record = real_get_document(workspace, file_id)
        if not applied:
            apply_v2()  # version 2 is applied between the repair's read and whatever it does next
        return record

    state.get_document = get_document_then_v2_lands  # type: ignore[method-assign]
    try:
        report = reconcile(h)
    finally:
        state.get_document = real_get_document  # type: ignore[method-assign]
    assert [p["kind"] for p in report["problems"]] == ["missing"]
    if not applied:
        apply_v2()  # the repair read nothing more: v2 lands before the re-queued v1 is processed
    h.drain()
    assert versions(h) == {2}
    d = h.get("/documents/f").json()
    assert (d["status"], d["version"]) == ("indexed", 2)


def test_a_stale_writer_whose_lease_ran_out_never_wins(tmp_path: Path) -> None:
    """Two workers on one store: the first's lease runs out while it embeds version 1; the second takes the
    job, applies it and then version 2. When the first finally switches, the compare-and-set refuses it."""
    qdrant = QdrantClient(location=":memory:")
    box: dict[str, Container] = {}
    interleaved: list[int] = []

    def fault(step: str, event: FileEvent) -> None:
        if step == "upserted" and event.version == 1 and not interleaved:
            second = box["second"]
            assert second.loop is not None
            # The first worker's 10 ms lease runs out (poll until it has, within a deadline).
            deadline = time.monotonic() + 10
            while (ran := second.loop.drain()) == 0 and time.monotonic() < deadline:
                pass
            interleaved.append(ran)

    def make(name: str, **kw: Any) -> Container:
        s = base_settings(tmp_path / "data", worker={**FAST, **kw})
        return build_container(s, embedder=HashEmbedder(), qdrant_client=qdrant, fault=fault if name == "A" else None)

    first = make("A", lease_seconds=0.01)
    box["second"] = make("B")
    try:

        def deliver(event_id: str, version: int) -> None:
            body = file_event("updated", "f", content=doc(version), version=version)
            event = build_event(event_id, "acme", parse_webhook_body(json.dumps(body).encode()))
            record_and_enqueue(event, state=first.state, queue=first.queue)

        deliver("e1", 1)
        deliver("e2", 2)
        assert first.loop is not None
        first.loop.drain()
        assert interleaved and interleaved[0] >= 2  # the second worker ran e1 and e2 meanwhile
        d = first.state.get_document("acme", "f")
        assert d is not None and (d.version, d.last_event_id) == (2, "e2")
        revisions = first.index.file_revisions("acme", "f")
        assert revisions == {d.revision: d.chunk_count}  # the stale writer's points are gone too
        e1 = first.state.get_event("acme", "e1")
        assert e1 is not None and e1.status.value in ("done", "superseded")
    finally:
        box["second"].close()
        first.close()


def test_a_second_process_starting_up_never_takes_a_live_process_lease(tmp_path: Path) -> None:
    """Several processes share one SQLite file (and a Qdrant server): a start-up releases only the leases
    of processes that are gone, so one event never runs twice at once."""
    qdrant = QdrantClient(location=":memory:")
    started: list[int] = []
    second: list[Container] = []

    def fault(step: str, event: FileEvent) -> None:
        if step == "embedded" and not second:
            # Another process starts while this one is in the middle of the event: what `eventrag serve`
            # does at start-up, then its worker loop.
            settings = base_settings(tmp_path / "data", worker=FAST)
            c = build_container(settings, embedder=HashEmbedder(), qdrant_client=qdrant)
            second.append(c)
            c.recover()
            assert c.loop is not None
            started.append(c.loop.drain())

    first = build_container(
        base_settings(tmp_path / "data", worker=FAST), embedder=HashEmbedder(), qdrant_client=qdrant, fault=fault
    )
    try:
        body = file_event("created", "f", content=doc(1), version=1)
        event = build_event("e1", "acme", parse_webhook_body(json.dumps(body).encode()))
        record_and_enqueue(event, state=first.state, queue=first.queue)
        assert first.loop is not None
        assert first.loop.drain() == 1
        assert started == [0]  # the second process found nothing it may take
        rec = first.state.get_event("acme", "e1")
        assert rec is not None and (rec.status.value, rec.attempts) == ("done", 1)
    finally:
        for c in second:
            c.close()
        first.close()


@pytest.mark.parametrize(
    ("step", "content"),
    [
        *((step, 2) for step in ("fetched", "upserted", "switched", "cleaned")),  # new content: written
        # The same content again: the keep path (the record moves, nothing is written); its hook runs
        # outside the settle's transaction too, so what it reads is committed state.
        *((step, 1) for step in ("switched", "cleaned")),
    ],
)
def test_reconcile_in_the_middle_of_a_write_reports_no_damage(
    make_harness: Callable[..., Harness], step: str, content: int
) -> None:
    """Whatever step the worker is at, reconcile never sees the searchable revision damaged."""
    box: dict[str, Harness] = {}
    seen: list[dict[str, Any]] = []

    def fault(s: str, event: FileEvent) -> None:
        if s == step and event.version == 2:
            seen.append(reconcile(box["h"], repair=False))

    h = box["h"] = make_harness(model=HashEmbedder(), fault=fault, worker=FAST)
    h.post_event(file_event("created", "f", content=doc(1), version=1))
    h.drain()
    h.post_event(file_event("updated", "f", content=doc(content), version=2))
    h.drain()
    (report,) = seen
    assert report["skipped_in_flight"] == 1 and report["problems"] == []
    assert reconcile(h, repair=False)["clean"]
    d = h.container.state.get_document("acme", "f")
    assert d is not None and d.version == 2 and (d.embedded == 0) == (content == 1)
