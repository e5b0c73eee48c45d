"""Operator routes: held deletes (the mass-deletion brake) and reconciling the index with the registry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.container import Container
from app.deps import ContainerDep, Workspace
from app.routes.events import event_out, retry_failed
from app.schemas import ErrorBody, EventOut
from stores.events import EventStatus

router = APIRouter(tags=["operations"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}


class HeldSelection(BaseModel):
    event_ids: list[str] | None = Field(None, description="the held deletes to act on; omit for all of them")


class HeldResult(BaseModel):
    events: list[EventOut]
    count: int


class DiscrepancyOut(BaseModel):
    file_id: str
    kind: str = Field(description="missing, incomplete, orphan, version_mismatch or unapplied")
    detail: str
    revision: str | None
    repaired: str | None


class ReconcileOut(BaseModel):
    workspace: str
    clean: bool = Field(description="nothing that affects search: no problems other than `unapplied` points")
    documents_checked: int
    points_checked: int
    skipped_in_flight: int = Field(0, description="files left alone because an event of theirs is in flight")
    problems: list[DiscrepancyOut]


@router.get("/held-deletes", response_model=HeldResult, responses=_AUTH)
def list_held(workspace: Workspace, container: ContainerDep) -> HeldResult:
    """Deletes waiting for confirmation because they would remove too much of the workspace at once."""
    held = container.state.list_events(workspace, status=EventStatus.HELD, limit=10_000)
    return HeldResult(events=[event_out(r) for r in held], count=len(held))


def _select(container: Container, workspace: str, sel: HeldSelection | None) -> list:  # type: ignore[type-arg]
    held = container.state.list_events(workspace, status=EventStatus.HELD, limit=10_000)
    wanted = set(sel.event_ids) if sel and sel.event_ids is not None else None
    return [r for r in held if wanted is None or r.event_id in wanted]


@router.post("/held-deletes/confirm", response_model=HeldResult, responses={**_AUTH, 422: {"model": ErrorBody}})
def confirm_held(workspace: Workspace, container: ContainerDep, body: HeldSelection | None = None) -> HeldResult:
    """Apply held deletes: they are queued again and pass the brake."""
    done = [event_out(retry_failed(container, r, confirmed=True)) for r in _select(container, workspace, body)]
    return HeldResult(events=done, count=len(done))


@router.post("/held-deletes/discard", response_model=HeldResult, responses={**_AUTH, 422: {"model": ErrorBody}})
def discard_held(workspace: Workspace, container: ContainerDep, body: HeldSelection | None = None) -> HeldResult:
    """Drop held deletes: the files stay indexed; the events are recorded as superseded."""
    out = [
        event_out(
            container.state.set_event_status(
                workspace, r.event_id, EventStatus.SUPERSEDED, detail="discarded by an operator"
            )
        )
        for r in _select(container, workspace, body)
    ]
    return HeldResult(events=out, count=len(out))


@router.post("/reconcile", response_model=ReconcileOut, responses=_AUTH)
def post_reconcile(
    workspace: Workspace, container: ContainerDep, repair: Annotated[bool, Query()] = False
) -> ReconcileOut:
    """Compare the index with the document registry; with `repair=true`, fix what differs."""
    from ingest.reconcile import reconcile  # the write path, loaded only when an operator asks

    report = reconcile(workspace, state=container.state, index=container.index, queue=container.queue, repair=repair)
    if repair:
        container.notify_worker()
    return ReconcileOut(
        workspace=report.workspace,
        clean=report.clean,
        documents_checked=report.documents_checked,
        points_checked=report.points_checked,
        skipped_in_flight=report.skipped_in_flight,
        problems=[
            DiscrepancyOut(file_id=p.file_id, kind=p.kind, detail=p.detail, revision=p.revision, repaired=p.repaired)
            for p in report.problems
        ],
    )
