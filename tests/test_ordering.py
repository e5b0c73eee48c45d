"""The order rule of docs/consistency.md, case by case, over HTTP: whatever kind of key an event carries,
the same events give the same file, and no event loses merely because of the kind of its key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retrieval.search import SearchRequest
from stores.events import (
    MAX_VERSION,
    EventType,
    explain_order,
    position_is_newer,
    position_key,
    sequencer_sort_key,
)
from stores.ports import SearchFilter, SearchMode
from tests.conftest import Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def make(make_harness: Callable[..., Harness], tmp_path: Any) -> Callable[[], Harness]:
    n = iter(range(100))
    return lambda: make_harness(
        data_dir=tmp_path / f"data{next(n)}", model=HashEmbedder(), worker={"mass_delete_share": 1.0}
    )


def send(h: Harness, kind: str, *, at: int, version: int | None = None, text: str | None = None, **kw: Any) -> str:
    """Deliver a change of file "f" made `at` seconds after T0; returns its event id."""
    event_id = kw.pop("event_id", None)
    body = file_event(
        kind,
        "f",
        version=version,
        timestamp=T0 + timedelta(seconds=at),
        content=None if kind == "deleted" else (text or f"Text of the change at {at} s."),
        content_type=None if kind == "deleted" else "text/markdown",
        **kw,
    )
    r = h.post_event(body, event_id=event_id)
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


def texts(h: Harness) -> list[str]:
    hits = h.container.searcher.search(
        SearchRequest("acme", "text change", top_k=20, mode=SearchMode.DENSE, flt=SearchFilter(file_ids=("f",)))
    )
    return sorted(hit.text for hit in hits)


def event(h: Harness, event_id: str) -> dict[str, Any]:
    out: dict[str, Any] = h.get(f"/events/{event_id}").json()
    return out


def test_a_delete_without_a_version_after_a_versioned_create_deletes(make: Callable[[], Harness]) -> None:
    h = make()
    send(h, "created", at=0, version=5, text="The handbook says five.")
    h.drain()
    delete = send(h, "deleted", at=10)  # sources very often send deletes without a version
    h.drain()
    assert event(h, delete)["status"] == "done"
    assert h.get("/documents/f").json()["status"] == "deleted"
    assert texts(h) == []


def test_an_update_without_a_version_after_a_versioned_create_applies(make: Callable[[], Harness]) -> None:
    h = make()
    send(h, "created", at=0, version=2, text="The old wording.")
    update = send(h, "updated", at=10, text="The new wording of the policy.")
    h.drain()
    assert event(h, update)["status"] == "done"
    assert texts(h) == ["The new wording of the policy."]


def test_version_less_events_of_the_same_instant_end_the_same_in_any_order(make: Callable[[], Harness]) -> None:
    ends = []
    for order in (("ev-a", "ev-b"), ("ev-b", "ev-a")):
        h = make()
        for event_id in order:
            send(h, "updated", at=0, text=f"Text sent as {event_id}.", event_id=event_id)
        h.drain()
        ends.append((texts(h), h.get("/documents/f").json()["last_event_id"]))
    assert ends[0] == ends[1] == (["Text sent as ev-b."], "ev-b")  # the tie is broken by the event id


def test_a_recreate_with_a_restarted_counter_after_a_delete_comes_back(make: Callable[[], Harness]) -> None:
    h = make()
    send(h, "created", at=0, version=3, text="Before the delete.")
    send(h, "deleted", at=4, version=4)
    h.drain()
    again = send(h, "created", at=10, version=1, text="Created again at the same path.")  # the counter restarts
    h.drain()
    assert event(h, again)["status"] == "done"
    assert "version 1 is lower than version 4" in event(h, again)["detail"]  # which rule decided, said
    doc = h.get("/documents/f").json()
    assert (doc["status"], doc["version"]) == ("indexed", 1)
    assert texts(h) == ["Created again at the same path."]


def test_huge_versions_are_refused_at_the_door_and_the_largest_sorts_right(make: Callable[[], Harness]) -> None:
    h = make()
    for version in (10**21, 2**63):
        r = h.post_event(file_event("updated", "f", content="x", version=version, timestamp=T0))
        assert r.status_code == 422 and "below 2^63" in r.json()["detail"], r.text
    send(h, "updated", at=0, version=MAX_VERSION, text="The largest version.")
    send(h, "updated", at=0, version=MAX_VERSION - 1, text="One below it.")
    h.drain()
    assert texts(h) == ["The largest version."]
    assert h.get("/documents/f").json()["version"] == MAX_VERSION


def test_s3_sequencers_of_different_lengths_compare_as_aws_documents(make: Callable[[], Harness]) -> None:
    # Right-padded, 0055AED6DCD90281F is 0055AED6DCD90281F0: after 0055AED6DCD90281E5, although shorter.
    ends = []
    uploads = [("0055AED6DCD90281E5", "first"), ("0055AED6DCD90281F", "second")]
    for order in (uploads, uploads[::-1]):
        h = make()
        for sequencer, name in order:
            send(h, "updated", at=0, text=f"The {name} upload.", sequencer=sequencer)
        h.drain()
        ends.append(texts(h))
    assert ends == [["The second upload."], ["The second upload."]]
    assert sequencer_sort_key("0055AED6DCD90281F") > sequencer_sort_key("0055AED6DCD90281E5")


def test_keys_that_contradict_each_other_converge_and_the_detail_says_why(make: Callable[[], Harness]) -> None:
    """A sender whose versions and clock disagree: version 3 at 10:00:01, version 2 at 10:00:05."""
    outcomes = []
    for order in ((3, 2), (2, 3)):
        h = make()
        ids = {v: send(h, "updated", at={3: 1, 2: 5}[v], version=v, text=f"Version {v}.") for v in order}
        h.drain()
        outcomes.append(texts(h))
        # Applied in arrival order: version 2 replaces 3, or 3 is superseded by 2; either detail says why.
        decided = event(h, ids[2]) if order == (3, 2) else event(h, ids[3])
        assert decided["status"] == ("done" if order == (3, 2) else "superseded")
        assert "timestamp decides although version 2 is lower than version 3" in decided["detail"], decided
    assert outcomes[0] == outcomes[1] == ["Version 2."]


def test_a_timestamp_in_the_future_is_refused(make: Callable[[], Harness]) -> None:
    """A future timestamp would win over every real change after it: more than the tolerance ahead is a 422."""
    h = make()
    r = h.post_event(file_event("updated", "f", content="x", timestamp=datetime.now(UTC) + timedelta(hours=2)))
    assert r.status_code == 422 and "in the future" in r.json()["detail"]
    r = h.post_event(file_event("updated", "f", content="x", timestamp=datetime.now(UTC) + timedelta(seconds=30)))
    assert r.status_code == 202  # clock skew within the tolerance is fine


# the rule as a total order ------------------------------------------------------------------------------
KIND = st.sampled_from(list(EventType))
EVENTS = st.tuples(
    st.integers(0, 5),  # seconds: few values, so ties are common
    KIND,
    st.one_of(st.none(), st.integers(0, MAX_VERSION)),
    st.one_of(st.none(), st.text("0123456789ABCDEF", min_size=1, max_size=20)),
    st.text("abc", min_size=1, max_size=3),
)


def key(e: tuple[int, EventType, int | None, str | None, str]) -> str:
    seconds, kind, version, sequencer, event_id = e
    return position_key(
        timestamp=T0 + timedelta(seconds=seconds),
        kind=kind,
        version=version,
        sequencer=None if version is not None else sequencer,
        event_id=event_id,
    )


@given(EVENTS, EVENTS, EVENTS)
def test_the_rule_is_a_strict_total_order_that_only_the_documented_keys_decide(a: Any, b: Any, c: Any) -> None:
    ka, kb, kc = key(a), key(b), key(c)
    # Two events are equal only when they are the same event; otherwise exactly one is newer.
    if ka == kb:
        assert (a[0], a[1], a[2], a[4]) == (b[0], b[1], b[2], b[4])
    else:
        assert position_is_newer(ka, kb) != position_is_newer(kb, ka)
        newer, older = (ka, kb) if position_is_newer(ka, kb) else (kb, ka)
        assert explain_order(newer, older)
    if position_is_newer(ka, kb) and position_is_newer(kb, kc):
        assert position_is_newer(ka, kc)  # transitive: no cycle can make the outcome depend on order
    # The timestamp decides first, whatever the counters say; then the kind (delete > update > create).
    if a[0] != b[0]:
        assert position_is_newer(ka, kb) == (a[0] > b[0])
    elif a[1] != b[1]:
        rank = [EventType.CREATED, EventType.UPDATED, EventType.DELETED]
        assert position_is_newer(ka, kb) == (rank.index(a[1]) > rank.index(b[1]))
    elif a[2] is not None and b[2] is not None and a[2] != b[2]:
        assert position_is_newer(ka, kb) == (a[2] > b[2])


def test_positions_written_before_the_rule_are_older_than_any_of_it() -> None:
    new = key((0, EventType.CREATED, None, None, "e"))
    for legacy in ("v:00000000000000000009", "s:" + "0" * 62 + "FF", "t:2026-01-01T00:00:00.000000Z"):
        assert position_is_newer(new, legacy) and not position_is_newer(legacy, new)
