"""The ingest worker: applies queued file events to the index so it always equals the latest version of
every file, under at-least-once, out-of-order delivery and crashes.

For each event:

1. *decide*: older than what is applied for the file (the order rule of `stores.events`) -> `superseded`,
   index untouched; already switched by an earlier attempt that died before finishing -> only clean up
   (or, when the switched revision lost points, write them again: what a reconcile repair asks for).
2. *prepare*: fetch, parse, chunk (a type we cannot parse -> the file is `skipped`, its old chunks go).
3. *embed*: the chunks of the whole batch together, cache first (per workspace), the rest sorted by length.
4. *write*: upsert the new revision's points (deterministic ids; invisible until step 5).
5. *switch*: a compare-and-set of the document record makes the new revision the searchable one, only if
   nothing newer was applied meanwhile; if something was, this event is superseded and its points go.
6. *clean up*: delete the file's points of older revisions (never of a newer one being written); mark the
   event done.

A crash anywhere before 5 leaves the old revision searchable and the event queued; a crash after 5 is
finished by the retry (step 1 sees the switch). Searches trust only the revision recorded in step 5.
"""

from __future__ import annotations

import logging
import threading
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
from ingest.receiver import requeue_received
from stores.embedding import embed_with_cache
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
    Job,
    JobQueue,
    StateStore,
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
    EMPTY = "empty"  # delete, or a version with nothing to index (skipped)
    FINISH = "finish"  # switched by an earlier attempt: clean up and mark done


@dataclass(slots=True)
class _Plan:
    record: EventRecord
    action: _Action
    status: DocumentStatus = DocumentStatus.INDEXED
    chunks: list[Chunk] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    title: str | None = None
    content_type: str | None = None  # for the document record: the parsed type and its charset
    indexed_type: str | None = None  # for the chunks: the parsed type alone (what filters match)
    reason: str | None = None
    vectors: list[list[float]] = field(default_factory=list)
    embedded: int = 0
    reused: int = 0

    @property
    def event(self) -> FileEvent:
        return self.record.event


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
        outcomes: dict[EventKey, Outcome] = {}
        plans: list[_Plan] = []
        deletes_in_batch: dict[str, int] = {}
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
                kind = OutcomeKind.DONE if record.status is EventStatus.REJECTED else OutcomeKind(record.status.value)
                outcomes[key] = Outcome(kind, "already settled")
                continue
            record = self.state.set_event_status(
                key.workspace, key.event_id, EventStatus.PROCESSING, count_attempt=True
            )
            self._started[key] = time.perf_counter()
            try:
                with bind(**_fields(record.event)):
                    plan = self._plan(record, deletes_in_batch)
            except Exception as exc:
                outcomes[key] = self._failure(record, exc)
                continue
            if isinstance(plan, Outcome):
                outcomes[key] = plan
            else:
                plans.append(plan)

        to_embed = [p for p in plans if p.action is _Action.INDEX and p.chunks]
        if to_embed:
            try:
                self._embed(to_embed)
            except Exception as exc:
                for p in to_embed:
                    outcomes[p.event.key] = self._failure(p.record, exc)
                plans = [p for p in plans if p not in to_embed]

        for plan in plans:
            try:
                with bind(**_fields(plan.event)):
                    outcomes[plan.event.key] = self._apply(plan)
            except Exception as exc:
                outcomes[plan.event.key] = self._failure(plan.record, exc)
        for key in keys:
            self._started.pop(key, None)
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
    ) -> None:
        ev = record.event
        outbox = deliveries_for(self.outbound, record, change) if change is not None else []
        self.state.set_event_status(ev.workspace, ev.event_id, status, detail=detail, error=error, outbox=outbox)
        if outbox and self.on_outbox is not None:
            try:
                self.on_outbox(outbox)
            except Exception:  # the rows are durable; the relay's sweep sends them anyway
                log.warning("could not hand %d delivery(ies) to the relay now", len(outbox), exc_info=True)
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

    # 1 + 2: decide and prepare ------------------------------------------------------------------------
    def _plan(self, record: EventRecord, deletes_in_batch: dict[str, int]) -> _Plan | Outcome:
        ev = record.event
        doc = self.state.get_document(ev.workspace, ev.file_id)
        if doc is not None and doc.position is not None and not position_is_newer(ev.position, doc.position):
            if ev.position != doc.position:
                detail = (
                    f"not newer than what is applied: {describe_position(doc.position)} wins, because"
                    f" {explain_order(doc.position, ev.position)}"
                )
                self._settle(record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
                return Outcome(OutcomeKind.SUPERSEDED, detail)
            # This event's own switch happened; the attempt died after it, or a repair asks to rewrite it.
            if not self._points_lost(doc):
                return _Plan(record, _Action.FINISH)
        if ev.type is EventType.DELETED:
            return self._plan_delete(record, deletes_in_batch)
        try:
            fetched = self.sources.fetch(ev)
        except SourceNotFoundError:
            if ev.resync:  # the source said "look again", and the file is gone: that is a delete
                return self._plan_delete(record, deletes_in_batch)
            raise
        self._step("fetched", ev)
        try:
            # The event's content type wins; the source's (an HTTP or S3 Content-Type) fills in for none.
            parsed = self.parser(fetched.data, ev.content_type or fetched.content_type, ev.path)
        except UnsupportedContentError as exc:
            return _Plan(
                record,
                _Action.EMPTY,
                status=DocumentStatus.SKIPPED,
                reason=str(exc),
                content_type=ev.content_type or fetched.content_type,
            )
        title = parsed.title or PurePosixPath(ev.path).name
        prefix = self._title_prefix(title, ev.path)
        reserved = max(0, self.embedder.count_tokens([prefix])[0] - 2)  # the prefix shares [CLS]/[SEP]
        chunker = Chunker(
            count_tokens=self.embedder.count_tokens,
            max_tokens=self.embedder.max_tokens,
            chunk_tokens=min(self.config.chunk_tokens, self.embedder.max_tokens - reserved),
            overlap_tokens=self.config.overlap_tokens,
            reserved_tokens=reserved,
            token_offsets=self.embedder.token_offsets,
        )
        chunks = chunker.chunk(parsed.text, boundaries=[loc.start for loc in parsed.locations])
        if parsed.locations:
            chunks = [self._locate(parsed, c) for c in chunks]
        self._step("chunked", ev)
        if not chunks:
            return _Plan(
                record,
                _Action.EMPTY,
                status=DocumentStatus.INDEXED,
                title=title,
                content_type=_recorded_type(parsed),
                reason="the file has no text",
            )
        return _Plan(
            record,
            _Action.INDEX,
            chunks=chunks,
            embed_texts=[f"{prefix}\n{c.text}" for c in chunks],
            token_counts=[c.token_count + reserved for c in chunks],
            title=title,
            content_type=_recorded_type(parsed),
            indexed_type=parsed.content_type,
        )

    def _plan_delete(self, record: EventRecord, deletes_in_batch: dict[str, int]) -> _Plan | Outcome:
        ev = record.event
        if not record.confirmed and (why := self._brake(ev.workspace, deletes_in_batch)):
            change = Change(OutboundType.EVENT_HELD, EventStatus.HELD.value, error=why)
            self._settle(record, EventStatus.HELD, detail=why, change=change)
            return Outcome(OutcomeKind.HELD, why)
        deletes_in_batch[ev.workspace] = deletes_in_batch.get(ev.workspace, 0) + 1
        return _Plan(record, _Action.EMPTY, status=DocumentStatus.DELETED)

    def _points_lost(self, doc: DocumentRecord) -> bool:
        """The active revision has fewer points than the registry recorded (lost writes)."""
        if doc.revision is None or doc.chunk_count == 0:
            return False
        return self.index.file_revisions(doc.workspace, doc.file_id).get(doc.revision, 0) < doc.chunk_count

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
        held = len(self.state.list_events(workspace, status=EventStatus.HELD, limit=100_000))
        burst = applied + held + deletes_in_batch.get(workspace, 0) + 1
        size = self.state.count_documents(workspace, DocumentStatus.INDEXED) + applied
        if burst >= cfg.mass_delete_min and burst > cfg.mass_delete_share * size:
            return (
                f"held by the mass-deletion brake: {burst} deletes within {cfg.mass_delete_window_seconds:.0f} s"
                f" would remove more than {cfg.mass_delete_share:.0%} of {size} documents; confirm to apply"
            )
        return None

    def _title_prefix(self, title: str, path: str) -> str:
        """What identifies the document in every chunk's vector: its title, or its path."""
        text = title if title == PurePosixPath(path).name else f"{title} ({path})"
        counts = self.embedder.count_tokens([text])[0]
        while counts - 2 > self.config.title_tokens and len(text) > 8:
            text = text[: int(len(text) * 0.8)]
            counts = self.embedder.count_tokens([text])[0]
        return text

    # 3: embed, across the whole batch -----------------------------------------------------------------
    def _embed(self, plans: list[_Plan]) -> None:
        texts = [t for p in plans for t in p.embed_texts]
        counts = [n for p in plans for n in p.token_counts]
        scopes = [p.event.workspace for p in plans for _ in p.embed_texts]
        vectors, stats = embed_with_cache(
            self.embedder, self.cache, texts, counts, self.config.embed_batch_size, scopes=scopes
        )
        at = 0
        for p in plans:
            n = len(p.embed_texts)
            p.vectors = vectors[at : at + n]
            p.reused = sum(stats.cached[at : at + n])
            p.embedded = n - p.reused
            at += n
            self._step("embedded", p.event)

    # 4 - 6: write, switch, clean up -------------------------------------------------------------------
    def _apply(self, plan: _Plan) -> Outcome:
        ev = plan.event
        if plan.action is _Action.FINISH:
            self._drop_older_revisions(ev)
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

        previous = self.state.get_document(ev.workspace, ev.file_id)
        revision = ev.position if plan.action is _Action.INDEX else None
        if plan.action is _Action.INDEX:
            sparse = (
                self.sparse.encode_documents(plan.embed_texts) if self.sparse is not None else [None] * len(plan.chunks)
            )
            points = [
                IndexPoint(
                    workspace=ev.workspace,
                    file_id=ev.file_id,
                    path=ev.path,
                    revision=ev.position,
                    version=ev.version,
                    content_type=plan.indexed_type,
                    chunk=chunk,
                    dense=vec,
                    sparse=sp,
                    metadata=dict(ev.metadata),
                    title=plan.title,
                )
                for chunk, vec, sp in zip(plan.chunks, plan.vectors, sparse, strict=True)
            ]
            self.index.upsert(points)
            self._step("upserted", ev)

        switched = self.state.switch_document(
            DocumentRecord(
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
        )
        if not switched:
            # A newer event was applied while this one was prepared (another worker, a lease that ran out):
            # the compare-and-set refused the stale write. Its points can never become active: they go.
            if revision is not None:
                self.index.delete_revisions(ev.workspace, ev.file_id, [revision])
            now = self.state.get_document(ev.workspace, ev.file_id)
            winner = now.position if now is not None and now.position else None
            detail = "not newer than what was applied while it was processed"
            if winner is not None:
                detail += f": {describe_position(winner)} wins, because {explain_order(winner, ev.position)}"
            self._settle(plan.record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
            return Outcome(OutcomeKind.SUPERSEDED, detail)
        self._step("switched", ev)
        self._drop_older_revisions(ev)
        self._step("cleaned", ev)
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
        replaced = previous.position if previous is not None else None
        if replaced and replaced != ev.position and parse_position(replaced) is not None:
            detail += f"; replaces {describe_position(replaced)}, because {explain_order(ev.position, replaced)}"
        change = Change(
            _CHANGE_OF[plan.status],
            plan.status.value,
            chunk_count=len(plan.chunks),
            embedded=plan.embedded,
            reused=plan.reused,
            error=plan.reason if plan.status is DocumentStatus.SKIPPED else None,
        )
        self._settle(plan.record, EventStatus.DONE, detail=detail, change=change, summary=summary)
        return Outcome(OutcomeKind.DONE, detail)

    def _drop_older_revisions(self, ev: FileEvent) -> None:
        """Delete the file's points of revisions older than this event's position. A revision newer than it
        belongs to an event still being applied (or waiting for a retry) and is left alone."""
        keep = ev.position
        stale = [r for r in self.index.file_revisions(ev.workspace, ev.file_id) if position_is_newer(keep, r)]
        self.index.delete_revisions(ev.workspace, ev.file_id, stale)

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


def _fields(ev: FileEvent) -> dict[str, str]:
    """The fields every log line about an event carries."""
    return {"event_id": ev.event_id, "workspace": ev.workspace, "file_id": ev.file_id}


def _version(ev: FileEvent) -> str:
    return f" v{ev.version}" if ev.version is not None else ""


def _recorded_type(parsed: ParsedDocument) -> str:
    """The document's content type as recorded: with the charset the text was decoded in, as HTTP says it."""
    return f"{parsed.content_type}; charset={parsed.charset}" if parsed.charset else parsed.content_type


class WorkerLoop:
    """Drains the local queue in background threads (`eventrag serve`), or on demand (`drain`)."""

    def __init__(
        self,
        worker: IngestWorker,
        queue: JobQueue,
        *,
        batch_size: int = 8,
        lease_seconds: float = 600.0,
        poll_seconds: float = 0.5,
        threads: int = 1,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.worker = worker
        self.queue = queue
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.n_threads = threads
        self.retention = retention
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_purge = datetime.min.replace(tzinfo=UTC)
        self._last_sweep = datetime.min.replace(tzinfo=UTC)
        self._maintenance = threading.Lock()

    def run_once(self) -> int:
        """Claim one batch and settle it; returns how many jobs were claimed."""
        jobs = self.queue.claim(self.batch_size, self.lease_seconds)
        if not jobs:
            return 0
        outcomes = self.worker.process([j.key for j in jobs])
        for job in jobs:
            self._settle(job, outcomes[job.key])
        return len(jobs)

    def _settle(self, job: Job, outcome: Outcome) -> None:
        if outcome.settled:
            self.queue.ack(job)
        else:
            self.queue.release(job, outcome.delay)

    def drain(self, max_batches: int | None = None) -> int:
        """Process until nothing is claimable now (delayed retries are left for later)."""
        total = batches = 0
        while max_batches is None or batches < max_batches:
            n = self.run_once()
            if n == 0:
                break
            total += n
            batches += 1
        return total

    def notify(self) -> None:
        """A new job was queued: wake an idle thread now instead of at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._maybe_purge()
                n = self.run_once()
            except Exception:
                log.exception("worker loop error; continuing")
                n = 0
            if n == 0:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def _maybe_purge(self) -> None:
        """Hourly: forget event ids past the retention. Every minute: queue events stored but never queued
        (another process sharing the state file may have died between the two writes)."""
        if not self._maintenance.acquire(blocking=False):
            return  # another worker thread is at it
        try:
            now = datetime.now(UTC)
            if now - self._last_sweep > timedelta(minutes=1):
                self._last_sweep = now
                if requeue_received(self.worker.state, self.queue):
                    self._wake.set()
            if now - self._last_purge > timedelta(hours=1):
                self._last_purge = now
                purged = self.worker.state.purge_events(now - self.retention)
                if purged:
                    log.info("forgot %d event id(s) older than %s", purged, self.retention)
        finally:
            self._maintenance.release()

    def start(self) -> None:
        self._stop.clear()
        for i in range(self.n_threads):
            t = threading.Thread(target=self._loop, name=f"eventrag-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
