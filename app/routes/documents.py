"""Documents: what is indexed, per file."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from app.container import Container
from app.deps import ContainerDep, Workspace
from app.routes.paging import next_link
from app.schemas import ChunkList, ChunkOut, DocumentList, DocumentOut, ErrorBody, PassageOut
from stores.ports import DocumentRecord, DocumentStatus, Hit

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
    request: Request,
    workspace: Workspace,
    container: ContainerDep,
    status_: Annotated[
        DocumentStatus | None, Query(alias="status", description="pending, indexed, deleted, skipped or failed")
    ] = None,
    path_prefix: Annotated[
        str | None, Query(max_length=1024, description='a folder ("handbook/") or the start of a path')
    ] = None,
    cursor: Annotated[str | None, Query(max_length=4096, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DocumentList:
    """The caller's documents by path, with status, version, chunk count and last error; `total` counts every
    match of the filter, `next` is the next page (null on the last)."""
    page = container.state.page_documents(
        workspace, status=status_, path_prefix=path_prefix, cursor=cursor, limit=limit
    )
    return DocumentList(
        documents=[document_out(d) for d in page.items],
        count=len(page.items),
        total=page.total,
        next_cursor=page.next_cursor,
        next=next_link(request, page.next_cursor),
    )


def _indexed(container: Container, workspace: str, file_id: str) -> tuple[DocumentRecord, list[Hit]]:
    doc = container.state.get_document(workspace, file_id)
    if doc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no document {file_id!r} in this workspace")
    chunks = container.index.file_chunks(workspace, file_id, doc.revision) if doc.revision else []
    return doc, sorted(chunks, key=lambda h: h.chunk_index)


@router.get(
    "/documents/{file_id:path}/chunks",
    response_model=ChunkList,
    responses={**_AUTH, 404: {"model": ErrorBody, "description": "No such file in the caller's workspace"}},
)
def document_chunks(file_id: str, workspace: Workspace, container: ContainerDep) -> ChunkList:
    """The searchable chunks of a file's active version, in order (empty when nothing is indexed)."""
    doc, chunks = _indexed(container, workspace, file_id)
    return ChunkList(
        file_id=doc.file_id,
        path=doc.path,
        version=doc.version,
        chunks=[
            ChunkOut(index=c.chunk_index, start=c.start, end=c.end, text=c.text, heading=c.heading) for c in chunks
        ],
    )


@router.get(
    "/documents/{file_id:path}/passage",
    response_model=PassageOut,
    responses={
        **_AUTH,
        404: {"model": ErrorBody, "description": "No such file, or nothing indexed for it"},
        422: {"model": ErrorBody, "description": "The range is outside the document"},
    },
)
def document_passage(
    file_id: str,
    workspace: Workspace,
    container: ContainerDep,
    start: Annotated[int, Query(ge=0)],
    end: Annotated[int, Query(ge=0)],
    context: Annotated[int, Query(ge=0, le=2000, description="characters of surrounding text each side")] = 300,
) -> PassageOut:
    """A passage of the file's active version with the text around it (what a citation quotes, in place)."""
    doc, chunks = _indexed(container, workspace, file_id)
    if not chunks:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"nothing of {file_id!r} is indexed")
    text = parsed_text(chunks)
    if end > len(text) or start > end:
        raise HTTPException(422, f"range {start}-{end} is outside the document ({len(text)} characters)")
    return PassageOut(
        file_id=doc.file_id,
        path=doc.path,
        version=doc.version,
        start=start,
        end=end,
        before=text[max(0, start - context) : start],
        text=text[start:end],
        after=text[end : end + context],
        length=len(text),
    )


def parsed_text(chunks: list[Hit]) -> str:
    """The parsed document as far as its chunks cover it (chunks overlap; a gap, if any, reads as spaces)."""
    length = max(c.end for c in chunks)
    buf = [" "] * length
    for c in chunks:
        buf[c.start : c.end] = c.text
    return "".join(buf)


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
