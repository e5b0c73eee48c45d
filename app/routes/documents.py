"""Documents: what is indexed, per file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from app.deps import ContainerDep, Workspace
from app.schemas import DocumentList, DocumentOut, ErrorBody
from stores.ports import DocumentRecord, DocumentStatus

router = APIRouter(tags=["documents"])

_AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "Missing or unknown API key"}}


def _split_type(content_type: str | None) -> tuple[str | None, str | None]:
    """("text/plain", "windows-1252") from the recorded "text/plain; charset=windows-1252"."""
    if content_type is None:
        return None, None
    essence, _, params = content_type.partition(";")
    key, _, value = params.strip().partition("=")
    return essence.strip(), (value.strip() or None) if key.strip().lower() == "charset" else None


def document_out(d: DocumentRecord) -> DocumentOut:
    content_type, charset = _split_type(d.content_type)
    return DocumentOut(
        workspace=d.workspace,
        file_id=d.file_id,
        path=d.path,
        status=d.status.value,
        version=d.version,
        position=d.position,
        content_type=content_type,
        charset=charset,
        chunk_count=d.chunk_count,
        embedded=d.embedded,
        reused=d.reused,
        last_event_id=d.last_event_id,
        last_error=d.last_error,
        metadata=d.metadata,
        updated_at=d.updated_at,
    )


@router.get("/documents", response_model=DocumentList, responses={**_AUTH, 422: {"model": ErrorBody}})
def list_documents(
    workspace: Workspace,
    container: ContainerDep,
    status_: Annotated[DocumentStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentList:
    """The caller's documents with their status (indexed, deleted, skipped, failed), version and chunk count."""
    docs = container.state.list_documents(workspace, status=status_, limit=limit, offset=offset)
    return DocumentList(documents=[document_out(d) for d in docs], count=len(docs))


@router.get(
    "/documents/{file_id:path}",
    response_model=DocumentOut,
    responses={**_AUTH, 404: {"model": ErrorBody, "description": "No such file in the caller's workspace"}},
)
def get_document(file_id: str, workspace: Workspace, container: ContainerDep) -> DocumentOut:
    """One file: status, version, chunk count, chunks embedded vs reused, last error."""
    doc = container.state.get_document(workspace, file_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {file_id!r} in this workspace")
    return document_out(doc)
