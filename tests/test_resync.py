"""Re-syncs and full batches: unchanged files are recognised without re-chunking, re-embedding or
re-writing points, yet their new version, path and metadata reach the registry, the citations and the
filters; the embedder gets full batches while more work is queued (unless a short one pads less); a new
file deletes nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.conftest import Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

POLICY = "# Parking\n\nVisitor parking is on level minus two, spaces 40 to 60. Staff park on level minus one."


class RecordingEmbedder(HashEmbedder):
    """Records the size of every batch the model is asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.batches.append(len(texts))
        return super().embed_documents(texts)


class Calls:
    """Counts calls of the index methods that write (a delete of no revision at all writes nothing)."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {"upsert": 0, "delete": 0}
        index = h.container.index
        for name in ("upsert", "delete_file", "delete_revisions"):
            original = getattr(index, name)
            key = "delete" if name.startswith("delete") else name

            def counted(*args: Any, _key: str = key, _name: str = name, _original: Any = original, **kw: Any) -> Any:
                if not (_name == "delete_revisions" and not args[2]):
                    self.counts[_key] += 1
                return _original(*args, **kw)

            monkeypatch.setattr(index, name, counted)

    def reset(self) -> dict[str, int]:
        seen = dict(self.counts)
        for name in self.counts:
            self.counts[name] = 0
        return seen


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    # The hash embedder's cosines are low: no relevance bar, so every match is cited.
    return make_harness(model=RecordingEmbedder(), min_score=-1.0, worker={"mass_delete_share": 1.0})


def send(h: Harness, version: int, *, content: str = POLICY, **kw: Any) -> dict[str, Any]:
    kw.setdefault("path", "facilities/parking.md")
    r = h.post_event(file_event("updated", "parking", content=content, version=version, **kw))
    assert r.status_code == 202, r.text
    h.drain()
    event: dict[str, Any] = h.get(r.json()["status_url"]).json()
    return event


def test_an_unchanged_resend_only_records_the_new_version(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls(h, monkeypatch)
    send(h, 1, metadata={"team": "facilities"})
    assert calls.reset() == {"upsert": 1, "delete": 0}  # new file: nothing to delete
    model = h.container.embedder
    assert isinstance(model, RecordingEmbedder)
    embedded_before = model.embedded_texts
    revision = h.container.state.get_document("acme", "parking").revision  # type: ignore[union-attr]

    event = send(h, 2, metadata={"team": "facilities"})
    assert event["status"] == "done" and "unchanged content" in event["detail"]
    assert calls.reset() == {"upsert": 0, "delete": 0}  # the new version is the record's alone
    assert model.embedded_texts == embedded_before
    doc = h.get("/documents/parking").json()
    assert (doc["version"], doc["status"], doc["embedded"]) == (2, "indexed", 0)
    assert h.container.state.get_document("acme", "parking").revision == revision  # type: ignore[union-attr]
    cite = h.query("Where do visitors park?").json()["citations"][0]
    assert (cite["file_id"], cite["version"], cite["path"]) == ("parking", 2, "facilities/parking.md")

    # The position still decides: the old version, re-delivered, is stale.
    assert send(h, 1, metadata={"team": "facilities"})["status"] == "superseded"
    assert h.get("/documents/parking").json()["version"] == 2
    # Re-running the same event changes nothing.
    assert h.container.index.revision_counts("acme") == {("parking", revision): doc["chunk_count"]}


def test_a_changed_path_or_metadata_reaches_payloads_and_filters(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    send(h, 1, metadata={"team": "facilities"})
    calls = Calls(h, monkeypatch)

    send(h, 2, metadata={"team": "security"})
    assert calls.reset() == {"upsert": 1, "delete": 1}  # a new revision, the old one deleted
    doc = h.get("/documents/parking").json()
    assert doc["embedded"] == 0 and doc["reused"] == doc["chunk_count"]
    hits = h.query("Where do visitors park?", filters={"metadata": {"team": "security"}}).json()["citations"]
    assert hits and hits[0]["version"] == 2
    assert h.query("Where do visitors park?", filters={"metadata": {"team": "facilities"}}).json()["citations"] == []

    send(h, 3, metadata={"team": "security"}, path="buildings/parking.md")
    cite = h.query("Where do visitors park?", filters={"path_prefix": "buildings/"}).json()["citations"][0]
    assert (cite["path"], cite["version"]) == ("buildings/parking.md", 3)
    assert h.query("Where do visitors park?", filters={"path_prefix": "facilities/"}).json()["citations"] == []
    assert len(h.container.index.revision_counts("acme")) == 1  # one revision left: the active one


def test_a_bulk_resync_commits_and_writes_per_batch_not_per_file(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full re-sync re-sends every file unchanged: the worker keeps them a claim at a time, so its
    commits and index writes grow with the claims, not with the files (a commit waits for the disk)."""
    h = make_harness(model=RecordingEmbedder(), min_score=-1.0, worker={"batch_size": 16, "mass_delete_share": 1.0})
    files = [f"f{i:02d}" for i in range(40)]
    for n, f in enumerate(files):
        h.post_event(file_event("created", f, content=f"File {n} is about topic {n * 13}.", version=1))
    h.drain()
    first = {f: h.container.state.get_document("acme", f) for f in files}
    ids = [
        h.post_event(file_event("updated", f, content=f"File {n} is about topic {n * 13}.", version=2)).json()[
            "event_id"
        ]
        for n, f in enumerate(files)
    ]
    calls = Calls(h, monkeypatch)
    commits: list[str] = []
    h.container.state.db._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)  # type: ignore[attr-defined]
    h.drain()
    h.container.state.db._conn.set_trace_callback(None)  # type: ignore[attr-defined]
    loop = h.container.loop
    assert loop is not None and loop.worker.settler.started == {}  # nothing kept about settled events (no leak)
    claims = 3 + 1  # 16 + 16 + 8 events, then the claim that finds none
    # Per claim: the claim, the attempts, the switches, the settles, the acks.
    assert len(commits) <= 5 * claims, len(commits)
    assert calls.reset() == {"upsert": 0, "delete": 0}  # nothing written to the index
    for f, event_id in zip(files, ids, strict=True):
        event = h.get(f"/events/{event_id}").json()
        assert event["status"] == "done" and "unchanged content" in event["detail"]
        doc = h.container.state.get_document("acme", f)
        assert doc is not None and first[f] is not None
        assert (doc.version, doc.revision, doc.last_event_id) == (2, first[f].revision, event_id)  # type: ignore[union-attr]
    cited = h.query("What is file 7 about?", top_k=20).json()["citations"]
    assert len(cited) >= 10 and {c["version"] for c in cited} == {2}  # the record's version, not the points'
    chunks = h.get("/documents/f07/chunks").json()
    assert chunks["version"] == 2


def test_an_edit_after_an_unchanged_resend_is_indexed(h: Harness) -> None:
    send(h, 1)
    send(h, 2)
    send(h, 3, content=POLICY.replace("minus two", "minus three"))
    cite = h.query("Where do visitors park?").json()["citations"][0]
    assert "minus three" in cite["text"] and cite["version"] == 3
    # Back to the first content: a new switch (its old points were deleted), not a stale no-op.
    send(h, 4)
    cite = h.query("Where do visitors park?").json()["citations"][0]
    assert "minus two" in cite["text"] and cite["version"] == 4


def test_the_model_gets_full_batches_across_events(make_harness: Callable[..., Harness]) -> None:
    model = RecordingEmbedder()
    h = make_harness(
        model=model,
        embedding_batch_size=8,
        chunking={"chunk_tokens": 40, "overlap_tokens": 0},
        worker={"batch_size": 4, "mass_delete_share": 1.0},
    )
    sizes = [1, 2, 3, 5, 1, 4, 2, 2, 3, 1, 6, 2, 1, 3]  # paragraphs per file: uneven chunk counts
    for n, paragraphs in enumerate(sizes):
        text = "\n\n".join(
            f"Paragraph {p} of file {n} talks about topic {p * 7 + n} with enough words to fill a chunk "
            f"of its own: alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu."
            for p in range(paragraphs)
        )
        h.post_event(file_event("created", f"f{n}", content=text, version=1))
    h.drain()
    docs = h.get("/documents").json()["documents"]
    assert len(docs) == len(sizes) and {d["status"] for d in docs} == {"indexed"}
    total = sum(d["chunk_count"] for d in docs)
    assert sum(model.batches) == total and total > 16
    # Every batch is full except the very last one (the queue was empty then).
    assert all(size == 8 for size in model.batches[:-1]), model.batches
    assert 1 <= model.batches[-1] <= 8


def test_a_stopped_loop_hands_carried_jobs_back(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(
        model=RecordingEmbedder(),
        embedding_batch_size=64,
        worker={"batch_size": 2, "mass_delete_share": 1.0},
    )
    for n in range(5):
        h.post_event(file_event("created", f"f{n}", content=f"File {n} is short.", version=1))
    loop = h.container.loop
    assert loop is not None
    assert loop.run_once() == 2  # a full claim: too few texts for a full batch, so they wait
    assert h.get("/documents").json()["documents"] == []
    loop.stop()
    h.drain()  # the two carried jobs were handed back at once: their 600 s lease did not hold them
    assert {d["status"] for d in h.get("/documents").json()["documents"]} == {"indexed"}
