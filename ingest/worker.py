"""The ingest worker: applies queued file events to the index so it always equals the latest version of
every file, under at-least-once, out-of-order delivery and crashes.

For each event:

1. *decide*: older than (or equal to) what is applied for the file -> `superseded`, index untouched;
   already switched by an earlier attempt that died before finishing -> only clean up.
2. *prepare*: fetch, then fingerprint: a revision is named by what its points are made of (the bytes, the
   type, the path, the metadata, the chunking and the model: `content_revision`). The file's active
   revision already has that name -> *keep* it: no parsing, chunking, embedding or writing, only the new
   version is recorded (a re-sync of unchanged files costs a registry write each). Else parse and chunk
   (a type we cannot parse -> the file is `skipped`, its old chunks go).
3. *embed*: the chunks of the whole batch together, cache first, the rest sorted by length (the worker
   loop carries the remainder of a batch to the next round, `ingest.batching`).
4. *write*: upsert the new revision's points (deterministic ids; invisible until step 5).
5. *switch*: one atomic write of the document record makes the new revision the searchable one (for a
   kept revision, the record moves to the new version and its points' `version` follows).
6. *clean up*: delete the file's points of every other revision (nothing to delete for a file seen for
   the first time, on the first attempt); mark the event done.

A crash anywhere before 5 leaves the old revision searchable and the event queued; a crash after 5 is
finished by the retry (step 1 sees the switch). Searches trust only the revision recorded in step 5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath

from ingest.chunking import Chunker
from ingest.errors import PermanentError, SourceUnavailableError, UnsupportedContentError
from ingest.parsing import ParsedDocument, parse
from stores.embedding import embed_with_cache
from stores.events import EventStatus, EventType, FileEvent, describe_position
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

log = logging.getLogger(__name__)

# A hook the crash tests use to kill the worker between steps; production passes none.
FaultHook = Callable[[str, FileEvent], None]
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


# Bump when chunking or the point layout changes, so unchanged files are re-indexed the new way.
REVISION_FORMAT = 1


def content_revision(
    event: FileEvent, data: bytes, *, content_type: str | None, model_id: str, chunking: tuple[int, ...]
) -> str:
    """The name of the revision `event` would write: equal names, equal points (same chunks, vectors and
    payload except the version). So an unchanged re-send is recognised without parsing or embedding, and
    a changed path or metadata (they reach the payload, and the path the embedded title) is a new one."""
    h = hashlib.sha256()
    head = {
        "format": REVISION_FORMAT,
        "model": model_id,
        "chunking": list(chunking),
        "path": event.path,
        "content_type": content_type,
        "metadata": event.metadata,
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(b"\x00")
    h.update(data)
    return "c" + h.hexdigest()[:31]


@dataclass(slots=True)
class _Plan:
    record: EventRecord
    action: _Action
    status: DocumentStatus = DocumentStatus.INDEXED
    revision: str | None = None
    kept: DocumentRecord | None = None  # KEEP: the record whose revision stays
    chunks: list[Chunk] = field(default_factory=list)
    embed_texts: list[str] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)
    title: str | None = None
    content_type: str | None = None  # for the document record: the parsed type and its charset
    indexed_type: str | None = None  # for the chunks: the parsed type alone (what filters match)
    reason: str | None = None
    vectors: list[list[float]] = field(default_factory=list)
    partial: dict[int, list[float]] = field(default_factory=dict)  # vectors known so far, by text index
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

    def _step(self, name: str, event: FileEvent) -> None:
        if self.fault is not None:
            self.fault(name, event)

    # the batch ----------------------------------------------------------------------------------------
    def process(self, event_ids: Sequence[str]) -> dict[str, Outcome]:
        """Apply a batch of events (at most one per file). Returns an outcome per event id."""
        outcomes, plans = self.prepare(event_ids)
        ready, failed = self.embed(plans)
        outcomes.update(failed)
        outcomes.update(self.apply(ready))
        return outcomes

    def prepare(self, event_ids: Sequence[str]) -> tuple[dict[str, Outcome], list[_Plan]]:
        """Steps 1 and 2 for each event: the outcomes already settled, and the plans still to carry out."""
        outcomes: dict[str, Outcome] = {}
        plans: list[_Plan] = []
        deletes_in_batch: dict[str, int] = {}
        for event_id in event_ids:
            record = self.state.get_event(event_id)
            if record is None:
                outcomes[event_id] = Outcome(OutcomeKind.DONE, "unknown event id (expired or never stored)")
                continue
            if record.status in (
                EventStatus.DONE,
                EventStatus.SUPERSEDED,
                EventStatus.FAILED,
                EventStatus.HELD,
            ):
                # A redelivery of something already settled: nothing to do.
                outcomes[event_id] = Outcome(OutcomeKind(record.status.value), "already settled")
                continue
            record = self.state.set_event_status(event_id, EventStatus.PROCESSING, count_attempt=True)
            try:
                plan = self._plan(record, deletes_in_batch)
            except Exception as exc:
                outcomes[event_id] = self._failure(record, exc)
                continue
            if isinstance(plan, Outcome):
                outcomes[event_id] = plan
            else:
                plans.append(plan)
        return outcomes, plans

    def embed(
        self, plans: Sequence[_Plan], *, whole_batches_only: bool = False
    ) -> tuple[list[_Plan], dict[str, Outcome]]:
        """Step 3 for the plans (oldest first): returns the plans now ready to apply (every vector known) and
        the failures. With `whole_batches_only`, texts that would make a partial batch are left for a later
        call, and so are the plans they belong to (`WorkerLoop` carries them)."""
        to_embed = [p for p in plans if p.action is _Action.INDEX and p.chunks and not p.vectors]
        failed: dict[str, Outcome] = {}
        if to_embed:
            try:
                self._embed(to_embed, whole_batches_only)
            except Exception as exc:
                for p in to_embed:
                    failed[p.event.event_id] = self._failure(p.record, exc)
        ready = [
            p
            for p in plans
            if p.event.event_id not in failed and not (p.action is _Action.INDEX and p.chunks and not p.vectors)
        ]
        return ready, failed

    def apply(self, plans: Sequence[_Plan]) -> dict[str, Outcome]:
        """Steps 4 to 6 for plans whose vectors are known."""
        outcomes: dict[str, Outcome] = {}
        for plan in plans:
            try:
                outcomes[plan.event.event_id] = self._apply(plan)
            except Exception as exc:
                outcomes[plan.event.event_id] = self._failure(plan.record, exc)
        return outcomes

    # 1 + 2: decide and prepare ------------------------------------------------------------------------
    def _plan(self, record: EventRecord, deletes_in_batch: dict[str, int]) -> _Plan | Outcome:
        ev = record.event
        doc = self.state.get_document(ev.workspace, ev.file_id)
        if doc is not None and doc.position is not None:
            if ev.position < doc.position or (ev.position == doc.position and doc.last_event_id != ev.event_id):
                detail = (
                    f"{describe_position(ev.position)} is not newer than the applied {describe_position(doc.position)}"
                )
                self.state.set_event_status(ev.event_id, EventStatus.SUPERSEDED, detail=detail)
                return Outcome(OutcomeKind.SUPERSEDED, detail)
            if ev.position == doc.position:  # this event's own switch happened; the attempt died after it
                return _Plan(record, _Action.FINISH)
        if ev.type is EventType.DELETED:
            if not record.confirmed and (why := self._brake(ev.workspace, deletes_in_batch)):
                self.state.set_event_status(ev.event_id, EventStatus.HELD, detail=why)
                return Outcome(OutcomeKind.HELD, why)
            deletes_in_batch[ev.workspace] = deletes_in_batch.get(ev.workspace, 0) + 1
            return _Plan(record, _Action.EMPTY, status=DocumentStatus.DELETED)

        fetched = self.sources.fetch(ev)
        self._step("fetched", ev)
        cfg = self.config
        content_type = ev.content_type or fetched.content_type
        revision = content_revision(
            ev,
            fetched.data,
            content_type=content_type,
            model_id=self.embedder.model_id,
            chunking=(cfg.chunk_tokens, cfg.overlap_tokens, cfg.title_tokens, int(self.sparse is not None)),
        )
        # A registry with no position was reset on purpose (`reconcile --repair` lost points): rewrite them.
        if (
            doc is not None
            and doc.position is not None
            and doc.revision == revision
            and doc.status in (DocumentStatus.INDEXED, DocumentStatus.FAILED)
        ):
            return _Plan(record, _Action.KEEP, revision=revision, kept=doc, content_type=doc.content_type)
        try:
            # The event's content type wins; the source's (an HTTP or S3 Content-Type) fills in for none.
            parsed = self.parser(fetched.data, content_type, ev.path)
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
            revision=revision,
            chunks=chunks,
            embed_texts=[f"{prefix}\n{c.text}" for c in chunks],
            token_counts=[c.token_count + reserved for c in chunks],
            title=title,
            content_type=_recorded_type(parsed),
            indexed_type=parsed.content_type,
        )

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
    def _embed(self, plans: list[_Plan], whole_batches_only: bool) -> None:
        """Embed the texts of `plans` (cache first); a plan gets its vectors once all of its texts have one
        (the vectors of a plan left half done wait on it for the next call)."""
        wanted = [(p, i) for p in plans for i in range(len(p.embed_texts)) if i not in p.partial]
        vectors, stats = embed_with_cache(
            self.embedder,
            self.cache,
            [p.embed_texts[i] for p, i in wanted],
            [p.token_counts[i] for p, i in wanted],
            self.config.embed_batch_size,
            whole_batches_only=whole_batches_only,
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
    def _apply(self, plan: _Plan) -> Outcome:
        ev = plan.event
        if plan.action is _Action.FINISH:
            doc = self.state.get_document(ev.workspace, ev.file_id)
            if doc is not None and doc.revision is not None:
                # The interrupted attempt may have kept a revision without restamping its version.
                self.index.set_version(ev.workspace, ev.file_id, doc.revision, doc.version)
            self.index.delete_file(ev.workspace, ev.file_id, keep_revision=doc.revision if doc else None)
            self.state.set_event_status(ev.event_id, EventStatus.DONE, detail="finished after an interrupted attempt")
            return Outcome(OutcomeKind.DONE)
        if plan.action is _Action.KEEP:
            return self._keep(plan)

        revision = plan.revision if plan.action is _Action.INDEX else None
        # A file never seen before, on its first attempt, has no points to clean up; otherwise (an earlier
        # revision, a tombstone, or a retry after a crash that may have written points) clean up.
        had_points = self.state.get_document(ev.workspace, ev.file_id) is not None or plan.record.attempts > 1
        if plan.action is _Action.INDEX:
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
                    dense=vec,
                    sparse=sp,
                    metadata=dict(ev.metadata),
                    title=plan.title,
                )
                for chunk, vec, sp in zip(plan.chunks, plan.vectors, sparse, strict=True)
            ]
            self.index.upsert(points)
            self._step("upserted", ev)

        self.state.switch_document(
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
        self._step("switched", ev)
        if had_points:
            self.index.delete_file(ev.workspace, ev.file_id, keep_revision=revision)
        self._step("cleaned", ev)
        if plan.status is DocumentStatus.DELETED:
            detail = "deleted"
        elif plan.status is DocumentStatus.SKIPPED:
            detail = f"skipped: {plan.reason}"
        else:
            detail = f"indexed {len(plan.chunks)} chunk(s): {plan.embedded} embedded, {plan.reused} reused"
        self.state.set_event_status(ev.event_id, EventStatus.DONE, detail=detail)
        return Outcome(OutcomeKind.DONE, detail)

    def _keep(self, plan: _Plan) -> Outcome:
        """The content is what the active revision already holds: move the record to this version (the
        position decides what is newer), then restamp the points' version, which citations show."""
        ev, doc = plan.event, plan.kept
        assert doc is not None and doc.revision is not None
        self.state.switch_document(
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
            )
        )
        self._step("switched", ev)
        if doc.version != ev.version:
            self.index.set_version(ev.workspace, ev.file_id, doc.revision, ev.version)
        self._step("cleaned", ev)
        detail = f"unchanged content: kept {doc.chunk_count} chunk(s), 0 embedded"
        self.state.set_event_status(ev.event_id, EventStatus.DONE, detail=detail)
        return Outcome(OutcomeKind.DONE, detail)

    # failures -----------------------------------------------------------------------------------------
    def _failure(self, record: EventRecord, exc: Exception) -> Outcome:
        ev = record.event
        message = f"{type(exc).__name__}: {exc}"
        attempts = record.attempts
        permanent = isinstance(exc, PermanentError)
        if permanent or attempts >= self.config.max_attempts:
            why = message if permanent else f"{message} (gave up after {attempts} attempt(s))"
            log.warning("event %s failed: %s", ev.event_id, why)
            self.state.set_event_status(ev.event_id, EventStatus.FAILED, error=why)
            self.state.note_document_error(ev.workspace, ev.file_id, ev.path, why)
            return Outcome(OutcomeKind.FAILED, why)
        delay = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2 ** max(0, attempts - 1))
        if isinstance(exc, SourceUnavailableError) and exc.retry_after is not None:
            # The source said when to come back (HTTP 429/503 Retry-After): sooner would be refused again.
            delay = min(self.config.backoff_max_seconds, max(delay, exc.retry_after))
        log.info("event %s attempt %d failed (%s); retrying in %.1fs", ev.event_id, attempts, message, delay)
        self.state.set_event_status(ev.event_id, EventStatus.QUEUED, error=message)
        return Outcome(OutcomeKind.RETRY, message, delay)


MAX_CARRY_ROUNDS = 4  # a plan waits at most this many rounds for a full embedding batch


@dataclass(slots=True)
class _Carry:
    """Plans waiting for a full embedding batch, with their (still leased) jobs, oldest first."""

    waiting: list[tuple[Job, _Plan]] = field(default_factory=list)
    rounds: int = 0

    @property
    def plans(self) -> list[_Plan]:
        return [p for _, p in self.waiting]

    def add(self, items: list[tuple[Job, _Plan]]) -> None:
        self.waiting.extend(items)

    def pop(self, event_id: str) -> Job:
        for n, (job, plan) in enumerate(self.waiting):
            if plan.event.event_id == event_id:
                del self.waiting[n]
                return job
        raise KeyError(event_id)


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
        self._local = threading.local()  # each thread carries its own plans
        self._carries: list[_Carry] = []
        self._carries_lock = threading.Lock()
        self._last_purge = datetime.min.replace(tzinfo=UTC)

    def run_once(self) -> int:
        """Claim one batch, apply what is ready and settle it; returns how many jobs were claimed.

        Full batches: while claims come back full (more work is queued), only whole embedding batches are
        embedded; the plans whose texts would make the last, partial batch are carried (with their jobs,
        still leased) into the next round, where they are embedded first. A short claim, or a plan carried
        `MAX_CARRY_ROUNDS` times, embeds everything.
        """
        carry = self._carry()
        jobs = self.queue.claim(self.batch_size, self.lease_seconds)
        if not jobs and not carry.plans:
            return 0
        by_id = {j.event_id: j for j in jobs}
        outcomes, plans = self.worker.prepare(list(by_id))
        for event_id, outcome in outcomes.items():
            self._settle(by_id[event_id], outcome)
        carry.add([(by_id[p.event.event_id], p) for p in plans])
        final = len(jobs) < self.batch_size or carry.rounds >= MAX_CARRY_ROUNDS
        ready, failed = self.worker.embed(carry.plans, whole_batches_only=not final)
        applied = self.worker.apply(ready)
        for event_id, outcome in {**failed, **applied}.items():
            self._settle(carry.pop(event_id), outcome)
        carry.rounds = carry.rounds + 1 if carry.plans else 0
        return len(jobs)

    def _carry(self) -> _Carry:
        carry: _Carry | None = getattr(self._local, "carry", None)
        if carry is None:
            carry = self._local.carry = _Carry()
            with self._carries_lock:
                self._carries.append(carry)
        return carry

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
        now = datetime.now(UTC)
        if now - self._last_purge > timedelta(hours=1):
            self._last_purge = now
            purged = self.worker.state.purge_events(now - self.retention)
            if purged:
                log.info("forgot %d event id(s) older than %s", purged, self.retention)

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
        # Jobs carried for a next round that will not come: hand them back now, not after their lease.
        with self._carries_lock:
            for carry in self._carries:
                for job, _ in carry.waiting:
                    self.queue.release(job, 0)
                carry.waiting.clear()
