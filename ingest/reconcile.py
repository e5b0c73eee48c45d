"""Reconcile: check the index against the document registry, report the differences, repair on request.

- *missing* / *incomplete*: the registry says a revision is searchable but the index has fewer points than
  it recorded (lost writes, a restored backup, a collection recreated by hand). Repair: queue the
  document's last event again; the worker sees that its switch happened but points are missing and writes
  them again (same point ids). The registry is never written here, so a newer version applied meanwhile
  simply supersedes the repair. When the last event is no longer remembered, the document is marked
  failed ("send the file again").
- *orphan*: points of a revision other than the active one, older than what is applied for the file (a
  worker died between the switch and the clean-up, or lost a race). Repair: delete them. Positions only
  grow (the switch is a compare-and-set), and a revision is kept only while it is still the active one
  (`ingest.revisions`), so a revision that is not active and older than the applied position can never
  become searchable again: deleting it is always safe.
- *version_mismatch*: the file has points only at revisions other than the active one (reported apart
  because it means the search shows nothing of that file).
- *unapplied*: points of a revision newer than what is applied, or of a file the registry does not know:
  an event is being applied, or failed after writing them and waits for a retry. Reported, never deleted
  (a retry rewrites them; the next applied event's clean-up removes them).

Files with an event in flight (received, queued or processing) are skipped: their index is legitimately
between two states. The index is read before the registry and the events, so nothing written after the
read can be mistaken for an orphan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.revisions import is_older
from stores.events import IN_FLIGHT_STATUSES, EventStatus
from stores.ports import DocumentRecord, JobQueue, StateStore, VectorIndex


@dataclass(slots=True)
class Discrepancy:
    file_id: str
    kind: str  # "missing" | "incomplete" | "orphan" | "version_mismatch" | "unapplied"
    detail: str
    revision: str | None = None
    repaired: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    workspace: str
    documents_checked: int = 0
    points_checked: int = 0
    skipped_in_flight: int = 0
    problems: list[Discrepancy] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(p.kind != "unapplied" for p in self.problems)


def files_in_flight(state: StateStore, workspace: str) -> set[str]:
    found: set[str] = set()
    for status in IN_FLIGHT_STATUSES:
        found.update(r.event.file_id for r in state.list_events(workspace, status=status, limit=1_000_000))
    return found


def reconcile(
    workspace: str, *, state: StateStore, index: VectorIndex, queue: JobQueue, repair: bool = False
) -> ReconcileReport:
    report = ReconcileReport(workspace)
    # Order matters: index first, then the registry, then what is in flight (see the module docstring).
    counts = index.revision_counts(workspace)
    docs = {d.file_id: d for d in state.list_documents(workspace, limit=10_000_000)}
    busy = files_in_flight(state, workspace)
    report.points_checked = sum(counts.values())
    report.documents_checked = len(docs)
    by_file: dict[str, dict[str, int]] = {}
    for (file_id, revision), n in counts.items():
        by_file.setdefault(file_id, {})[revision] = n
    report.skipped_in_flight = len(busy & (set(docs) | set(by_file)))

    for file_id, doc in docs.items():
        if file_id in busy:
            continue
        problem = _check_active(doc, by_file.get(file_id, {}))
        if problem is not None:
            if repair:
                problem.repaired = _reapply(doc, state=state, queue=queue)
            report.problems.append(problem)

    for file_id, revisions in by_file.items():
        if file_id in busy:
            continue
        known = docs.get(file_id)
        applied = known.position if known is not None else None
        active = known.revision if known is not None else None
        for revision, n in revisions.items():
            if revision == active:
                continue
            if applied is not None and is_older(revision, applied):
                problem = Discrepancy(
                    file_id,
                    "orphan",
                    f"{n} point(s) of revision {revision}, older than the applied one ({active or 'none searchable'})",
                    revision,
                )
                if repair:
                    index.delete_revisions(workspace, file_id, [revision])
                    problem.repaired = "deleted"
            else:
                why = "the registry does not know the file" if known is None else "newer than the applied one"
                problem = Discrepancy(
                    file_id,
                    "unapplied",
                    f"{n} point(s) of revision {revision}, {why}: an event wrote them and has not switched to them"
                    " (it is failed or was interrupted: retry it); left alone",
                    revision,
                )
            report.problems.append(problem)
    return report


def _check_active(doc: DocumentRecord, revisions: dict[str, int]) -> Discrepancy | None:
    if doc.revision is None or doc.chunk_count == 0:
        return None
    have = revisions.get(doc.revision, 0)
    if have >= doc.chunk_count:
        return None
    others = set(revisions) - {doc.revision}
    if have == 0 and others:
        kind = "version_mismatch"
        detail = f"active revision {doc.revision} has no points; the index holds {sorted(others)}"
    elif have == 0:
        kind, detail = "missing", f"active revision {doc.revision} has no points (expected {doc.chunk_count})"
    else:
        kind, detail = "incomplete", f"active revision {doc.revision} has {have} of {doc.chunk_count} points"
    return Discrepancy(doc.file_id, kind, detail, doc.revision)


def _reapply(doc: DocumentRecord, *, state: StateStore, queue: JobQueue) -> str:
    event = state.get_event(doc.workspace, doc.last_event_id) if doc.last_event_id else None
    if event is None or event.status in (EventStatus.REJECTED,):
        msg = "the last event of this file is no longer remembered: send the file again"
        state.note_document_error(doc.workspace, doc.file_id, doc.path, f"index incomplete; {msg}")
        return msg
    # The registry is left as it is: the worker finds its own switch done and the points short, and writes
    # them again; if a newer event is applied first, this one is superseded and nothing older comes back.
    state.reset_for_retry(doc.workspace, event.event_id)
    queue.requeue(event.key, event.event.group_key)
    return f"re-queued event {event.event_id}"
