"""Conversation sessions of the caller's workspace."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from app.deps import ContainerDep, Workspace
from app.schemas import ErrorBody, SessionOut, TurnOut

router = APIRouter(tags=["sessions"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    404: {"model": ErrorBody, "description": "No such session in the caller's workspace"},
}


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=_RESPONSES)
def get_session(session_id: str, workspace: Workspace, container: ContainerDep) -> SessionOut:
    """The turns of a conversation (questions, answers and their citations)."""
    s = container.sessions.get_session(workspace, session_id)
    if s is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no session {session_id!r} in this workspace")
    return SessionOut(
        session_id=s.session_id,
        workspace=s.workspace,
        turns=[TurnOut(role=t.role, content=t.content, citations=t.citations, at=t.at) for t in s.turns],
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_RESPONSES,
)
def delete_session(session_id: str, workspace: Workspace, container: ContainerDep) -> Response:
    """Forget a conversation."""
    if not container.sessions.delete_session(workspace, session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no session {session_id!r} in this workspace")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
