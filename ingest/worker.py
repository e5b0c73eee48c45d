"""The ingest worker: applies queued file events to the index so it always equals the latest version of
every file, under at-least-once, out-of-order delivery and crashes.

For each event:

1. *decide*: older than what is applied for the file (the order rule of `stores.events`) -> `superseded`,
   index untouched; already switched by an earlier attempt that died before finishing -> only clean up
   (or, when the switched revision lost points, write them again: what a reconcile repair asks for).
2. *prepare*: fetch, then fingerprint what the points would be made of (`ingest.revisions`). The file's
   active revision has that fingerprint -> *keep* it: no parsing, chunking, embedding or writing. Else
   parse and chunk (a type we cannot parse -> the file is `skipped`, its old chunks go).
3. *embed*: the chunks of the whole batch together, cache first (per workspace), the rest sorted by length
   (`ingest.worker_loop` carries the texts of a partial batch into the next round).
4. *write*: upsert the new revision's points (deterministic ids; invisible until step 5).
5. *switch*: a compare-and-set of the document record makes the new revision the searchable one, only if
   nothing newer was applied meanwhile; if something was, this event is superseded and its points go. A
   kept revision is switched by the same compare-and-set, which also requires the revision to be still
   the active one; its points are not written (citations take the version from the record).
6. *clean up*: delete the file's points of revisions older than this event (never the active one, never
   a newer one being written); mark the event done.

A crash anywhere before 5 leaves the old revision searchable and the event queued; a crash after 5 is
finished by the retry (step 1 sees the switch). Searches trust only the revision recorded in step 5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath

from ingest.chunking import Chunker
from ingest.errors import PermanentError, SourceNotFoundError, SourceUnavailableError, UnsupportedContentError
from ingest.notifications import Change, deliveries_for
from ingest.parsing import ParsedDocument, parse
from ingest.revisions import fingerprint, is_older, revision_fingerprint, revision_name, revision_position
from stores.embedding import Embedded, embed_with_cache
from stores.events import (
    EventKey,
    EventStatus,
    EventType,
    FileEvent,
    describe_position,
    explain_order,
    parse_position,
    position_is_newer,
)
from stores.outbox import Delivery, Outbound, OutboundType
from stores.ports import (
    Chunk,
    ContentSource,
    DocumentRecord,
    DocumentStatus,
    Embedder,
    EmbeddingCache,
    EventRecord,
    IndexPoint,
    StateStore,
    TokenReuse,
    VectorIndex,
)
from stores.sparse import Bm25Encoder
from stores.telemetry import (
    CHUNKS,
    EVENTS_APPLIED,
    EVENTS_FAILED,
    EVENTS_HELD,
    EVENTS_RETRIED,
    INGEST_LAG,
    bind,
)
from stores.token_spans import SpanTokens
from stores.units import unit_spans

log = logging.getLogger(__name__)

# A hook the crash tests use to kill the worker between steps; production passes none.
FaultHook = Callable[[str, FileEvent], None]
# Told about deliveries just written to the outbox (wakes the local relay, or queues them on AWS).
OutboxHook = Callable[[Sequence[Delivery]], None]

_CHANGE_OF = {
    DocumentStatus.INDEXED: OutboundType.DOCUMENT_INDEXED,
    DocumentStatus.DELETED: OutboundType.DOCUMENT_DELETED,
    DocumentStatus.SKIPPED: OutboundType.DOCUMENT_SKIPPED,
    DocumentStatus.FAILED: OutboundType.DOCUMENT_FAILED,
}
# Bytes, content type, path -> parsed text: `ingest.parsing.parse`, or the sandboxed `ingest.sandbox.ParserPool`.
Parser = Callable[[bytes, str | None, str], ParsedDocument]


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


class _Action(StrEnum):
    INDEX = "index"
    KEEP = "keep"  # the active revision already holds exactly this content: record the new version only
    EMPTY = "empty"  # delete, or a version with nothing to index (skipped)
    FINISH = "finish"  # switched by an earlier attempt: clean up and mark done


@dataclass(slots=True)
class Plan:
    """What one event will do to the index, prepared (steps 1-2) and carried through steps 3-6."""

    record: EventRecord
    action: _Action
    status: DocumentStatus = DocumentStatus.INDEXED
    revision: str | None = None
    kept: DocumentRecord | None = None  # KEEP: the record whose revision stays
    points: dict[str, int] = field(default_factory=dict)  # KEEP: the file's points per revision, when planned
    chunks: list[Chunk] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    unit_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per chunk, in its embed text
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
        return self.action is _Action.INDEX and bool(self.chunks) and not self.vectors


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


class IngestWorker:
    def __init__(
        self,
        *,
        state: StateStore,
        index: VectorIndex,
        embedder: Embedder,
        sources: ContentSource,
        cache: EmbeddingCache | None = None,
        sparse: Bm25Encoder | None = None,
        config: WorkerConfig | None = None,
        fault: FaultHook | None = None,
        outbound: Outbound | None = None,
        on_outbox: OutboxHook | None = None,
        parser: Parser | None = None,
    ) -> None:
        self.parser: Parser = parser or parse
        self.state = state
        self.index = index
        self.embedder = embedder
        self.sources = sources
        self.cache = cache
        self.sparse = sparse
        self.config = config or WorkerConfig()
        self.fault = fault
        self.outbound = outbound
        self.on_outbox = on_outbox
        self._started: dict[EventKey, float] = {}  # when each event's attempt began (for the settle log line)

    def _step(self, name: str, event: FileEvent) -> None:
        if self.fault is not None:
            self.fault(name, event)

    # the batch ----------------------------------------------------------------------------------------
    def process(self, keys: Sequence[EventKey]) -> dict[EventKey, Outcome]:
        """Apply a batch of events (at most one per file). Returns an outcome per event key."""
        outcomes, plans = self.prepare(keys)
        ready, failed = self.embed(plans)
        outcomes.update(failed)
        outcomes.update(self.apply(ready))
        return outcomes

    def prepare(self, keys: Sequence[EventKey]) -> tuple[dict[EventKey, Outcome], list[Plan]]:
        """Steps 1 and 2 for each event: the outcomes already settled, and the plans still to carry out."""
        outcomes: dict[EventKey, Outcome] = {}
        plans: list[Plan] = []
        deletes_in_batch: dict[str, int] = {}
        started: list[EventRecord] = []
        with self.state.batch():  # the attempts of the whole batch: one commit, before any work
            for key in keys:
                record = self.state.get_event(key.workspace, key.event_id)
                if record is None:
                    outcomes[key] = Outcome(OutcomeKind.DONE, "unknown event id (expired or never stored)")
                    continue
                if record.status in (
                    EventStatus.DONE,
                    EventStatus.SUPERSEDED,
                    EventStatus.FAILED,
                    EventStatus.HELD,
                    EventStatus.REJECTED,
                ):
                    # A redelivery of something already settled: nothing to do.
                    kind = (
                        OutcomeKind.DONE if record.status is EventStatus.REJECTED else OutcomeKind(record.status.value)
                    )
                    outcomes[key] = Outcome(kind, "already settled")
                    continue
                started.append(
                    self.state.set_event_status(key.workspace, key.event_id, EventStatus.PROCESSING, count_attempt=True)
                )
                self._started[key] = time.perf_counter()
        # What each file's points are now, in one read per workspace (step 1 and the keep check need it).
        points = self._revisions_of([r.event for r in started])
        for record in started:
            key = record.event.key
            try:
                with bind(**_fields(record.event)):
                    plan = self._plan(record, deletes_in_batch, points.get(key, {}))
            except Exception as exc:
                outcomes[key] = self._failure(record, exc)
                continue
            if isinstance(plan, Outcome):
                outcomes[key] = plan
            else:
                plans.append(plan)
        for key in outcomes:  # settled (or sent back to the queue) already
            self._started.pop(key, None)
        return outcomes, plans

    def embed(
        self, plans: Sequence[Plan], *, whole_batches_only: bool = False
    ) -> tuple[list[Plan], dict[EventKey, Outcome]]:
        """Step 3 for the plans (oldest first): returns the plans now ready to apply (every vector known) and
        the failures. With `whole_batches_only`, texts that would make a partial batch are left for a later
        call, and so are the plans they belong to (`WorkerLoop` carries them)."""
        to_embed = [p for p in plans if p.waiting_for_vectors]
        failed: dict[EventKey, Outcome] = {}
        if to_embed:
            try:
                self._embed(to_embed, whole_batches_only)
            except Exception as exc:
                for p in to_embed:
                    failed[p.event.key] = self._failure(p.record, exc)
                    self._started.pop(p.event.key, None)
        ready = [p for p in plans if p.event.key not in failed and not p.waiting_for_vectors]
        return ready, failed

    def apply(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """Steps 4 to 6 for plans whose vectors are known."""
        keeps = [p for p in plans if p.action is _Action.KEEP]
        outcomes = self._keep(keeps) if keeps else {}
        for plan in plans:
            if plan.action is _Action.FINISH:
                try:
                    with bind(**_fields(plan.event)):
                        outcomes[plan.event.key] = self._finish(plan)
                except Exception as exc:
                    outcomes[plan.event.key] = self._failure(plan.record, exc)
        written = [p for p in plans if p.action in (_Action.INDEX, _Action.EMPTY)]
        if written:
            outcomes.update(self._apply(written))
        for plan in plans:
            self._started.pop(plan.event.key, None)
        return outcomes

    # settling: the event's final status, its outbox rows, one log line and the metrics, together ---------
    def _settle(
        self,
        record: EventRecord,
        status: EventStatus,
        *,
        detail: str | None = None,
        error: str | None = None,
        change: Change | None = None,
        summary: str | None = None,
        told: list[Delivery] | None = None,
    ) -> None:
        """With `told` (settling inside a `StateStore.batch`), the deliveries are added to it for `_tell`
        after the commit instead of being handed to the relay now."""
        ev = record.event
        outbox = deliveries_for(self.outbound, record, change) if change is not None else []
        self.state.set_event_status(ev.workspace, ev.event_id, status, detail=detail, error=error, outbox=outbox)
        if told is None:
            self._tell(outbox)
        else:
            told.extend(outbox)
        lag = (datetime.now(UTC) - record.received_at).total_seconds()
        INGEST_LAG.observe(max(0.0, lag))
        started = self._started.get(ev.key)
        took = f", {time.perf_counter() - started:.1f} s" if started is not None else ""
        kind = ev.type.value
        if status is EventStatus.FAILED:
            EVENTS_FAILED.labels(kind).inc()
            log.warning("failed %s: %s%s", ev.path, error, took, extra=_fields(ev))
        elif status is EventStatus.HELD:
            EVENTS_HELD.inc()
            log.warning("held delete of %s: %s", ev.path, detail, extra=_fields(ev))
        else:
            result = change.status if change is not None else status.value
            EVENTS_APPLIED.labels(kind, result).inc()
            log.info("%s%s", summary or f"{result} {ev.path}", took, extra=_fields(ev))

    def _tell(self, outbox: Sequence[Delivery]) -> None:
        if outbox and self.on_outbox is not None:
            try:
                self.on_outbox(outbox)
            except Exception:  # the rows are durable; the relay's sweep sends them anyway
                log.warning("could not hand %d delivery(ies) to the relay now", len(outbox), exc_info=True)

    # 1 + 2: decide and prepare ------------------------------------------------------------------------
    def _plan(self, record: EventRecord, deletes_in_batch: dict[str, int], points: dict[str, int]) -> Plan | Outcome:
        """`points`: the file's points per revision, read for the batch before its plans."""
        ev = record.event
        doc = self.state.get_document(ev.workspace, ev.file_id)
        if doc is not None and doc.position is not None and not position_is_newer(ev.position, doc.position):
            if ev.position != doc.position:
                return self._superseded_at_start(record, doc)
            # This event's own switch happened; the attempt died after it, or a repair asks to rewrite it.
            if not _points_lost(doc, points):
                return Plan(record, _Action.FINISH, revision=doc.revision)
        if ev.type is EventType.DELETED:
            return self._plan_delete(record, deletes_in_batch)
        try:
            fetched = self.sources.fetch(ev)
        except SourceNotFoundError:
            if ev.resync:  # the source said "look again", and the file is gone: that is a delete
                return self._plan_delete(record, deletes_in_batch)
            raise
        self._step("fetched", ev)
        # The event's content type wins; the source's (an HTTP or S3 Content-Type) fills in for none.
        content_type = ev.content_type or fetched.content_type
        cfg = self.config
        print_ = fingerprint(
            ev,
            fetched.data,
            content_type=content_type,
            model_id=self.embedder.model_id,
            chunking=(cfg.chunk_tokens, cfg.overlap_tokens, cfg.title_tokens, int(self.sparse is not None)),
        )
        if (
            doc is not None
            and doc.revision is not None
            and doc.status in (DocumentStatus.INDEXED, DocumentStatus.FAILED)
            and revision_fingerprint(doc.revision) == print_
            and not _points_lost(doc, points)
        ):
            return Plan(
                record, _Action.KEEP, revision=doc.revision, kept=doc, points=points, content_type=doc.content_type
            )
        try:
            parsed = self.parser(fetched.data, content_type, ev.path)
        except UnsupportedContentError as exc:
            skipped = DocumentStatus.SKIPPED
            return Plan(record, _Action.EMPTY, status=skipped, reason=str(exc), content_type=content_type)
        title = parsed.title or PurePosixPath(ev.path).name
        prefix, prefix_tokens = self._title_prefix(title, ev.path)
        reserved = max(0, prefix_tokens - 2)  # the prefix shares [CLS]/[SEP]
        chunker = Chunker(
            count_tokens=self.embedder.count_tokens,
            max_tokens=self.embedder.max_tokens,
            chunk_tokens=min(cfg.chunk_tokens, self.embedder.max_tokens - reserved),
            overlap_tokens=cfg.overlap_tokens,
            reserved_tokens=reserved,
            token_offsets=self.embedder.token_offsets,
            count_spans=self.embedder.count_spans,
        )
        chunks = chunker.chunk(parsed.text, boundaries=[loc.start for loc in parsed.locations])
        if parsed.locations:
            chunks = [self._locate(parsed, c) for c in chunks]
        self._step("chunked", ev)
        if not chunks:
            return Plan(
                record,
                _Action.EMPTY,
                status=DocumentStatus.INDEXED,
                title=title,
                content_type=_recorded_type(parsed),
                reason="the file has no text",
            )
        return Plan(
            record,
            _Action.INDEX,
            revision=revision_name(ev.position, print_),
            chunks=chunks,
            embed_texts=[f"{prefix}\n{c.text}" for c in chunks],
            tokens=self._chunk_tokens(parsed.text, chunks, prefix),
            # Each chunk's units, as spans of its embedded text: their vectors come from the same pass.
            unit_spans=[[(a + len(prefix) + 1, b + len(prefix) + 1) for a, b in unit_spans(c.text)] for c in chunks],
            token_counts=[c.token_count + reserved for c in chunks],
            title=title,
            content_type=_recorded_type(parsed),
            indexed_type=parsed.content_type,
        )

    def _superseded_at_start(self, record: EventRecord, doc: DocumentRecord) -> Outcome:
        ev = record.event
        assert doc.position is not None
        if ev.type is not EventType.DELETED:
            # An earlier attempt of this event may have written points and died before its switch (or, as a
            # stale writer, lost the race after writing): they can never become active, so they go. The
            # active revision stays whatever its name says (a kept revision may carry this position).
            own = [
                r
                for r in self.index.file_revisions(ev.workspace, ev.file_id)
                if revision_position(r) == ev.position and r != doc.revision
            ]
            self.index.delete_revisions(ev.workspace, ev.file_id, own)
        detail = (
            f"not newer than what is applied: {describe_position(doc.position)} wins, because"
            f" {explain_order(doc.position, ev.position)}"
        )
        self._settle(record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
        return Outcome(OutcomeKind.SUPERSEDED, detail)

    def _plan_delete(self, record: EventRecord, deletes_in_batch: dict[str, int]) -> Plan | Outcome:
        ev = record.event
        if not record.confirmed and (why := self._brake(ev.workspace, deletes_in_batch)):
            change = Change(OutboundType.EVENT_HELD, EventStatus.HELD.value, error=why)
            self._settle(record, EventStatus.HELD, detail=why, change=change)
            return Outcome(OutcomeKind.HELD, why)
        deletes_in_batch[ev.workspace] = deletes_in_batch.get(ev.workspace, 0) + 1
        return Plan(record, _Action.EMPTY, status=DocumentStatus.DELETED)

    def _set_status(
        self, ev: FileEvent, status: EventStatus, *, error: str | None = None, detail: str | None = None
    ) -> EventRecord:
        return self.state.set_event_status(ev.workspace, ev.event_id, status, error=error, detail=detail)

    @staticmethod
    def _locate(parsed: ParsedDocument, chunk: Chunk) -> Chunk:
        page_start, page_end, sheet = parsed.locate(chunk.start, chunk.end)
        return replace(chunk, page_start=page_start, page_end=page_end, sheet=sheet)

    def _brake(self, workspace: str, deletes_in_batch: dict[str, int]) -> str | None:
        """Why this delete must wait for confirmation, or None. A sync bug or a wiped source folder shows
        up as a burst of deletes; holding them costs a confirmation, applying them costs the index."""
        cfg = self.config
        if cfg.mass_delete_share >= 1.0:
            return None
        since = datetime.now(UTC) - timedelta(seconds=cfg.mass_delete_window_seconds)
        applied = self.state.count_recent_deletes(workspace, since)
        held = self.state.page_events(workspace, status=EventStatus.HELD, limit=1).total  # a count, no payloads
        burst = applied + held + deletes_in_batch.get(workspace, 0) + 1
        if burst < cfg.mass_delete_min:
            return None  # no burst: the workspace's documents need not be counted (a read of all of them)
        size = self.state.count_documents(workspace, DocumentStatus.INDEXED) + applied
        if burst >= cfg.mass_delete_min and burst > cfg.mass_delete_share * size:
            return (
                f"held by the mass-deletion brake: {burst} deletes within {cfg.mass_delete_window_seconds:.0f} s"
                f" would remove more than {cfg.mass_delete_share:.0%} of {size} documents; confirm to apply"
            )
        return None

    def _title_prefix(self, title: str, path: str) -> tuple[str, int]:
        """What identifies the document in every chunk's vector: its title, or its path; and its tokens."""
        text = title if title == PurePosixPath(path).name else f"{title} ({path})"
        counts = self.embedder.count_tokens([text])[0]
        while counts - 2 > self.config.title_tokens and len(text) > 8:
            text = text[: int(len(text) * 0.8)]
            counts = self.embedder.count_tokens([text])[0]
        return text, counts

    # 3: embed, across the whole batch -----------------------------------------------------------------
    def _chunk_tokens(self, text: str, chunks: Sequence[Chunk], prefix: str) -> list[SpanTokens | None]:
        """Each chunk's model input (`prefix` + newline + chunk) from the document's tokenization, which the
        chunker just made, where the embedder can take it (`TokenReuse`); None for the rest."""
        if not isinstance(self.embedder, TokenReuse):
            return [None] * len(chunks)
        given = self.embedder.span_tokens(text, [(c.start, c.end) for c in chunks], prefix)
        # The tokens are the document's at the chunk's span: only as good as the chunk's text is that span.
        return [t if text[c.start : c.end] == c.text else None for c, t in zip(chunks, given, strict=True)]

    def _embed(self, plans: list[Plan], whole_batches_only: bool) -> None:
        """Embed the texts of `plans` (cache first); a plan gets its vectors once all of its texts have one
        (the vectors of a plan left half done wait on it for the next call)."""
        wanted = [(p, i) for p in plans for i in range(len(p.embed_texts)) if i not in p.partial]
        vectors, stats = embed_with_cache(
            self.embedder,
            self.cache,
            [p.embed_texts[i] for p, i in wanted],
            [p.token_counts[i] for p, i in wanted],
            self.config.embed_batch_size,
            scopes=[p.event.workspace for p, _ in wanted],
            spans=[p.unit_spans[i] for p, i in wanted],
            whole_batches_only=whole_batches_only,
            tokens=[p.tokens[i] if p.tokens else None for p, i in wanted],
        )
        for (p, i), vec, cached in zip(wanted, vectors, stats.cached, strict=True):
            if vec is not None:
                p.partial[i] = vec
                p.reused += int(cached)
        for p in plans:
            n = len(p.embed_texts)
            if len(p.partial) == n:
                p.vectors = [p.partial[i] for i in range(n)]
                p.embedded = n - p.reused
                p.partial = {}
                self._step("embedded", p.event)

    # 4 - 6: write, switch, clean up -------------------------------------------------------------------
    def _switch_in_one_commit(
        self, plans: Sequence[Plan], switch: Callable[[Plan], bool]
    ) -> dict[EventKey, bool | Exception]:
        """Each plan's switch, all in one commit (`StateStore.batch`): whether it switched, or the exception
        of one that failed (its write is undone alone; the others stand)."""
        switched: dict[EventKey, bool | Exception] = {}
        with self.state.batch():
            for plan in plans:
                try:
                    switched[plan.event.key] = switch(plan)
                except Exception as exc:
                    switched[plan.event.key] = exc
        return switched

    def _finish(self, plan: Plan) -> Outcome:
        ev = plan.event
        self._drop_older_revisions([(ev, plan.revision)])
        doc = self.state.get_document(ev.workspace, ev.file_id)
        change = None
        # Told only if the document is still as this event made it: not when a newer event has been
        # applied since, nor when a later event's failure marked it (that failure was told already).
        if doc is not None and doc.position == ev.position and doc.status is not DocumentStatus.FAILED:
            change = Change(
                _CHANGE_OF.get(doc.status, OutboundType.DOCUMENT_INDEXED),
                doc.status.value,
                chunk_count=doc.chunk_count,
                embedded=doc.embedded,
                reused=doc.reused,
                error=doc.last_error,
            )
        finished = doc.status.value if change is not None and doc is not None else "done"
        self._settle(
            plan.record,
            EventStatus.DONE,
            detail="finished after an interrupted attempt",
            change=change,
            summary=f"{finished} {ev.path}{_version(ev)} (finished after an interrupted attempt)",
        )
        return Outcome(OutcomeKind.DONE)

    def _apply(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """Steps 4 to 6 for INDEX and EMPTY plans: each event's points written, then every switch in one
        commit, the older revisions of every file found in one read and dropped, every event settled in one
        commit (an fsync each: a commit per event was 2 ms of each document's ingest). Each event still goes
        write, switch, clean up, settle, so a crash between two of them leaves it to be finished by its retry
        (step 1), as for one event; a write that fails is undone alone (`StateStore.batch`)."""
        outcomes: dict[EventKey, Outcome] = {}
        written: list[tuple[Plan, DocumentRecord | None, str | None]] = []
        for plan in plans:
            with bind(**_fields(plan.event)):
                try:
                    written.append(
                        (plan, self.state.get_document(plan.event.workspace, plan.event.file_id), self._write(plan))
                    )
                except Exception as exc:
                    outcomes[plan.event.key] = self._failure(plan.record, exc)
        revisions = {plan.event.key: revision for plan, _, revision in written}
        switched = self._switch_in_one_commit(
            [plan for plan, _, _ in written],
            lambda plan: self.state.switch_document(self._record_of(plan, revisions[plan.event.key])),
        )
        done: list[tuple[Plan, DocumentRecord | None, str | None]] = []
        for plan, previous, revision in written:
            ev, result = plan.event, switched[plan.event.key]
            with bind(**_fields(ev)):
                try:
                    if isinstance(result, Exception):
                        raise result
                    if not result:
                        # A newer event was applied while this one was prepared (another worker, a lease that
                        # ran out): the compare-and-set refused the stale write. Its points can never become
                        # active: they go.
                        if revision is not None:
                            self.index.delete_revisions(ev.workspace, ev.file_id, [revision])
                        outcomes[ev.key] = self._superseded_at_switch(plan.record)
                        continue
                    self._step("switched", ev)
                    done.append((plan, previous, revision))
                except Exception as exc:
                    outcomes[ev.key] = self._failure(plan.record, exc)
        try:
            self._drop_older_revisions([(plan.event, revision) for plan, _, revision in done])
        except Exception as exc:  # the switches stand: each event's retry finishes it (step 1)
            outcomes.update({plan.event.key: self._failure(plan.record, exc) for plan, _, _ in done})
            done = []
        told: list[Delivery] = []
        failures: dict[EventKey, Exception] = {}
        for plan, _, _ in done:
            try:  # (outside the settle's transaction: a step may well read the state from another thread)
                self._step("cleaned", plan.event)
            except Exception as exc:
                failures[plan.event.key] = exc
        with self.state.batch():
            for plan, previous, _ in done:
                if plan.event.key in failures:
                    continue
                with bind(**_fields(plan.event)):
                    try:
                        outcomes[plan.event.key] = self._settle_applied(plan, previous, told)
                    except Exception as exc:
                        failures[plan.event.key] = exc
        self._tell(told)
        for plan, _, _ in done:
            if plan.event.key in failures:
                outcomes[plan.event.key] = self._failure(plan.record, failures[plan.event.key])
        return outcomes

    def _write(self, plan: Plan) -> str | None:
        """Step 4: an INDEX plan's points, under its revision (returned; None for EMPTY)."""
        if plan.action is not _Action.INDEX:
            return None
        ev, revision = plan.event, plan.revision
        assert revision is not None
        sparse = (
            self.sparse.encode_documents(plan.embed_texts) if self.sparse is not None else [None] * len(plan.chunks)
        )
        points = [
            IndexPoint(
                workspace=ev.workspace,
                file_id=ev.file_id,
                path=ev.path,
                revision=revision,
                version=ev.version,
                content_type=plan.indexed_type,
                chunk=chunk,
                dense=vec.vector,
                sparse=sp,
                metadata=dict(ev.metadata),
                title=plan.title,
                units=vec.units.shifted(-(len(text) - len(chunk.text))) if vec.units is not None else None,
            )
            for chunk, text, vec, sp in zip(plan.chunks, plan.embed_texts, plan.vectors, sparse, strict=True)
        ]
        self.index.upsert(points)
        self._step("upserted", ev)
        return revision

    @staticmethod
    def _record_of(plan: Plan, revision: str | None) -> DocumentRecord:
        ev = plan.event
        return DocumentRecord(
            workspace=ev.workspace,
            file_id=ev.file_id,
            path=ev.path,
            status=plan.status,
            position=ev.position,
            revision=revision,
            version=ev.version,
            content_type=plan.content_type,
            chunk_count=len(plan.chunks),
            embedded=plan.embedded,
            reused=plan.reused,
            last_event_id=ev.event_id,
            last_error=plan.reason if plan.status is DocumentStatus.SKIPPED else None,
            metadata=dict(ev.metadata),
        )

    def _settle_applied(self, plan: Plan, previous: DocumentRecord | None, told: list[Delivery]) -> Outcome:
        ev = plan.event
        if plan.status is DocumentStatus.DELETED:
            detail = "deleted"
            summary = f"deleted {ev.path}"
        elif plan.status is DocumentStatus.SKIPPED:
            detail = f"skipped: {plan.reason}"
            summary = f"skipped {ev.path}{_version(ev)}: {plan.reason}"
        else:
            detail = f"indexed {len(plan.chunks)} chunk(s): {plan.embedded} embedded, {plan.reused} reused"
            summary = (
                f"indexed {ev.path}{_version(ev)}: {len(plan.chunks)} chunks, {plan.embedded} embedded,"
                f" {plan.reused} reused"
            )
            CHUNKS.labels("embedded").inc(plan.embedded)
            CHUNKS.labels("reused").inc(plan.reused)
        detail += _replaces(previous, ev)
        change = Change(
            _CHANGE_OF[plan.status],
            plan.status.value,
            chunk_count=len(plan.chunks),
            embedded=plan.embedded,
            reused=plan.reused,
            error=plan.reason if plan.status is DocumentStatus.SKIPPED else None,
        )
        self._settle(plan.record, EventStatus.DONE, detail=detail, change=change, summary=summary, told=told)
        return Outcome(OutcomeKind.DONE, detail)

    def _keep(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """The content is what the active revision already holds: move each record to its event by the same
        compare-and-set, required also to find the revision still active (a revision that stopped being
        active may already be cleaned up, so it is never made active again). Nothing is written to the
        points: their version is the one they were written at, and what citations show is the record's.
        Kept in bulk (a full re-sync re-sends every file unchanged): the switches in one commit, the events
        settled in one commit; each event still goes switch, clean up, settle, so a crash between two of
        them leaves it to be finished by its retry (step 1), as for one event."""
        outcomes: dict[EventKey, Outcome] = {}
        switched = self._switch_in_one_commit(plans, self._switch_kept)
        kept: list[Plan] = []
        for plan in plans:
            ev, result = plan.event, switched[plan.event.key]
            with bind(**_fields(ev)):
                try:
                    if isinstance(result, Exception):
                        raise result
                    if not result:
                        outcomes[ev.key] = self._not_kept(plan)
                        continue
                    self._step("switched", ev)
                    kept.append(plan)
                except Exception as exc:
                    outcomes[ev.key] = self._failure(plan.record, exc)
        try:
            # The points read when the batch was planned: a revision written since belongs to an event
            # whose switch fails (this keep moved the record past it) and which then deletes its own.
            self._drop_older_revisions([(p.event, p.revision) for p in kept], {p.event.key: p.points for p in kept})
        except Exception as exc:  # the switches stand: each event's retry finishes it (step 1)
            outcomes.update({p.event.key: self._failure(p.record, exc) for p in kept})
            kept = []
        told: list[Delivery] = []
        failures: dict[EventKey, Exception] = {}
        with self.state.batch():
            for plan in kept:
                with bind(**_fields(plan.event)):
                    try:
                        self._step("cleaned", plan.event)
                        outcomes[plan.event.key] = self._settle_kept(plan, told)
                    except Exception as exc:
                        failures[plan.event.key] = exc
        self._tell(told)
        for plan in kept:
            if plan.event.key in failures:
                outcomes[plan.event.key] = self._failure(plan.record, failures[plan.event.key])
        return outcomes

    def _switch_kept(self, plan: Plan) -> bool:
        ev, doc = plan.event, plan.kept
        assert doc is not None and doc.revision is not None
        return self.state.switch_document(
            DocumentRecord(
                workspace=ev.workspace,
                file_id=ev.file_id,
                path=ev.path,
                status=DocumentStatus.INDEXED,
                position=ev.position,
                revision=doc.revision,
                version=ev.version,
                content_type=doc.content_type,
                chunk_count=doc.chunk_count,
                embedded=0,
                reused=doc.chunk_count,
                last_event_id=ev.event_id,
                last_error=None,
                metadata=dict(ev.metadata),
            ),
            if_revision=doc.revision,
        )

    def _not_kept(self, plan: Plan) -> Outcome:
        """The keep's compare-and-set refused: why, and what becomes of the event."""
        ev = plan.event
        now = self.state.get_document(ev.workspace, ev.file_id)
        if now is None or now.position is None or position_is_newer(ev.position, now.position):
            # Not superseded: another event (older than this one) switched the file to other content
            # meanwhile. Prepared again from the new state on the next attempt (the points it would keep
            # may be gone).
            why = "the file's active revision changed while this event was prepared; prepared again"
            self._set_status(ev, EventStatus.QUEUED, detail=why)
            return Outcome(OutcomeKind.RETRY, why, 0.0)
        if now.position == ev.position:  # applied meanwhile by another attempt of this very event (it tells)
            self._settle(plan.record, EventStatus.DONE, detail="applied by another attempt of this event")
            return Outcome(OutcomeKind.DONE)
        return self._superseded_at_switch(plan.record)

    def _settle_kept(self, plan: Plan, told: list[Delivery]) -> Outcome:
        ev, doc = plan.event, plan.kept
        assert doc is not None
        detail = f"unchanged content: kept {doc.chunk_count} chunk(s), 0 embedded"
        CHUNKS.labels("reused").inc(doc.chunk_count)
        # Subscribers hear of it as of any indexing: the document now stands at this event's version.
        change = Change(
            OutboundType.DOCUMENT_INDEXED,
            DocumentStatus.INDEXED.value,
            chunk_count=doc.chunk_count,
            embedded=0,
            reused=doc.chunk_count,
        )
        summary = f"indexed {ev.path}{_version(ev)}: unchanged content, {doc.chunk_count} chunks kept, 0 embedded"
        self._settle(
            plan.record,
            EventStatus.DONE,
            detail=detail + _replaces(doc, ev),
            change=change,
            summary=summary,
            told=told,
        )
        return Outcome(OutcomeKind.DONE, detail)

    def _superseded_at_switch(self, record: EventRecord) -> Outcome:
        ev = record.event
        now = self.state.get_document(ev.workspace, ev.file_id)
        winner = now.position if now is not None and now.position else None
        detail = "not newer than what was applied while it was processed"
        if winner is not None:
            detail += f": {describe_position(winner)} wins, because {explain_order(winner, ev.position)}"
        self._settle(record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
        return Outcome(OutcomeKind.SUPERSEDED, detail)

    def _drop_older_revisions(
        self, files: Sequence[tuple[FileEvent, str | None]], found: dict[EventKey, dict[str, int]] | None = None
    ) -> None:
        """For each (event, its active revision): delete the file's points of revisions older than the
        event's position, except the active one (a kept revision's name is older than the event that keeps
        it). A revision newer than it belongs to an event still being applied (or waiting for a retry) and
        is left alone. One read per workspace finds them all, unless `found` has them."""
        if found is None:
            found = self._revisions_of([ev for ev, _ in files])
        for ev, active in files:
            stale = [r for r in found.get(ev.key, {}) if r != active and is_older(r, ev.position)]
            if stale:
                self.index.delete_revisions(ev.workspace, ev.file_id, stale)

    def _revisions_of(self, events: Sequence[FileEvent]) -> dict[EventKey, dict[str, int]]:
        """The points per revision of each event's file, in one index read per workspace."""
        found: dict[EventKey, dict[str, int]] = {}
        for ws in dict.fromkeys(ev.workspace for ev in events):
            mine = [ev for ev in events if ev.workspace == ws]
            counts = self.index.revisions_of(ws, [ev.file_id for ev in mine])
            found.update({ev.key: counts.get(ev.file_id, {}) for ev in mine})
        return found

    # failures -----------------------------------------------------------------------------------------
    def _failure(self, record: EventRecord, exc: Exception) -> Outcome:
        ev = record.event
        message = f"{type(exc).__name__}: {exc}"
        attempts = record.attempts
        permanent = isinstance(exc, PermanentError)
        if permanent or attempts >= self.config.max_attempts:
            why = message if permanent else f"{message} (gave up after {attempts} attempt(s))"
            # The document first: a crash between the two leaves the event processing (retried), never a
            # failed event whose document does not say so. Only an event newer than the applied one marks
            # the document (a stale failure leaves the newer work as it is).
            self.state.note_document_error(
                ev.workspace, ev.file_id, ev.path, why, position=ev.position, event_id=ev.event_id
            )
            self._settle(
                record, EventStatus.FAILED, error=why, change=Change(OutboundType.DOCUMENT_FAILED, "failed", error=why)
            )
            return Outcome(OutcomeKind.FAILED, why)
        delay = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2 ** max(0, attempts - 1))
        if isinstance(exc, SourceUnavailableError) and exc.retry_after is not None:
            # The source said when to come back (HTTP 429/503 Retry-After): sooner would be refused again.
            delay = min(self.config.backoff_max_seconds, max(delay, exc.retry_after))
        EVENTS_RETRIED.labels(ev.type.value).inc()
        log.info(
            "event %s attempt %d failed (%s); retrying in %.1fs",
            ev.key,
            attempts,
            message,
            delay,
            extra=_fields(ev),
        )
        self._set_status(ev, EventStatus.QUEUED, error=message)
        return Outcome(OutcomeKind.RETRY, message, delay)


def _points_lost(doc: DocumentRecord, points: dict[str, int]) -> bool:
    """The active revision has fewer points than the registry recorded (lost writes)."""
    if doc.revision is None or doc.chunk_count == 0:
        return False
    return points.get(doc.revision, 0) < doc.chunk_count


def _replaces(previous: DocumentRecord | None, ev: FileEvent) -> str:
    replaced = previous.position if previous is not None else None
    if replaced and replaced != ev.position and parse_position(replaced) is not None:
        return f"; replaces {describe_position(replaced)}, because {explain_order(ev.position, replaced)}"
    return ""


def _fields(ev: FileEvent) -> dict[str, str]:
    """The fields every log line about an event carries."""
    return {"event_id": ev.event_id, "workspace": ev.workspace, "file_id": ev.file_id}


def _version(ev: FileEvent) -> str:
    return f" v{ev.version}" if ev.version is not None else ""


def _recorded_type(parsed: ParsedDocument) -> str:
    """The document's content type as recorded: with the charset the text was decoded in, as HTTP says it."""
    return f"{parsed.content_type}; charset={parsed.charset}" if parsed.charset else parsed.content_type
