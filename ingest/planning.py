"""Steps 1 and 2 of the ingest worker (`ingest.worker` tells them all): *decide* what an event does to its
file's index (superseded, finished, deleted, held by the mass-deletion brake) and *prepare* it: fetch,
fingerprint (kept when the active revision has that fingerprint), parse and chunk. The result is a `Plan`
(`ingest.plans`), or the `Outcome` of an event settled already.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

from ingest.chunking import Chunker
from ingest.errors import SourceNotFoundError, UnsupportedContentError
from ingest.notifications import Change
from ingest.parsing import ParsedDocument
from ingest.plans import Action, FaultHook, Outcome, OutcomeKind, Plan, WorkerConfig
from ingest.revisions import fingerprint, revision_fingerprint, revision_name, revision_position, revisions_of
from ingest.settling import Settler, log_fields
from stores.events import EventKey, EventStatus, EventType, describe_position, explain_order, position_is_newer
from stores.outbox import OutboundType
from stores.ports import (
    Chunk,
    ContentSource,
    DocumentRecord,
    DocumentStatus,
    Embedder,
    EventRecord,
    StateStore,
    TokenReuse,
    VectorIndex,
)
from stores.sparse import Bm25Encoder
from stores.telemetry import bind
from stores.token_spans import SpanTokens
from stores.units import Layout, units

# Bytes, content type, path -> parsed text: `ingest.parsing.parse`, or the sandboxed `ingest.sandbox.ParserPool`.
Parser = Callable[[bytes, str | None, str], ParsedDocument]


@dataclass(slots=True, kw_only=True)
class Planner:
    """Steps 1 and 2 for a batch: each event's attempt counted (one commit), its file's points read (one
    index read per workspace), then its plan made; a failure to plan settles the event (`Settler.failure`)."""

    state: StateStore
    index: VectorIndex
    embedder: Embedder
    sources: ContentSource
    sparse: Bm25Encoder | None
    config: WorkerConfig
    parser: Parser
    settler: Settler
    step: FaultHook

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
                self.settler.started[key] = time.perf_counter()
        # What each file's points are now, in one read per workspace (step 1 and the keep check need it).
        points = revisions_of(self.index, [r.event for r in started])
        for record in started:
            key = record.event.key
            try:
                with bind(**log_fields(record.event)):
                    plan = self._plan(record, deletes_in_batch, points.get(key, {}))
            except Exception as exc:
                outcomes[key] = self.settler.failure(record, exc)
                continue
            if isinstance(plan, Outcome):
                outcomes[key] = plan
            else:
                plans.append(plan)
        for key in outcomes:  # settled (or sent back to the queue) already
            self.settler.started.pop(key, None)
        return outcomes, plans

    def _plan(self, record: EventRecord, deletes_in_batch: dict[str, int], points: dict[str, int]) -> Plan | Outcome:
        """Step 1, decide; then step 2 (`_prepare`). `points`: the file's points per revision, read for the
        batch before its plans."""
        ev = record.event
        doc = self.state.get_document(ev.workspace, ev.file_id)
        if doc is not None and doc.position is not None and not position_is_newer(ev.position, doc.position):
            if ev.position != doc.position:
                return self._superseded_at_start(record, doc)
            # This event's own switch happened; the attempt died after it, or a repair asks to rewrite it.
            if not _points_lost(doc, points):
                return Plan(record, Action.FINISH, revision=doc.revision)
        if ev.type is EventType.DELETED:
            return self._plan_delete(record, deletes_in_batch)
        return self._prepare(record, doc, points, deletes_in_batch)

    def _prepare(
        self, record: EventRecord, doc: DocumentRecord | None, points: dict[str, int], deletes_in_batch: dict[str, int]
    ) -> Plan | Outcome:
        """Step 2 for a created or updated file: fetch it, then keep the active revision (the same
        fingerprint), or parse and chunk it."""
        ev = record.event
        try:
            fetched = self.sources.fetch(ev)
        except SourceNotFoundError:
            if ev.resync:  # the source said "look again", and the file is gone: that is a delete
                return self._plan_delete(record, deletes_in_batch)
            raise
        self.step("fetched", ev)
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
                record, Action.KEEP, revision=doc.revision, kept=doc, points=points, content_type=doc.content_type
            )
        try:
            parsed = self.parser(fetched.data, content_type, ev.path)
        except UnsupportedContentError as exc:
            skipped = DocumentStatus.SKIPPED
            return Plan(record, Action.EMPTY, status=skipped, reason=str(exc), content_type=content_type)
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
        self.step("chunked", ev)
        found = [units(c.text) for c in chunks]
        if not chunks:
            return Plan(
                record,
                Action.EMPTY,
                status=DocumentStatus.INDEXED,
                title=title,
                content_type=_recorded_type(parsed),
                reason="the file has no text",
            )
        return Plan(
            record,
            Action.INDEX,
            revision=revision_name(ev.position, print_),
            chunks=chunks,
            embed_texts=[f"{prefix}\n{c.text}" for c in chunks],
            tokens=self._chunk_tokens(parsed.text, chunks, prefix),
            # Each chunk's units, as spans of its embedded text: their vectors come from the same pass.
            unit_spans=[[(u.start + len(prefix) + 1, u.end + len(prefix) + 1) for u in us] for us in found],
            # The units again as spans of the chunk text, with their terms: what the answers read back.
            layouts=[Layout.of(c.text, us, self.sparse) for c, us in zip(chunks, found, strict=True)],
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
        self.settler.settle(record, EventStatus.SUPERSEDED, detail=detail, summary=f"superseded {ev.path}: {detail}")
        return Outcome(OutcomeKind.SUPERSEDED, detail)

    def _plan_delete(self, record: EventRecord, deletes_in_batch: dict[str, int]) -> Plan | Outcome:
        ev = record.event
        if not record.confirmed and (why := self._brake(ev.workspace, deletes_in_batch)):
            change = Change(OutboundType.EVENT_HELD, EventStatus.HELD.value, error=why)
            self.settler.settle(record, EventStatus.HELD, detail=why, change=change)
            return Outcome(OutcomeKind.HELD, why)
        deletes_in_batch[ev.workspace] = deletes_in_batch.get(ev.workspace, 0) + 1
        return Plan(record, Action.EMPTY, status=DocumentStatus.DELETED)

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

    def _chunk_tokens(self, text: str, chunks: Sequence[Chunk], prefix: str) -> list[SpanTokens | None]:
        """Each chunk's model input (`prefix` + newline + chunk) from the document's tokenization, which the
        chunker just made, where the embedder can take it (`TokenReuse`); None for the rest."""
        if not isinstance(self.embedder, TokenReuse):
            return [None] * len(chunks)
        given = self.embedder.span_tokens(text, [(c.start, c.end) for c in chunks], prefix)
        # The tokens are the document's at the chunk's span: only as good as the chunk's text is that span.
        return [t if text[c.start : c.end] == c.text else None for c, t in zip(chunks, given, strict=True)]


def _points_lost(doc: DocumentRecord, points: dict[str, int]) -> bool:
    """The active revision has fewer points than the registry recorded (lost writes)."""
    if doc.revision is None or doc.chunk_count == 0:
        return False
    return points.get(doc.revision, 0) < doc.chunk_count


def _recorded_type(parsed: ParsedDocument) -> str:
    """The document's content type as recorded: with the charset the text was decoded in, as HTTP says it."""
    return f"{parsed.content_type}; charset={parsed.charset}" if parsed.charset else parsed.content_type
