"""Reconcile: check the index against the document registry, report the differences, repair on request.

- *missing*: the registry says a revision is searchable but the index has fewer points than it recorded
  (lost writes, a restored backup, a collection recreated by hand). Repair: re-apply the document's last
  event, when it is still remembered; otherwise the document is marked failed ("send the file again").
- *orphans*: points of a revision that is not the file's active one (a worker died between the switch and
  the clean-up, or a file the registry does not know). Repair: delete them.
- *version mismatch*: the file has points only at a revision other than the active one (a subset of the two
  above, reported separately because it means the search shows nothing of that file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stores.ports import JobQueue, StateStore, VectorIndex


@dataclass(slots=True)
class Discrepancy:
    file_id: str
    kind: str  # "missing" | "incomplete" | "orphan" | "version_mismatch"
    detail: str
    revision: str | None = None
    repaired: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    workspace: str
    documents_checked: int = 0
    points_checked: int = 0
    problems: list[Discrepancy] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def reconcile(
    workspace: str, *, state: StateStore, index: VectorIndex, queue: JobQueue, repair: bool = False
) -> ReconcileReport:
    report = ReconcileReport(workspace)
    counts = index.revision_counts(workspace)
    report.points_checked = sum(counts.values())
    docs = {d.file_id: d for d in state.list_documents(workspace, limit=10_000_000)}
    report.documents_checked = len(docs)
    by_file: dict[str, dict[str, int]] = {}
    for (file_id, revision), n in counts.items():
        by_file.setdefault(file_id, {})[revision] = n

    for file_id, doc in docs.items():
        if doc.revision is None or doc.chunk_count == 0:
            continue
        have = by_file.get(file_id, {}).get(doc.revision, 0)
        if have >= doc.chunk_count:
            continue
        others = set(by_file.get(file_id, {})) - {doc.revision}
        if have == 0 and others:
            kind = "version_mismatch"
            detail = f"active revision {doc.revision} has no points; the index holds {sorted(others)}"
        elif have == 0:
            kind, detail = (
                "missing",
                f"active revision {doc.revision} has no points (expected {doc.chunk_count})",
            )
        else:
            kind, detail = (
                "incomplete",
                f"active revision {doc.revision} has {have} of {doc.chunk_count} points",
            )
        problem = Discrepancy(file_id, kind, detail, doc.revision)
        if repair:
            problem.repaired = _reindex(doc.workspace, file_id, state=state, queue=queue)
        report.problems.append(problem)

    for file_id, revisions in by_file.items():
        known = docs.get(file_id)
        active = known.revision if known is not None else None
        for revision, n in revisions.items():
            if revision == active:
                continue
            why = "unknown file" if known is None else f"not the active revision ({active or 'none'})"
            problem = Discrepancy(file_id, "orphan", f"{n} point(s) of revision {revision}: {why}", revision)
            if repair:
                index.delete_file(workspace, file_id, keep_revision=active)
                problem.repaired = "deleted"
            report.problems.append(problem)
    return report


def _reindex(workspace: str, file_id: str, *, state: StateStore, queue: JobQueue) -> str:
    doc = state.get_document(workspace, file_id)
    assert doc is not None
    event = state.get_event(doc.last_event_id) if doc.last_event_id else None
    if event is None:
        msg = "the last event of this file is no longer remembered: send the file again"
        state.note_document_error(workspace, file_id, doc.path, f"index incomplete; {msg}")
        return msg
    # Forget the applied position so the worker re-applies the event instead of seeing it as done; the
    # active revision stays searchable meanwhile, and the same point ids are rewritten.
    doc.position = None
    state.switch_document(doc)
    state.reset_for_retry(event.event_id)
    queue.requeue(event.event_id, event.event.group_key)
    return f"re-queued event {event.event_id}"
