"""The keep path of the ingest worker (`ingest.worker` tells the steps): an event whose content is what the
file's active revision already holds (its fingerprint, `ingest.revisions`) moves the document record to
itself by the switch's compare-and-set and writes nothing; its clean-up and settling are those of any event.
What a full re-sync of unchanged files comes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingest.applying import switch_in_one_commit
from ingest.notifications import Change
from ingest.plans import FaultHook, Outcome, OutcomeKind, Plan
from ingest.revisions import drop_older_revisions
from ingest.settling import Settler, log_fields, replaces, version_label
from stores.events import EventKey, EventStatus, position_is_newer
from stores.outbox import Delivery, OutboundType
from stores.ports import DocumentRecord, DocumentStatus, StateStore, VectorIndex
from stores.telemetry import CHUNKS, bind


@dataclass(slots=True, kw_only=True)
class Keeper:
    """Steps 4 to 6 for KEEP plans: the switch and the clean-up, nothing written."""

    state: StateStore
    index: VectorIndex
    settler: Settler
    step: FaultHook

    def keep(self, plans: Sequence[Plan]) -> dict[EventKey, Outcome]:
        """The content is what the active revision already holds: move each record to its event by the same
        compare-and-set, required also to find the revision still active (a revision that stopped being
        active may already be cleaned up, so it is never made active again). Nothing is written to the
        points: their version is the one they were written at, and what citations show is the record's.
        Kept in bulk (a full re-sync re-sends every file unchanged): the switches in one commit, the events
        settled in one commit; each event still goes switch, clean up, settle, so a crash between two of
        them leaves it to be finished by its retry (step 1), as for one event."""
        outcomes: dict[EventKey, Outcome] = {}
        switched = switch_in_one_commit(self.state, plans, self._switch_kept)
        kept: list[Plan] = []
        for plan in plans:
            ev, result = plan.event, switched[plan.event.key]
            with bind(**log_fields(ev)):
                try:
                    if isinstance(result, Exception):
                        raise result
                    if not result:
                        outcomes[ev.key] = self._not_kept(plan)
                        continue
                    self.step("switched", ev)
                    kept.append(plan)
                except Exception as exc:
                    outcomes[ev.key] = self.settler.failure(plan.record, exc)
        try:
            # The points read when the batch was planned: a revision written since belongs to an event
            # whose switch fails (this keep moved the record past it) and which then deletes its own.
            drop_older_revisions(
                self.index, [(p.event, p.revision) for p in kept], {p.event.key: p.points for p in kept}
            )
        except Exception as exc:  # the switches stand: each event's retry finishes it (step 1)
            outcomes.update({p.event.key: self.settler.failure(p.record, exc) for p in kept})
            kept = []
        told: list[Delivery] = []
        failures: dict[EventKey, Exception] = {}
        for plan in kept:
            try:  # (outside the settle's transaction, as in `Applier.apply`: a step may read the state)
                self.step("cleaned", plan.event)
            except Exception as exc:
                failures[plan.event.key] = exc
        with self.state.batch():
            for plan in kept:
                if plan.event.key in failures:
                    continue
                with bind(**log_fields(plan.event)):
                    try:
                        outcomes[plan.event.key] = self._settle_kept(plan, told)
                    except Exception as exc:
                        failures[plan.event.key] = exc
        self.settler.tell(told)
        for plan in kept:
            if plan.event.key in failures:
                outcomes[plan.event.key] = self.settler.failure(plan.record, failures[plan.event.key])
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
            self.settler.set_status(ev, EventStatus.QUEUED, detail=why)
            return Outcome(OutcomeKind.RETRY, why, 0.0)
        if now.position == ev.position:  # applied meanwhile by another attempt of this very event (it tells)
            self.settler.settle(plan.record, EventStatus.DONE, detail="applied by another attempt of this event")
            return Outcome(OutcomeKind.DONE)
        return self.settler.superseded_at_switch(plan.record)

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
        summary = f"indexed {ev.path}{version_label(ev)}: unchanged content, {doc.chunk_count} chunks kept, 0 embedded"
        self.settler.settle(
            plan.record,
            EventStatus.DONE,
            detail=detail + replaces(doc, ev),
            change=change,
            summary=summary,
            told=told,
        )
        return Outcome(OutcomeKind.DONE, detail)
