"""The worker loop is pipelined: while one claim is embedded and written, a helper thread claims and prepares
the next, so fetching, parsing and chunking run beside the model instead of before it. What it prepared
ahead is handed back at once when the round it was for never comes (a crash, a stop)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from stores.events import FileEvent
from stores.units import UnitVectors
from tests.conftest import Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event

FIRST = {"f0", "f1"}  # the first claim (batch_size 2, FIFO)
NEXT = {"f2", "f3"}


class Crash(BaseException):
    """Not an Exception: nothing in the worker catches it, as nothing survives a killed process."""


class WatchingEmbedder(HashEmbedder):
    """While embedding the first claim, waits (a bounded time) to see the next claim being prepared."""

    def __init__(self) -> None:
        super().__init__()
        self.next_fetched = threading.Event()
        self.seen_while_embedding_first: bool | None = None
        self.crash_on_first = False

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        if any("file f0" in t or "file f1" in t for t in texts) and self.seen_while_embedding_first is None:
            # Bounded: a loop that prepares only after embedding never sets it, and the test fails.
            self.seen_while_embedding_first = self.next_fetched.wait(timeout=30)
            if self.crash_on_first:
                raise Crash
        return super().embed_with_units(texts, spans)


@pytest.fixture
def watched(make_harness: Callable[..., Harness]) -> tuple[Harness, WatchingEmbedder]:
    model = WatchingEmbedder()

    def fault(step: str, event: FileEvent) -> None:
        if step == "fetched" and event.file_id in NEXT:
            model.next_fetched.set()

    # One text per embedding batch: every claim's texts are a full batch, embedded in its own round.
    h = make_harness(
        model=model, fault=fault, embedding_batch_size=1, worker={"batch_size": 2, "mass_delete_share": 1.0}
    )
    for f in sorted(FIRST | NEXT):
        h.post_event(file_event("created", f, content=f"This is file {f}, about {f} things.", version=1))
    return h, model


def indexed(h: Harness) -> set[str]:
    return {d["file_id"] for d in h.get("/documents").json()["documents"] if d["status"] == "indexed"}


def test_the_next_claim_is_prepared_while_the_current_one_is_embedded(
    watched: tuple[Harness, WatchingEmbedder],
) -> None:
    h, model = watched
    assert h.drain() == 4
    assert model.seen_while_embedding_first is True
    assert indexed(h) == FIRST | NEXT


def test_a_claim_prepared_ahead_is_handed_back_when_its_round_never_comes(
    watched: tuple[Harness, WatchingEmbedder],
) -> None:
    h, model = watched
    model.crash_on_first = True
    with pytest.raises(Crash):
        h.drain()
    assert model.seen_while_embedding_first is True
    loop = h.container.loop
    assert loop is not None
    assert loop.forget_carried() == 2  # the first claim's plans die with the "process"
    # The next claim's jobs were given back at once, not after their 600 s lease: claimable now. The
    # first claim's stay leased until the start-up recovery gives them back.
    assert h.drain() == 2
    assert indexed(h) == NEXT
    assert h.container.queue.release_dead_leases() == 2
    assert h.drain() == 2
    assert indexed(h) == FIRST | NEXT
