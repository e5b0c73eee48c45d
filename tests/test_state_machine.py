"""Hypothesis against a reference model of the order rule (docs/consistency.md): random mixed-kind histories,
duplicate and reordered deliveries, crashes at every worker step, repairs and stale writers in the middle of
a write; and the order-independence property (the same events in two orders give the same index).

The histories mix every kind of key a sender uses: versioned and version-less creates, updates and deletes,
counters that restart after a delete, equal timestamps, clocks that disagree with versions, now and then
an S3 sequencer, and re-sends of unchanged content (the worker then keeps the active revision and moves
the record to the new event by the same compare-and-set). The reference model is written here, apart
from `stores.events`: per file, the greatest event by (timestamp, kind: create < update < delete, counter:
none < sequencer < version, event id).

The real webhook endpoint (signed deliveries over the ASGI HTTP stack), the real worker, real SQLite and the
real embedded index (Qdrant Edge, the default, on a temporary data dir) run; only the embedder is a fast
deterministic stand-in.

CI runs a few dozen examples; `HYPOTHESIS_PROFILE=long pytest tests/test_state_machine.py -s` runs many more
and prints the figures of the run (histories, steps, divergences).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app.container import Container, build_container
from app.main import create_app
from ingest.reconcile import reconcile
from ingest.revisions import revision_fingerprint
from retrieval.search import SearchRequest
from stores.events import IN_FLIGHT_STATUSES, EventKey, FileEvent
from stores.ports import SearchFilter, SearchMode
from tests.conftest import SECRET_ACME, base_settings
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event, sign

# Each example builds a store and runs the real worker: no per-example deadline, and "slow" is expected.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=25, stateful_step_count=30, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=1000, stateful_step_count=60, **_COMMON)  # type: ignore[arg-type]
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
TWO_ORDERS_EXAMPLES = {"ci": 15, "long": 300}.get(PROFILE, 15)

FILES = ("f0", "f1", "f2")
STEPS = ("fetched", "chunked", "embedded", "upserted", "switched", "cleaned")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ("created", "updated", "deleted")
# Figures of the run, printed by the long profile (tests/test_state_machine.py::test_zz_figures).
FIGURES: Counter[str] = Counter()


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the worker may catch it, just as nothing survives a killed process."""


@dataclass(frozen=True)
class Sent:
    """One change at the source, as its webhook describes it."""

    event_id: str
    file_id: str
    kind: str  # created | updated | deleted
    timestamp: datetime
    version: int | None = None
    sequencer: str | None = None
    # An unchanged re-send: the content of that earlier change of the file (its marker), not a new one.
    same_as: str | None = None

    @property
    def marker(self) -> str:
        """What the content of this change says (searches find it in every passage)."""
        return self.same_as or self.event_id.replace("-", "x")

    def body(self) -> dict[str, Any]:
        extra = {"sequencer": self.sequencer} if self.sequencer else {}
        return file_event(
            self.kind,
            self.file_id,
            version=self.version,
            timestamp=self.timestamp,
            content=None if self.kind == "deleted" else content_of(self),
            content_type=None if self.kind == "deleted" else "text/markdown",
            **extra,
        )


def content_of(e: Sent) -> str:
    # Several paragraphs so a version spans several chunks (a partial write would be visible).
    return "\n\n".join(f"Paragraph {i} of {e.marker} says {e.marker}p{i} about the topic." for i in range(3))


def model_key(e: Sent) -> tuple[Any, ...]:
    """The order rule, written independently of `stores.events`."""
    if e.version is not None:
        counter: tuple[Any, ...] = (2, e.version)
    elif e.sequencer is not None:
        counter = (1, e.sequencer.upper().ljust(64, "0"))  # AWS: right-pad, then compare as text
    else:
        counter = (0,)
    return (e.timestamp, KINDS.index(e.kind), counter, e.event_id)


def latest(events: Sequence[Sent]) -> Sent | None:
    return max(events, key=model_key, default=None)


class History:
    """A source that changes files: draws the next change of a file with every kind of key."""

    def __init__(self) -> None:
        self.clock = dict.fromkeys(FILES, 0)  # seconds after T0, per file
        self.counter = dict.fromkeys(FILES, 0)
        self.last_kind: dict[str, str] = {}
        self.last_content: dict[str, str] = {}
        self.n = 0

    def change(self, file_id: str, kind: str, keyed: str, step: int, unchanged: bool = False) -> Sent:
        self.n += 1
        self.clock[file_id] = max(0, self.clock[file_id] + step)
        version = sequencer = None
        if keyed == "version":
            self.counter[file_id] += 1
            version = self.counter[file_id]
        elif keyed == "restart":  # a path-keyed source starts counting again after a delete
            self.counter[file_id] = 1 if self.last_kind.get(file_id) == "deleted" else self.counter[file_id] + 1
            version = self.counter[file_id]
        elif keyed == "sequencer":
            self.counter[file_id] += 1
            # Growing, and of different lengths as S3's are: only right-padding compares them right.
            c = self.counter[file_id]
            sequencer = f"{c:04X}" + "F" * (c % 3)
        self.last_kind[file_id] = kind
        stamp = T0 + timedelta(seconds=self.clock[file_id])
        same_as = self.last_content.get(file_id) if unchanged and kind != "deleted" else None
        sent = Sent(f"evt-{self.n}", file_id, kind, stamp, version, sequencer, same_as)
        if kind != "deleted":
            self.last_content[file_id] = sent.marker
        return sent


KEYED = st.sampled_from(["version", "version", "restart", "none", "none", "sequencer"])
# 0: the same timestamp as the previous change; negative: a clock that disagrees with the counter.
STEP = st.sampled_from([0, 0, 1, 1, 2, 5, -1])
# A third of the changes re-send the file's previous content (periodic syncs, touches, S3 re-uploads).
UNCHANGED = st.sampled_from([False, False, True])


class LaggingListings:
    """A state store whose listings miss the events in flight, as DynamoDB's eventually consistent
    `by_status` index can: reconcile then cannot skip the files being written and must be safe anyway."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)

    def list_events(self, workspace: str, *, status: Any = None, **kw: Any) -> list[Any]:
        if status in IN_FLIGHT_STATUSES:
            return []
        return list(self._state.list_events(workspace, status=status, **kw))


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="eventrag-sm-"))
        self.interrupt: tuple[str, str, str] | None = None  # (step, event id, what: crash|repair|stale)
        self.stale_pick: Sent | None = None
        self.container = self._build()
        self.client = TestClient(create_app(self.container, start_worker=False))
        self.history = History()
        self.sent: list[Sent] = []
        self.delivered_order: list[str] = []  # event ids in order of first acceptance
        self.delivered: set[str] = set()
        self.disturbed: set[str] = set()  # files whose event statuses a stale writer may have changed
        FIGURES["histories"] += 1

    def _build(self) -> Container:
        s = base_settings(
            self.tmp,
            worker={"backoff_seconds": 0.0, "max_attempts": 1000, "mass_delete_share": 1.0, "batch_size": 3},
            chunking={"chunk_tokens": 40, "overlap_tokens": 8},
        )
        return build_container(s, embedder=HashEmbedder(), fault=self._fault)

    def _fault(self, step: str, event: FileEvent) -> None:
        if self.interrupt is None or self.interrupt[:2] != (step, event.event_id):
            return
        what = self.interrupt[2]
        self.interrupt = None
        if what == "crash":
            raise SimulatedCrash(step)
        if what == "repair":
            # An operator's repair lands in the middle of this write, with listings that may lag.
            state = LaggingListings(self.container.state) if self.lagging else self.container.state
            report = reconcile("acme", state=state, index=self.container.index, queue=self.container.queue, repair=True)
            bad = [p for p in report.problems if p.kind in ("missing", "incomplete", "version_mismatch")]
            assert not bad, bad  # the active revision is always whole: nothing to "repair" there
            FIGURES["repairs mid-write"] += 1
        elif what == "stale" and self.stale_pick is not None:
            # A second worker applies another event of the same file meanwhile (a lease that ran out).
            other = self.stale_pick
            self.container.worker.process([EventKey("acme", other.event_id)])
            self.disturbed.add(other.file_id)
            FIGURES["stale writers"] += 1

    def teardown(self) -> None:
        for eid in self.delivered:
            rec = self.container.state.get_event("acme", eid)
            if rec is not None and rec.detail and rec.detail.startswith("unchanged content"):
                FIGURES["unchanged re-sends kept"] += 1
        self.client.close()
        self.container.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # rules ---------------------------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        self.lagging = False

    @rule(file_id=st.sampled_from(FILES), kind=st.sampled_from(KINDS), keyed=KEYED, step=STEP, unchanged=UNCHANGED)
    def new_change(self, file_id: str, kind: str, keyed: str, step: int, unchanged: bool) -> None:
        """The source changes a file; the webhook is not delivered yet (it may be delayed or reordered)."""
        self.sent.append(self.history.change(file_id, kind, keyed, step, unchanged))
        FIGURES["steps"] += 1

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any sent event: out of order, and possibly again (a duplicate)."""
        e = data.draw(st.sampled_from(self.sent))
        raw, headers = sign(SECRET_ACME, e.body(), event_id=e.event_id)
        r = self.client.post("/webhooks", content=raw, headers=headers)
        if e.event_id in self.delivered:
            assert r.status_code == 200 and r.json()["duplicate"] is True
        else:
            assert r.status_code == 202, r.text
            self.delivered.add(e.event_id)
            self.delivered_order.append(e.event_id)
        FIGURES["steps"] += 1

    def _queued(self) -> list[str]:
        return [eid for eid in self.delivered_order if self._status(eid) in ("queued", "processing")]

    @rule(step=st.sampled_from(STEPS), data=st.data())
    def crash_during_drain(self, step: str, data: st.DataObject) -> None:
        """Kill the worker at one step of one queued event, restart, and drain."""
        queued = self._queued()
        if queued:
            self.interrupt = (step, data.draw(st.sampled_from(queued)), "crash")
        assert self.container.loop is not None
        with contextlib.suppress(SimulatedCrash):
            self.container.loop.drain()
        self.interrupt = None
        self._restart()
        self.container.loop.drain()
        FIGURES["steps"] += 1
        self.check_against_model()

    def _ensure_queued(self, file_id: str, n: int, data: st.DataObject) -> list[str]:
        """At least `n` delivered, unprocessed events of `file_id` (new changes are made and delivered)."""
        while True:
            queued = [eid for eid in self._queued() if self._by_id()[eid].file_id == file_id]
            if len(queued) >= n:
                return queued
            e = self.history.change(
                file_id, data.draw(st.sampled_from(KINDS)), data.draw(KEYED), data.draw(STEP), data.draw(UNCHANGED)
            )
            self.sent.append(e)
            self._post(e)

    def _by_id(self) -> dict[str, Sent]:
        return {e.event_id: e for e in self.sent}

    def _post(self, e: Sent) -> None:
        raw, headers = sign(SECRET_ACME, e.body(), event_id=e.event_id)
        r = self.client.post("/webhooks", content=raw, headers=headers)
        assert r.status_code == 202, r.text
        self.delivered.add(e.event_id)
        self.delivered_order.append(e.event_id)

    @rule(file_id=st.sampled_from(FILES), step=st.sampled_from(STEPS), lagging=st.booleans(), data=st.data())
    def repair_during_write(self, file_id: str, step: str, lagging: bool, data: st.DataObject) -> None:
        """`POST /reconcile?repair=true` at one step of one event's write (with listings that may miss the
        events in flight); then drain."""
        queued = self._ensure_queued(file_id, 1, data)
        self.interrupt = (step, data.draw(st.sampled_from(queued)), "repair")
        self.lagging = lagging
        assert self.container.loop is not None
        self.container.loop.drain()
        self.interrupt = None
        self.container.loop.drain()
        FIGURES["steps"] += 1
        self.check_against_model()

    @rule(file_id=st.sampled_from(FILES), step=st.sampled_from(STEPS), data=st.data())
    def stale_writer(self, file_id: str, step: str, data: st.DataObject) -> None:
        """While one event is being written, another worker applies another queued event of the same file."""
        queued = self._ensure_queued(file_id, 2, data)
        # The first in the queue is the one the loop works on; the other is handed to a second worker.
        first = queued[0]
        second = data.draw(st.sampled_from(queued[1:]))
        self.interrupt, self.stale_pick = (step, first, "stale"), self._by_id()[second]
        self.disturbed.add(file_id)
        assert self.container.loop is not None
        self.container.loop.drain()
        self.interrupt, self.stale_pick = None, None
        FIGURES["steps"] += 1
        self.check_against_model()

    @rule()
    def drain(self) -> None:
        assert self.container.loop is not None
        self.container.loop.drain()
        FIGURES["steps"] += 1
        self.check_against_model()

    @rule()
    def restart_process(self) -> None:
        """A clean restart with work still queued: nothing may be lost."""
        self._restart()
        FIGURES["steps"] += 1

    def _restart(self) -> None:
        """What a new process does at start: leases of the dead worker are released."""
        self.container.recover()

    # the reference model --------------------------------------------------------------------------------
    def _status(self, event_id: str) -> str:
        rec = self.container.state.get_event("acme", event_id)
        assert rec is not None
        return rec.status.value

    def model(self) -> tuple[dict[str, Sent | None], dict[str, str]]:
        """Per file the applied event, and per delivered event its status, by replaying arrival order."""
        by_id = {e.event_id: e for e in self.sent}
        applied: dict[str, Sent | None] = dict.fromkeys(FILES)
        statuses: dict[str, str] = {}
        for eid in self.delivered_order:
            e = by_id[eid]
            cur = applied[e.file_id]
            if cur is None or model_key(e) > model_key(cur):
                applied[e.file_id] = e
                statuses[eid] = "done"
            else:
                statuses[eid] = "superseded"
        return applied, statuses

    def check_against_model(self) -> None:
        if self.container.queue.pending():
            return  # only a fully drained queue has a defined outcome
        FIGURES["checks"] += 1
        applied, statuses = self.model()
        by_id = {e.event_id: e for e in self.sent}
        for eid, expected in statuses.items():
            got = self._status(eid)
            if by_id[eid].file_id in self.disturbed:
                assert got in ("done", "superseded"), (eid, got)
            else:
                assert got == expected, (eid, expected, got)
        check_index(self.container, applied)

    @invariant()
    def no_event_lost(self) -> None:
        for eid in self.delivered_order:
            assert self.container.state.get_event("acme", eid) is not None


def index_state(c: Container, files: Sequence[str]) -> dict[str, Any]:
    """What a user can observe of each file: its document record, its points, what a search returns.

    Revisions appear by their fingerprint (what the points are made of): a kept revision's full name says
    which event first wrote that content, which may depend on the order; what it holds may not."""
    counts = c.index.revision_counts("acme")
    out: dict[str, Any] = {}
    for f in files:
        doc = c.state.get_document("acme", f)
        hits = c.searcher.search(
            SearchRequest("acme", "paragraph topic", top_k=50, mode=SearchMode.DENSE, flt=SearchFilter(file_ids=(f,)))
        )
        out[f] = {
            # embedded/reused and updated_at are how the work went, not what the index holds
            "document": None
            if doc is None
            else (
                doc.status.value,
                doc.version,
                doc.position,
                revision_fingerprint(doc.revision),
                doc.chunk_count,
                doc.last_event_id,
            ),
            "points": sorted((revision_fingerprint(rev), n) for (fid, rev), n in counts.items() if fid == f),
            "search": sorted(h.text for h in hits),
            # What citations show: a kept revision's points follow the record's version.
            "versions": sorted({repr(h.version) for h in hits}),
        }
    return out


def check_index(c: Container, applied: dict[str, Sent | None]) -> None:
    observed = index_state(c, list(applied))
    for f, e in applied.items():
        doc, points, texts = observed[f]["document"], observed[f]["points"], observed[f]["search"]
        if e is None:
            assert doc is None and texts == [] and points == []
        elif e.kind == "deleted":
            assert doc is not None and doc[0] == "deleted" and doc[5] == e.event_id and doc[1] == e.version
            assert texts == [] and points == []
        else:
            assert doc is not None and doc[0] == "indexed" and doc[5] == e.event_id and doc[1] == e.version, doc
            assert texts and all(e.marker in t for t in texts)
            assert observed[f]["versions"] == [repr(e.version)], (observed[f]["versions"], e)
            # exactly the active revision's points: nothing stale, nothing missing
            assert points == [(doc[3], doc[4])]


IndexMachine.TestCase.settings = settings.get_profile(PROFILE)
TestIndexMachine = IndexMachine.TestCase


# order independence -------------------------------------------------------------------------------------
@st.composite
def histories(draw: st.DrawFn) -> list[Sent]:
    source = History()
    n = draw(st.integers(1, 10))
    files = FILES[:2]
    return [
        source.change(
            draw(st.sampled_from(files)), draw(st.sampled_from(KINDS)), draw(KEYED), draw(STEP), draw(UNCHANGED)
        )
        for _ in range(n)
    ]


@contextlib.contextmanager
def fresh_container() -> Iterator[tuple[Container, TestClient]]:
    tmp = Path(tempfile.mkdtemp(prefix="eventrag-orders-"))
    s = base_settings(
        tmp,
        worker={"backoff_seconds": 0.0, "mass_delete_share": 1.0, "batch_size": 4},
        chunking={"chunk_tokens": 40, "overlap_tokens": 8},
    )
    c = build_container(s, embedder=HashEmbedder())
    client = TestClient(create_app(c, start_worker=False))
    try:
        yield c, client
    finally:
        client.close()
        c.close()
        shutil.rmtree(tmp, ignore_errors=True)


def deliver_all(order: Sequence[Sent], drain_every: int) -> dict[str, Any]:
    with fresh_container() as (c, client):
        assert c.loop is not None
        for i, e in enumerate(order, start=1):
            raw, headers = sign(SECRET_ACME, e.body(), event_id=e.event_id)
            r = client.post("/webhooks", content=raw, headers=headers)
            assert r.status_code in (200, 202), r.text
            if i % drain_every == 0:
                c.loop.drain()
        c.loop.drain()
        return index_state(c, FILES[:2])


@settings(max_examples=TWO_ORDERS_EXAMPLES, **_COMMON)  # type: ignore[arg-type]
@given(history=histories(), data=st.data())
def test_the_same_events_in_two_orders_give_the_same_index(history: list[Sent], data: st.DataObject) -> None:
    """The same multiset of events delivered in two random orders (with duplicates, drained at random
    points) gives the same searchable content and document state, and that state is the model's."""
    with_duplicates = history + data.draw(st.lists(st.sampled_from(history), max_size=3))
    first = data.draw(st.permutations(with_duplicates))
    second = data.draw(st.permutations(with_duplicates))
    one = deliver_all(first, data.draw(st.integers(1, 4)))
    two = deliver_all(second, data.draw(st.integers(1, 4)))
    FIGURES["order pairs"] += 1
    if one != two:
        FIGURES["divergences"] += 1
    assert one == two
    for f in FILES[:2]:
        e = latest([s for s in history if s.file_id == f])
        doc = one[f]["document"]
        if e is None:
            assert doc is None
        else:
            assert doc is not None and doc[5] == e.event_id


def test_profile_is_ci_sized_by_default() -> None:
    # The long profile is for a deliberate long run; CI keeps the example count small.
    assert PROFILE != "ci" or settings.get_profile("ci").max_examples <= 50


def test_zz_figures() -> None:
    """Prints the figures of this run (after the tests above, in file order): `-s` shows them."""
    print(f"\nstate-machine figures ({PROFILE} profile): " + ", ".join(f"{k} {v}" for k, v in sorted(FIGURES.items())))
    assert FIGURES["histories"] > 0 or PROFILE != "long"
