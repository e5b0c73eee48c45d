"""Steps 4 to 6 of the ingest worker (`ingest.worker` tells them all) for the plans that change the index:
*write* the new revision's points, *switch* the document record to it (a compare-and-set), *clean up* the
file's older revisions, and settle each event; and the *finish* of an event whose switch an earlier attempt
made before it died. The keep path (`ingest.keeping`) switches the same way and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.notifications import Change
from ingest.plans import Action, FaultHook, Outcome, OutcomeKind, Plan
from ingest.revisions import drop_older_revisions
from ingest.settling import Settler, log_fields, replaces, version_label
from stores.events import EventKey, EventStatus
from stores.outbox import Delivery, OutboundType
from stores.ports import DocumentRecord, DocumentStatus, IndexPoint, StateStore, VectorIndex
from stores.sparse import Bm25Encoder
from stores.telemetry import CHUNKS, bind

_CHANGE_OF = {
    DocumentStatus.INDEXED: OutboundType.DOCUMENT_INDEXED,
    DocumentStatus.DELETED: OutboundType.DOCUMENT_DELETED,
    DocumentStatus.SKIPPED: OutboundType.DOCUMENT_SKIPPED,
    DocumentStatus.FAILED: OutboundType.DOCUMENT_FAILED,
}


def switch_in_one_commit(
    state: StateStore, plans: Sequence[Plan], switch: Callable[[Plan], bool]
) -> dict[EventKey, bool | Exception]:
    """Each plan's switch, all in one commit (`StateStore.batch`): whether it switched, or the exception
    of one that failed (its write is undone alone; the others stand)."""
    switched: dict[EventKey, bool | Exception] = {}
    with state.batch():
        for plan in plans:
            try:
                switched[plan.event.key] = switch(plan)
            except Exception as exc:
                switched[plan.event.key] = exc
    return switched


@dataclass(slots=True, kw_only=True)
class Applier:
    """Steps 4 to 6 for INDEX and EMPTY plans (`apply`), and for FINISH plans (`finish`)."""

    state: StateStore
    index: VectorIndex
    sparse: Bm25Encoder | None
    settler: Settler
    step: FaultHook

    def apply(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """Steps 4 to 6 for INDEX and EMPTY plans: each event's points written, then every switch in one
        commit, the older revisions of every file found in one read and dropped, every event settled in one
        commit (an fsync each: a commit per event was 2 ms of each document's ingest). Each event still goes
        write, switch, clean up, settle, so a crash between two of them leaves it to be finished by its retry
        (step 1), as for one event; a write that fails is undone alone (`StateStore.batch`)."""
        outcomes: dict[EventKey, Outcome] = {}
        written: list[tuple[Plan, DocumentRecord | None, str | None]] = []
        for plan in plans:
            with bind(**log_fields(plan.event)):
                try:
                    written.append(
                        (plan, self.state.get_document(plan.event.workspace, plan.event.file_id), self._write(plan))
                    )
                except Exception as exc:
                    outcomes[plan.event.key] = self.settler.failure(plan.record, exc)
        revisions = {plan.event.key: revision for plan, _, revision in written}
        switched = switch_in_one_commit(
            self.state,
            [plan for plan, _, _ in written],
            lambda plan: self.state.switch_document(self._record_of(plan, revisions[plan.event.key])),
        )
        done: list[tuple[Plan, DocumentRecord | None, str | None]] = []
        for plan, previous, revision in written:
            ev, result = plan.event, switched[plan.event.key]
            with bind(**log_fields(ev)):
                try:
                    if isinstance(result, Exception):
                        raise result
                    if not result:
                        # A newer event was applied while this one was prepared (another worker, a lease that
                        # ran out): the compare-and-set refused the stale write. Its points can never become
                        # active: they go.
                        if revision is not None:
                            self.index.delete_revisions(ev.workspace, ev.file_id, [revision])
                        outcomes[ev.key] = self.settler.superseded_at_switch(plan.record)
                        continue
                    self.step("switched", ev)
                    done.append((plan, previous, revision))
                except Exception as exc:
                    outcomes[ev.key] = self.settler.failure(plan.record, exc)
        try:
            drop_older_revisions(self.index, [(plan.event, revision) for plan, _, revision in done])
        except Exception as exc:  # the switches stand: each event's retry finishes it (step 1)
            outcomes.update({plan.event.key: self.settler.failure(plan.record, exc) for plan, _, _ in done})
            done = []
        told: list[Delivery] = []
        failures: dict[EventKey, Exception] = {}
        for plan, _, _ in done:
            try:  # (outside the settle's transaction: a step may well read the state from another thread)
                self.step("cleaned", plan.event)
            except Exception as exc:
                failures[plan.event.key] = exc
        with self.state.batch():
            for plan, previous, _ in done:
                if plan.event.key in failures:
                    continue
                with bind(**log_fields(plan.event)):
                    try:
                        outcomes[plan.event.key] = self._settle_applied(plan, previous, told)
                    except Exception as exc:
                        failures[plan.event.key] = exc
        self.settler.tell(told)
        for plan, _, _ in done:
            if plan.event.key in failures:
                outcomes[plan.event.key] = self.settler.failure(plan.record, failures[plan.event.key])
        return outcomes

    def finish(self, plan: Plan) -> Outcome:
        """Step 6 for an event whose switch an earlier attempt made (step 1 saw it): clean up, mark done."""
        ev = plan.event
        drop_older_revisions(self.index, [(ev, plan.revision)])
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
        self.settler.settle(
            plan.record,
            EventStatus.DONE,
            detail="finished after an interrupted attempt",
            change=change,
            summary=f"{finished} {ev.path}{version_label(ev)} (finished after an interrupted attempt)",
        )
        return Outcome(OutcomeKind.DONE)

    def _write(self, plan: Plan) -> str | None:
        """Step 4: an INDEX plan's points, under its revision (returned; None for EMPTY)."""
        if plan.action is not Action.INDEX:
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
                layout=layout,
            )
            for chunk, text, vec, sp, layout in zip(
                plan.chunks, plan.embed_texts, plan.vectors, sparse, plan.layouts, strict=True
            )
        ]
        self.index.upsert(points)
        self.step("upserted", ev)
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
            summary = f"skipped {ev.path}{version_label(ev)}: {plan.reason}"
        else:
            detail = f"indexed {len(plan.chunks)} chunk(s): {plan.embedded} embedded, {plan.reused} reused"
            summary = (
                f"indexed {ev.path}{version_label(ev)}: {len(plan.chunks)} chunks, {plan.embedded} embedded,"
                f" {plan.reused} reused"
            )
            CHUNKS.labels("embedded").inc(plan.embedded)
            CHUNKS.labels("reused").inc(plan.reused)
        detail += replaces(previous, ev)
        change = Change(
            _CHANGE_OF[plan.status],
            plan.status.value,
            chunk_count=len(plan.chunks),
            embedded=plan.embedded,
            reused=plan.reused,
            error=plan.reason if plan.status is DocumentStatus.SKIPPED else None,
        )
        self.settler.settle(plan.record, EventStatus.DONE, detail=detail, change=change, summary=summary, told=told)
        return Outcome(OutcomeKind.DONE, detail)
