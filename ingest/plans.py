"""What the ingest worker's steps hand each other (`ingest.worker` tells the steps): the `Plan` of one event,
made in steps 1-2 (`ingest.planning`) and carried through embedding (3) and applying (4-6,
`ingest.applying`, `ingest.keeping`); the `Outcome` each event ends a batch with; the worker's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from stores.embedding import Embedded
from stores.events import FileEvent
from stores.ports import Chunk, DocumentRecord, DocumentStatus, EventRecord
from stores.token_spans import SpanTokens
from stores.units import Layout

# A hook the crash tests use to kill the worker between steps; production passes none.
FaultHook = Callable[[str, FileEvent], None]


def no_fault(step: str, event: FileEvent) -> None:
    """The step hook when none is given: nothing happens between steps."""


class OutcomeKind(StrEnum):
    DONE = "done"
    SUPERSEDED = "superseded"
    RETRY = "retry"  # transient failure: deliver again after `delay`
    FAILED = "failed"  # gave up: recorded on the event and the document
    HELD = "held"


@dataclass(slots=True)
class Outcome:
    kind: OutcomeKind
    detail: str | None = None
    delay: float = 0.0

    @property
    def settled(self) -> bool:
        """The job can leave the queue."""
        return self.kind is not OutcomeKind.RETRY


class Action(StrEnum):
    INDEX = "index"
    KEEP = "keep"  # the active revision already holds exactly this content: record the new version only
    EMPTY = "empty"  # delete, or a version with nothing to index (skipped)
    FINISH = "finish"  # switched by an earlier attempt: clean up and mark done


@dataclass(slots=True)
class Plan:
    """What one event will do to the index, prepared (steps 1-2) and carried through steps 3-6."""

    record: EventRecord
    action: Action
    status: DocumentStatus = DocumentStatus.INDEXED
    revision: str | None = None
    kept: DocumentRecord | None = None  # KEEP: the record whose revision stays
    points: dict[str, int] = field(default_factory=dict)  # KEEP: the file's points per revision, when planned
    chunks: list[Chunk] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    unit_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per chunk, in its embed text
    layouts: list[Layout] = field(default_factory=list)  # per chunk
    token_counts: list[int] = field(default_factory=list)
    tokens: list[SpanTokens | None] = field(default_factory=list)  # per chunk, its model input when known
    title: str | None = None
    content_type: str | None = None  # for the document record: the parsed type and its charset
    indexed_type: str | None = None  # for the chunks: the parsed type alone (what filters match)
    reason: str | None = None
    vectors: list[Embedded] = field(default_factory=list)
    partial: dict[int, Embedded] = field(default_factory=dict)  # vectors known so far, by text index
    embedded: int = 0
    reused: int = 0

    @property
    def event(self) -> FileEvent:
        return self.record.event

    @property
    def waiting_for_vectors(self) -> bool:
        return self.action is Action.INDEX and bool(self.chunks) and not self.vectors


@dataclass(slots=True)
class WorkerConfig:
    max_attempts: int = 5
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    embed_batch_size: int = 32
    chunk_tokens: int = 200
    overlap_tokens: int = 40
    title_tokens: int = 24  # at most this many tokens of the title/path are embedded with every chunk
    # The mass-deletion brake: deletes wait as `held` when, within the window, they would remove more than
    # this share of a workspace's documents (and at least `mass_delete_min` of them). 1.0 turns it off.
    mass_delete_share: float = 0.2
    mass_delete_min: int = 5
    mass_delete_window_seconds: float = 600.0
