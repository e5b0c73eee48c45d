"""The ports both paths use: one small Protocol per external system, and the records they exchange.

Each docstring is the contract every adapter keeps; `tests/contracts/` runs the same tests against every
adapter. The embedded defaults (SQLite, a local queue in the same SQLite file, Qdrant on local disk) and the
AWS deployment (DynamoDB, SQS, Qdrant server) differ by one adapter per port, chosen in `app.container`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from stores.events import EventKey, EventStatus, FileEvent
from stores.outbox import Delivery
from stores.paging import Page

if TYPE_CHECKING:
    import numpy as np

    from stores.token_spans import SpanTokens
    from stores.units import Layout, UnitVectors


class DocumentStatus(StrEnum):
    PENDING = "pending"  # known, first event not applied yet
    INDEXED = "indexed"
    DELETED = "deleted"  # a tombstone: remembers the position of the delete
    SKIPPED = "skipped"  # the latest version cannot be parsed (reason in last_error); nothing indexed
    FAILED = "failed"  # the latest event failed; the previous active revision (if any) stays searchable


@dataclass(slots=True)
class EventRecord:
    event: FileEvent
    status: EventStatus
    received_at: datetime
    updated_at: datetime
    attempts: int = 0
    error: str | None = None
    detail: str | None = None
    confirmed: bool = False  # a held delete that an operator confirmed: the brake lets it through

    @property
    def event_id(self) -> str:
        return self.event.event_id

    @property
    def key(self) -> EventKey:
        return self.event.key


@dataclass(slots=True)
class DocumentRecord:
    workspace: str
    file_id: str
    path: str
    status: DocumentStatus
    position: str | None  # position of the last applied event (also for deletes: the tombstone)
    revision: str | None  # the revision whose points are searchable; None: nothing searchable
    version: int | None = None
    content_type: str | None = None
    chunk_count: int = 0
    embedded: int = 0  # chunks embedded for the active revision
    reused: int = 0  # chunks whose vectors came from the embedding cache
    last_event_id: str | None = None
    last_error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None


@dataclass(slots=True)
class WorkspaceStats:
    """What `GET /stats` shows for one workspace, read from the state store at one moment."""

    workspace: str
    documents: dict[str, int]  # by DocumentStatus value
    chunks: int  # chunks of the indexed documents
    embedded: int  # of those, chunks whose vectors the model made
    reused: int  # ... and chunks whose vectors came from the embedding cache
    events_last_hour: dict[str, int]  # received in the last hour, by EventStatus value
    events_last_day: dict[str, int]
    unsettled: int  # received, queued or processing: the workspace's share of the queue
    held: int  # deletes waiting for an operator
    oldest_unsettled_at: datetime | None = None


@dataclass(slots=True)
class Job:
    """A queued unit of work: apply one event. `receipt` is the adapter's handle for ack/release."""

    workspace: str
    event_id: str
    group_key: str
    receive_count: int
    receipt: str

    @property
    def key(self) -> EventKey:
        return EventKey(self.workspace, self.event_id)


class ActiveRevision(NamedTuple):
    """A file's searchable revision and the version the registry records for it (the current one)."""

    revision: str
    version: int | None


@runtime_checkable
class StateStore(Protocol):
    """Durable state: events (deduplicated by workspace and event id), the document registry.

    - Events are keyed by (workspace, event id): the same `webhook-id` in two workspaces is two events.
    - `add_event` is idempotent on the key: it returns the stored record and whether it was new. An existing
      record is returned unchanged, whatever the new payload says, except that a `rejected` record is
      replaced by a valid event (a refused delivery never swallows a later valid one with the same id).
    - `switch_document` is the compare-and-set that makes a revision searchable (or removes a file): one
      atomic write, applied only if the stored position is older than or equal to the record's (or absent,
      or written before the current order rule); returns whether it was applied. A stale writer can never
      replace newer work, whatever the timing. With `if_revision` (keeping a revision for unchanged
      content), it is applied only if the stored record's revision is still `if_revision` as well.
    - `note_document_error` marks the document failed only if the failing event's position (when given) is
      newer than the applied one.
    - `active_revisions` is what searches trust: a point is visible only if its revision is the one
      recorded here for its file; and the version recorded with it is the one its citations show (a kept
      revision moves to a newer version here only: the points keep the version they were written at).
    """

    def add_event(self, event: FileEvent, status: EventStatus) -> tuple[EventRecord, bool]: ...

    def get_event(self, workspace: str, event_id: str) -> EventRecord | None: ...

    def set_event_status(
        self,
        workspace: str,
        event_id: str,
        status: EventStatus,
        *,
        error: str | None = None,
        detail: str | None = None,
        count_attempt: bool = False,
        outbox: Sequence[Delivery] = (),
    ) -> EventRecord:
        """`outbox`: outbound webhook deliveries written in the same atomic step as the status."""
        ...

    def list_events(
        self,
        workspace: str,
        *,
        status: EventStatus | None = None,
        file_id: str | None = None,
        limit: int = 100,
    ) -> list[EventRecord]: ...

    def events_with_status(self, status: EventStatus, limit: int = 1000) -> list[EventRecord]:
        """Events of every workspace with `status`, oldest first (the sweep of `received` events)."""
        ...

    def purge_events(self, older_than: datetime) -> int: ...

    def reset_for_retry(self, workspace: str, event_id: str, *, confirmed: bool = False) -> EventRecord:
        """Back to `queued` with a fresh attempt budget (on-demand retry, confirmed held delete, repair)."""
        ...

    def count_recent_deletes(self, workspace: str, since: datetime) -> int:
        """Delete events of the workspace applied (`done`) since `since`."""
        ...

    def get_document(self, workspace: str, file_id: str) -> DocumentRecord | None: ...

    def list_documents(
        self, workspace: str, *, status: DocumentStatus | None = None, limit: int = 1000, offset: int = 0
    ) -> list[DocumentRecord]: ...

    def count_documents(self, workspace: str, status: DocumentStatus) -> int: ...

    def switch_document(self, record: DocumentRecord, *, if_revision: str | None = None) -> bool: ...

    def note_document_error(
        self,
        workspace: str,
        file_id: str,
        path: str,
        error: str,
        *,
        position: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """The file's latest event (`event_id`, kept as `last_event_id`) failed; the active revision stays.
        With `position`, only if that event is newer than the applied one (see the class docstring)."""
        ...

    def active_revisions(self, workspace: str, file_ids: Sequence[str]) -> dict[str, ActiveRevision]: ...

    def workspaces(self) -> list[str]: ...

    # listings for operators (GET /events, /documents, /stats): newest events first, documents by path;
    # `cursor` is the previous page's `next_cursor`; `total` counts every match of the filter
    def page_events(
        self,
        workspace: str,
        *,
        status: EventStatus | None = None,
        file_id: str | None = None,
        since: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[EventRecord]: ...

    def page_documents(
        self,
        workspace: str,
        *,
        status: DocumentStatus | None = None,
        path_prefix: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[DocumentRecord]: ...

    def workspace_stats(self, workspace: str, now: datetime) -> WorkspaceStats: ...

    def oldest_unsettled(self) -> datetime | None:
        """When the oldest event still received, queued or processing arrived, across workspaces."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """A block whose writes are committed together when it ends, each still atomic on its own (a write
        that fails inside it is undone alone): one commit for a batch of events instead of one per write.
        A crash inside the block loses all of them, so nothing outside the store may act on them before
        it ends. A store without multi-write transactions applies each write as it comes. Keep it short:
        other writers wait for it."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class JobQueue(Protocol):
    """At-least-once delivery of jobs, FIFO within a group, one job in flight per group.

    - A job is one event, named by its `EventKey` (workspace, event id).
    - `enqueue` is deduplicated on the key while the job is queued or in flight.
    - `claim` returns at most `limit` jobs, never two of one group, never a group whose head job is in
      flight or delayed; a claimed job is invisible for `lease_seconds`, then delivered again unless acked.
    - A lease belongs to the consumer that claimed it: only that consumer's receipt acks or releases it, and
      `release_dead_leases` (run at start-up) gives back only leases whose consumer is gone, never those of
      another live process sharing the queue.
    - `release` makes a claimed job visible again after `delay_seconds` (backoff), keeping its place.
    """

    def enqueue(self, key: EventKey, group_key: str) -> None: ...

    def requeue(self, key: EventKey, group_key: str) -> None:
        """Queue an event again on purpose (on-demand retry, a confirmed held delete, a repair): unlike
        `enqueue`, never swallowed by the deduplication of an earlier enqueue of the same event."""
        ...

    def claim(self, limit: int, lease_seconds: float) -> list[Job]: ...

    def ack(self, job: Job) -> None: ...

    def ack_many(self, jobs: Sequence[Job]) -> None:
        """`ack` for each job, in as few round trips (commits, requests) as the queue allows."""
        ...

    def release(self, job: Job, delay_seconds: float) -> None: ...

    def release_dead_leases(self) -> int:
        """Make jobs leased by consumers that no longer run claimable again; returns how many."""
        ...

    def pending(self) -> int: ...


class Embedder(Protocol):
    """Dense text embeddings from one model.

    `model_id` names the model (what fills the index); `max_tokens` is the model's window including special
    tokens; `count_tokens` uses the model's own tokenizer and counts special tokens too, so a text whose
    count is <= `max_tokens` is embedded whole. `embed_documents` keeps the input order.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def call_tokens(self) -> int:
        """What one more model call costs, in padded tokens (measured per backend): `embed_with_cache` cuts
        a batch short only where the padding it saves is worth that (`stores.embedding.padded_batches`)."""
        ...

    @property
    def runs(self) -> int:
        """How many model calls `embed_with_cache` may make at once, each on its share of the cores (set at
        construction): 1 for an embedder whose calls use every core themselves."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """`count_tokens([text[a:b] for a, b in spans])`, as one tokenization of `text` where the tokenizer
        allows (`stores.token_spans`): the chunker measures a document's sentences and chunks this way."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """`embed_documents`, and for each text the vectors of its character `spans` mean-pooled from the
        token embeddings of the same forward pass (`stores.units.pool_spans`): the vectors an answer scores
        its quotes by, at no extra model cost. None for a text whose span vectors this model cannot give."""
        ...


@runtime_checkable
class TokenReuse(Protocol):
    """An embedder that can take a chunk's model input from its document's tokenization (the one the chunker
    counted on, `stores.token_spans`) instead of tokenizing the chunk again."""

    def span_tokens(self, text: str, spans: Sequence[tuple[int, int]], prefix: str) -> list[SpanTokens | None]:
        """For each span of `text`, the tokens the model would get for `prefix + "\n" + text[a:b]` (the
        worker's embedded text), from one tokenization of `text`; None where they would not be exactly
        those."""
        ...

    def embed_tokens_with_units(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[tuple[int, int]]],
        tokens: Sequence[SpanTokens | None],
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """`embed_with_units`, using each text's tokens where given (from `span_tokens` of that text)."""
        ...


class EmbeddingCache(Protocol):
    """Content-addressed vectors: key = (model id, sha256 of the workspace and the exact text embedded).

    The workspace is part of the key so that one tenant can never observe (by `reused` counts or timing)
    whether another has indexed a passage."""

    def get_many(self, model_id: str, keys: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        """The entries found, each a flat float32 array (a text's vector, then any span vectors)."""
        ...

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray[Any, Any]]) -> None: ...


@dataclass(slots=True, frozen=True)
class FetchedFile:
    """The bytes of a file, and the media type its source gave them (an HTTP or S3 Content-Type), if any."""

    data: bytes
    content_type: str | None = None


class ContentSource(Protocol):
    """Returns the file an event points at. Raises `SourceNotFoundError` / `PathOutsideRootError` /
    `FetchRefusedError` for what a retry cannot fix, `SourceUnavailableError` otherwise."""

    def fetch(self, event: FileEvent) -> FetchedFile: ...


@dataclass(slots=True, frozen=True)
class Chunk:
    """A passage of a parsed document. `start`/`end` are character offsets into the parsed text."""

    index: int
    text: str
    start: int
    end: int
    heading: str | None = None  # the Markdown heading path the passage sits under, "A > B"
    token_count: int = 0
    # Where the passage is in the file: 1-based pages (PDF pages, slides) it starts and ends on, the sheet
    # of a workbook. None for formats without pages or sheets.
    page_start: int | None = None
    page_end: int | None = None
    sheet: str | None = None


@dataclass(slots=True)
class IndexPoint:
    """One chunk of one revision of one file, with its vectors, ready for the index."""

    workspace: str
    file_id: str
    path: str
    revision: str
    version: int | None
    content_type: str | None
    chunk: Chunk
    dense: list[float]
    sparse: tuple[list[int], list[float]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    # A vector per unit of the chunk's text (spans into `chunk.text`), stored in the payload for the answers.
    units: UnitVectors | None = None
    # The units of the chunk's text and their terms, stored in the payload for the answers.
    layout: Layout | None = None


@dataclass(slots=True, frozen=True)
class SearchFilter:
    """Restrictions applied inside every search; the workspace is always applied by the index itself."""

    file_ids: tuple[str, ...] = ()
    path_prefix: str | None = None
    content_types: tuple[str, ...] = ()
    metadata_equals: tuple[tuple[str, Any], ...] = ()
    metadata_any: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # (file_id, revision) pairs: restrict to exactly these revisions (re-reads after a concurrent switch)
    revisions: tuple[tuple[str, str], ...] = ()
    # Passages touching pages page_from..page_to (either bound optional), or in one of these sheets.
    page_from: int | None = None
    page_to: int | None = None
    sheets: tuple[str, ...] = ()


@dataclass(slots=True)
class Hit:
    """A passage a search found. `score` is what the mode ranks by (cosine in dense mode, BM25 in sparse,
    the fused rank score in hybrid); `similarity` and `keyword_score` are the two relevance signals, see
    `VectorIndex.search`."""

    point_id: str
    score: float
    workspace: str
    file_id: str
    path: str
    revision: str
    version: int | None
    chunk_index: int
    start: int
    end: int
    text: str
    heading: str | None = None
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    # Cosine similarity of the passage to the query's dense vector, when known: the relevance bar that
    # fused (rank-based) scores cannot give.
    similarity: float | None = None
    # BM25 score of the passage for the query's sparse vector, when known (0.0: it holds no query term).
    keyword_score: float | None = None
    page_start: int | None = None
    page_end: int | None = None
    sheet: str | None = None
    # The stored unit vectors as the payload holds them (`stores.units.UnitVectors.from_payload` reads them
    # when an answer quotes this passage); None for chunks indexed before they were stored.
    units: dict[str, Any] | None = None
    # The stored layout (`stores.units.Layout.from_payload` reads it), None for chunks indexed without one.
    layout: dict[str, Any] | None = None


class Ranked(NamedTuple):
    """One point of a ranking (`VectorIndex.rank`): what ranking needs, before the passage is read
    (`VectorIndex.hits`). `similarity` and `keyword_score` are set when the ranking itself gave them (the
    cosine in dense mode, the BM25 score in sparse mode)."""

    point_id: str
    score: float
    file_id: str
    revision: str
    similarity: float | None = None
    keyword_score: float | None = None


class SearchMode(StrEnum):
    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"


class VectorIndex(Protocol):
    """The searchable chunks of every workspace in one collection, filtered by workspace on every read.

    - Point ids are deterministic in (workspace, file id, revision, chunk index): writing a revision twice
      changes nothing.
    - `ensure_ready` creates the collection if missing and raises `EmbeddingModelMismatchError` when it was
      filled by another model.
    - `delete_file` removes a file's points except those of `keep_revision`; `delete_revisions` removes
      exactly the points of the given revisions (what the worker and reconcile use: a revision being
      written by a newer event is never touched).
    - `revisions_of` counts the points of each of `file_ids` per revision, in one read where the engine
      allows (a file without points is absent); `file_revisions` is the same for one file.
    - `search` never returns points of another workspace; it does not know which revision is active (the
      state store does), so callers filter hits by `StateStore.active_revisions`. `mode` decides what
      ranks (`Hit.score`); whatever the mode, when `dense` is given every hit carries `similarity` (its
      cosine to `dense`), and in sparse mode `keyword_score` too (equal to `score`).
    - `search` is `rank` then `hits`, and callers that drop or group hits call the two themselves: `rank`
      reads only ids and scores, and the file and revision of the points it keeps (a deep ranking of a
      thousand points would otherwise spend most of its time reading payloads it throws away), `hits`
      reads the passages of the points kept, in the order given, with `similarity` and `keyword_score` as
      `search` gives them. A point deleted since it was ranked (its file switched revisions) is absent
      from `hits`.
    - `rank` orders by score, and points of equal score by point id (`stores.points.settled`): engines give
      tied points in an order of their own (Qdrant Edge's fusion changes it from one process to the next),
      and which of them make the cut must depend only on what is indexed. A hybrid ranking fuses two
      candidate lists that each keep every point tied at their cut, at the rank they share.
    - `keyword_scores` is the BM25 score of each of `point_ids` (of `workspace`) for the sparse query: the
      score a sparse search would give it, 0.0 for a point that holds none of the query's terms. Callers
      ask it for the few hits they keep, since a fused (hybrid) or dense ranking does not carry it.
    """

    def ensure_ready(self, model_id: str, dimension: int) -> None: ...

    def recorded_model(self) -> str | None:
        """The embedding model id the index was created for (`ensure_ready`'s), or None if it does not
        exist yet. Reads only: creates nothing."""
        ...

    def upsert(self, points: Sequence[IndexPoint]) -> None: ...

    def delete_file(self, workspace: str, file_id: str, keep_revision: str | None = None) -> None: ...

    def delete_revisions(self, workspace: str, file_id: str, revisions: Sequence[str]) -> None: ...

    def file_revisions(self, workspace: str, file_id: str) -> dict[str, int]: ...

    def revisions_of(self, workspace: str, file_ids: Sequence[str]) -> dict[str, dict[str, int]]: ...

    def search(
        self,
        workspace: str,
        *,
        dense: list[float] | None,
        sparse: tuple[list[int], list[float]] | None,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter | None = None,
    ) -> list[Hit]: ...

    def rank(
        self,
        workspace: str,
        *,
        dense: list[float] | None,
        sparse: tuple[list[int], list[float]] | None,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter | None = None,
    ) -> list[Ranked]: ...

    def hits(self, workspace: str, ranked: Sequence[Ranked], dense: list[float] | None) -> list[Hit]: ...

    def keyword_scores(
        self, workspace: str, sparse: tuple[list[int], list[float]], point_ids: Sequence[str]
    ) -> dict[str, float]: ...

    def file_chunks(self, workspace: str, file_id: str, revision: str) -> list[Hit]: ...

    def revision_counts(self, workspace: str) -> dict[tuple[str, str], int]: ...

    def close(self) -> None: ...
