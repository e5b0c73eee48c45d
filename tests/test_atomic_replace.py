"""While a file is being replaced, a query sees the whole old version or the whole new one: never a mix,
never nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from retrieval.search import SearchRequest
from stores.ports import Hit, Ranked, SearchFilter, SearchMode
from tests.conftest import Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

VERSIONS = 12


def content(version: int) -> str:
    return "\n\n".join(
        f"Handbook part {i}, edition {version}: rules for topic {i} marker e{version}." for i in range(8)
    )


def test_queries_during_replacement_never_mix_or_vanish(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(
        model=HashEmbedder(),
        chunking={"chunk_tokens": 32, "overlap_tokens": 0},
        worker={"mass_delete_share": 1.0},
    )
    h.post_event(file_event("created", "handbook", content=content(1), version=1))
    h.drain()
    chunks_per_version = h.get("/documents/handbook").json()["chunk_count"]
    assert chunks_per_version >= 4  # a partial write would be visible as a mix

    done = threading.Event()
    errors: list[str] = []
    observed: set[int] = set()
    queries = 0

    def writer() -> None:
        try:
            for v in range(2, VERSIONS + 1):
                h.post_event(file_event("updated", "handbook", content=content(v), version=v))
                h.drain()
        finally:
            done.set()

    deadline = time.monotonic() + 110

    def reader() -> None:
        nonlocal queries
        req = SearchRequest(
            "acme",
            "handbook rules topic edition",
            top_k=50,
            mode=SearchMode.DENSE,
            flt=SearchFilter(file_ids=("handbook",)),
        )
        while not done.is_set() or queries < 50:
            hits = h.container.searcher.search(req)
            queries += 1
            versions = {hit.version for hit in hits}
            if not hits:
                errors.append(f"query {queries}: nothing found")
            elif len(versions) > 1:
                errors.append(f"query {queries}: versions {sorted(versions)} mixed")
            elif len(hits) != chunks_per_version:
                errors.append(f"query {queries}: {len(hits)} of {chunks_per_version} chunks")
            observed.update(v for v in versions if v is not None)
            if time.monotonic() > deadline:  # a safety net, not a synchronisation: the writer sets `done`
                errors.append("the writer did not finish in time")
                break

    threads = [
        threading.Thread(target=writer),
        threading.Thread(target=reader),
        threading.Thread(target=reader),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(observed) > 1, "the readers never saw a replacement happen"
    assert max(observed) == VERSIONS


def test_a_switch_between_ranking_and_reading_the_passages_ranks_again(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search ranks on each point's file and revision, then reads the passages it kept. A replacement that
    lands in between deletes what was ranked: the search ranks again and answers with the whole new version."""
    h = make_harness(model=HashEmbedder(), chunking={"chunk_tokens": 32, "overlap_tokens": 0})
    h.post_event(file_event("created", "handbook", content=content(1), version=1))
    h.drain()
    chunks_per_version = h.get("/documents/handbook").json()["chunk_count"]
    index = h.container.index
    read = index.hits
    replaced: list[int] = []

    def replace_first(workspace: str, ranked: Sequence[Ranked], dense: list[float] | None) -> list[Hit]:
        if not replaced:
            replaced.append(1)
            h.post_event(file_event("updated", "handbook", content=content(2), version=2))
            h.drain()
        return read(workspace, ranked, dense)

    monkeypatch.setattr(index, "hits", replace_first)
    req = SearchRequest("acme", "handbook rules topic edition", top_k=50, mode=SearchMode.HYBRID)
    hits = h.container.searcher.search(req)
    assert replaced == [1]
    assert len(hits) == chunks_per_version
    assert {hit.version for hit in hits} == {2}
    assert all("edition 2" in hit.text for hit in hits)


def test_a_file_switching_twice_during_one_query_is_still_found(make_harness: Callable[..., Harness]) -> None:
    """The ranking reads version 1; the registry, read next, names version 2; by the time version 2 is read
    again, version 3 has replaced it and version 2's points are gone. The search ranks again and finds 3,
    not nothing."""
    h = make_harness(
        model=HashEmbedder(),
        chunking={"chunk_tokens": 32, "overlap_tokens": 0},
        worker={"mass_delete_share": 1.0},
    )
    h.post_event(file_event("created", "handbook", content=content(1), version=1))
    h.drain()
    searcher = h.container.searcher
    original = searcher.state.active_revisions
    calls = 0

    def switching(workspace: str, file_ids: Sequence[str]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            return original(workspace, file_ids)
        h.post_event(file_event("updated", "handbook", content=content(2), version=2))
        h.drain()
        answer = original(workspace, file_ids)  # version 2 is active now
        h.post_event(file_event("updated", "handbook", content=content(3), version=3))
        h.drain()  # version 3 switched in, version 2's points deleted
        return answer

    searcher.state.active_revisions = switching  # type: ignore[method-assign]
    req = SearchRequest("acme", "handbook rules topic edition", top_k=50, mode=SearchMode.DENSE)
    hits = searcher.search(req)
    assert calls >= 2
    assert hits and {hit.version for hit in hits} == {3}
    assert len(hits) == h.get("/documents/handbook").json()["chunk_count"]
