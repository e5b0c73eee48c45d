"""A Hypothesis state machine: random creates, updates, deletes, duplicate and reordered deliveries, and
crashes at every worker step, against a reference model of "the latest version wins".

The real webhook endpoint (signed deliveries over the ASGI HTTP stack), the real worker, real SQLite and real
Qdrant (local mode, in memory) run; only the embedder is a fast deterministic stand-in.

CI runs a few dozen examples; `HYPOTHESIS_PROFILE=long pytest tests/test_state_machine.py` runs many more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from qdrant_client import QdrantClient

from app.container import Container, build_container
from app.main import create_app
from retrieval.search import SearchRequest
from stores.events import FileEvent
from stores.ports import SearchFilter, SearchMode
from stores.sqlite.queue import SqliteJobQueue
from tests.conftest import SECRET_ACME, base_settings
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event, sign

# Each example builds a store and runs the real worker: no per-example deadline, and "slow" is expected.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", max_examples=25, stateful_step_count=30, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("long", max_examples=1000, stateful_step_count=60, **_COMMON)  # type: ignore[arg-type]
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

FILES = ("f0", "f1", "f2")
STEPS = ("fetched", "chunked", "embedded", "upserted", "switched", "cleaned")


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the worker may catch it, just as nothing survives a killed process."""


@dataclass(frozen=True)
class Sent:
    event_id: str
    file_id: str
    kind: str  # created | updated | deleted
    version: int

    @property
    def marker(self) -> str:
        return f"{self.file_id}x{self.version}"


def content_of(e: Sent) -> str:
    # Several paragraphs so a version spans several chunks (a partial write would be visible).
    return "\n\n".join(f"Paragraph {i} of {e.marker} says {e.marker}p{i} about the topic." for i in range(3))


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="eventrag-sm-"))
        self.crash_at: tuple[str, str] | None = None  # (step, event id)
        self.container = self._build()
        self.client = TestClient(create_app(self.container, start_worker=False))
        self.sent: list[Sent] = []
        self.next_version = dict.fromkeys(FILES, 0)
        self.delivered_order: list[str] = []  # event ids in order of first acceptance
        self.delivered: set[str] = set()

    def _build(self) -> Container:
        s = base_settings(
            self.tmp,
            worker={"backoff_seconds": 0.0, "max_attempts": 1000, "mass_delete_share": 1.0, "batch_size": 3},
            chunking={"chunk_tokens": 40, "overlap_tokens": 8},
        )
        return build_container(
            s, embedder=HashEmbedder(), qdrant_client=QdrantClient(location=":memory:"), fault=self._fault
        )

    def _fault(self, step: str, event: FileEvent) -> None:
        if self.crash_at == (step, event.event_id):
            self.crash_at = None
            raise SimulatedCrash(step)

    def teardown(self) -> None:
        self.client.close()
        self.container.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # rules ---------------------------------------------------------------------------------------------
    @initialize()
    def start(self) -> None:
        pass

    @rule(file_id=st.sampled_from(FILES), kind=st.sampled_from(["created", "updated", "deleted"]))
    def new_change(self, file_id: str, kind: str) -> None:
        """The source changes a file; the webhook is not delivered yet (it may be delayed or reordered)."""
        self.next_version[file_id] += 1
        v = self.next_version[file_id]
        self.sent.append(Sent(f"evt-{file_id}-{v}", file_id, kind, v))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any sent event: out of order, and possibly again (a duplicate)."""
        e = data.draw(st.sampled_from(self.sent))
        body = file_event(
            e.kind,
            e.file_id,
            version=e.version,
            content=None if e.kind == "deleted" else content_of(e),
            content_type=None if e.kind == "deleted" else "text/markdown",
        )
        raw, headers = sign(SECRET_ACME, body, event_id=e.event_id)
        r = self.client.post("/webhooks", content=raw, headers=headers)
        if e.event_id in self.delivered:
            assert r.status_code == 200 and r.json()["duplicate"] is True
        else:
            assert r.status_code == 202, r.text
            self.delivered.add(e.event_id)
            self.delivered_order.append(e.event_id)

    @rule(step=st.sampled_from(STEPS), data=st.data())
    def crash_during_drain(self, step: str, data: st.DataObject) -> None:
        """Kill the worker at one step of one queued event, restart, and drain."""
        queued = [eid for eid in self.delivered_order if self._status(eid) in ("queued", "processing")]
        if queued:
            self.crash_at = (step, data.draw(st.sampled_from(queued)))
        assert self.container.loop is not None
        with contextlib.suppress(SimulatedCrash):
            self.container.loop.drain()
        self.crash_at = None
        self._restart()
        self.container.loop.drain()
        self.check_against_model()

    @rule()
    def drain(self) -> None:
        assert self.container.loop is not None
        self.container.loop.drain()
        self.check_against_model()

    @rule()
    def restart_process(self) -> None:
        """A clean restart with work still queued: nothing may be lost."""
        self._restart()

    def _restart(self) -> None:
        """What a new process does at start: leases of the dead one are released."""
        assert isinstance(self.container.queue, SqliteJobQueue)
        self.container.recover()

    # the reference model --------------------------------------------------------------------------------
    def _status(self, event_id: str) -> str:
        rec = self.container.state.get_event(event_id)
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
            if cur is None or e.version > cur.version:
                applied[e.file_id] = e
                statuses[eid] = "done"
            else:
                statuses[eid] = "superseded"
        return applied, statuses

    def check_against_model(self) -> None:
        if self.container.queue.pending():
            return  # only a fully drained queue has a defined outcome
        applied, statuses = self.model()
        for eid, expected in statuses.items():
            assert self._status(eid) == expected, (eid, expected)
        counts = self.container.index.revision_counts("acme")
        for f in FILES:
            e = applied[f]
            doc = self.container.state.get_document("acme", f)
            hits = self.container.searcher.search(
                SearchRequest(
                    "acme",
                    "paragraph topic",
                    top_k=50,
                    mode=SearchMode.DENSE,
                    flt=SearchFilter(file_ids=(f,)),
                )
            )
            points = {rev: n for (fid, rev), n in counts.items() if fid == f}
            if e is None:
                assert doc is None and hits == [] and points == {}
            elif e.kind == "deleted":
                assert doc is not None and doc.status.value == "deleted" and doc.version == e.version
                assert hits == [] and points == {}
            else:
                assert doc is not None and doc.status.value == "indexed" and doc.version == e.version
                assert {h.version for h in hits} == {e.version}
                assert all(e.marker in h.text for h in hits)
                # exactly the active revision's points: nothing stale, nothing missing
                assert list(points.values()) == [doc.chunk_count] and len(points) == 1

    @invariant()
    def no_event_lost(self) -> None:
        for eid in self.delivered_order:
            assert self.container.state.get_event(eid) is not None


IndexMachine.TestCase.settings = settings.get_profile(PROFILE)
TestIndexMachine = IndexMachine.TestCase


def test_profile_is_ci_sized_by_default() -> None:
    # The long profile is for a deliberate long run; CI keeps the example count small.
    assert PROFILE != "ci" or settings.get_profile("ci").max_examples <= 50
