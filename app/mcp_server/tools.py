"""The MCP tools: their arguments, their structured results, and the service calls behind them.

Every tool is a plain function `(caller, args) -> result model`, run off the event loop. It calls what the
REST API calls: the agent's own tools (`search_passages`, `read_span`: bound to one workspace, refusing
arguments they do not take), `make_ask` and the answer path of `POST /query`, and the `GET /documents/{id}`
and `GET /events/{id}` route functions themselves. Results that mirror REST objects are built by the REST
code (`CitationOut`, `DocumentOut`, `EventOut`, `QueryResponse`), so a field added there appears here too.

Arguments are pydantic models with `extra="forbid"`: their JSON schema (`additionalProperties: false`) is
what `tools/list` advertises, and an argument a tool does not take is an error, never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from app.container import Container
from app.routes.documents import document_out, get_document
from app.routes.events import get_event
from app.routes.query import answer_out, citations_out, history_of, make_ask, remember
from app.schemas import (
    QUESTION_MAX_CHARS,
    CitationOut,
    DocumentOut,
    EventOut,
    QueryFilters,
    QueryRequest,
    QueryResponse,
)
from retrieval.agent import READ_LIMIT, ToolArgumentError, ToolCallError
from retrieval.answering import Answer, Citation
from stores.ports import DocumentRecord, DocumentStatus, Hit, SearchMode, StateStore

LIST_PAGE_DEFAULT = 100
LIST_PAGE_MAX = 1000  # as GET /documents
# Registry rows one list call reads at most: a narrow path_prefix over a large workspace answers a short page
# and a cursor instead of scanning everything in one request.
LIST_SCAN_MAX = 5000

_T = TypeVar("_T")


@dataclass(slots=True, frozen=True)
class Caller:
    """Who is calling: the container of the app and the workspace of the caller's API key. Every tool runs
    in `workspace` only; nothing in the arguments can name another one."""

    container: Container
    workspace: str
    # time.monotonic() by which the answer must be sent: on AWS Lambda, the invocation's end (less a margin),
    # so an agent gets a tool error it can act on instead of the gateway's bare 503. None elsewhere.
    deadline: float | None = None


# Arguments --------------------------------------------------------------------------------------------


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchArgs(_Arguments):
    query: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS, description="what to look for, in words")
    top_k: int | None = Field(
        None, ge=1, description="passages to return (default EVENTRAG_TOP_K_DEFAULT, capped at EVENTRAG_TOP_K_MAX)"
    )
    filters: QueryFilters | None = Field(None, description="restrict the search; all given conditions must hold")
    mode: SearchMode | None = Field(None, description="dense, sparse or hybrid; the server default if unset")


class ReadArgs(_Arguments):
    file_id: str = Field(min_length=1, description="the file_id of a document (from search_documents or list)")
    start: int = Field(0, ge=0, description="first character (offset into the parsed text)")
    end: int | None = Field(
        None, ge=0, description=f"character after the last one; at most {READ_LIMIT} characters per call"
    )


class ListArgs(_Arguments):
    path_prefix: str | None = Field(None, description='only documents whose path starts with this ("handbook/")')
    status: DocumentStatus | None = Field(None, description="only documents with this status; all if unset")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    limit: int = Field(LIST_PAGE_DEFAULT, ge=1, le=LIST_PAGE_MAX, description="documents per page")


class AskArgs(_Arguments):
    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="continue (or start) a conversation kept by the server: follow-ups may refer to earlier turns",
    )
    top_k: int | None = Field(None, ge=1, description="passages to retrieve (capped at EVENTRAG_TOP_K_MAX)")
    filters: QueryFilters | None = Field(None, description="answer from these documents only")
    extractive: bool = Field(False, description="quote the best passages even when an LLM is configured")


class DocumentStatusArgs(_Arguments):
    file_id: str = Field(min_length=1, description="the file_id the source uses for the file")


class EventStatusArgs(_Arguments):
    event_id: str = Field(min_length=1, description="the event id: the webhook-id header of the delivery")


# Results ----------------------------------------------------------------------------------------------


class SearchResult(BaseModel):
    passages: list[CitationOut] = Field(
        description="best first; n is the rank, text == the document's parsed text[start:end]"
    )


class DocumentText(BaseModel):
    file_id: str
    path: str
    version: int | None
    title: str | None = None
    start: int
    end: int
    length: int = Field(description="characters in the whole document")
    text: str = Field(description="exactly the document's parsed text[start:end], of its latest indexed version")
    next_start: int | None = Field(description="pass as start to read on; null at the end of the document")
    page_start: int | None = Field(None, description="first PDF page or slide the text is on")
    page_end: int | None = Field(None, description="last PDF page or slide the text is on")
    sheet: str | None = Field(None, description="the spreadsheet sheet the text is from")


class DocumentPage(BaseModel):
    documents: list[DocumentOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


# The tools --------------------------------------------------------------------------------------------


def search_documents(caller: Caller, args: SearchArgs) -> SearchResult:
    c = caller.container
    body = QueryRequest(question=args.query, top_k=args.top_k, filters=args.filters, mode=args.mode)
    ask = make_ask(c, caller.workspace, body, [])  # the top_k cap, the filters and the mode of POST /query
    return SearchResult(passages=passages_out(c.agent.search_passages(ask, {"query": args.query})))


def read_document(caller: Caller, args: ReadArgs) -> DocumentText:
    return document_text(caller, args.model_dump(exclude_none=True), READ_LIMIT)


def list_documents(caller: Caller, args: ListArgs) -> DocumentPage:
    docs, cursor = documents_page(
        caller.container.state,
        caller.workspace,
        prefix=args.path_prefix or "",
        status=args.status,
        cursor=args.cursor,
        limit=args.limit,
    )
    return DocumentPage(documents=[document_out(d) for d in docs], next_cursor=cursor)


@dataclass(slots=True)
class Deferred:
    """A result and the write that goes with it, made only once the result is on its way to the caller
    (an answer that timed out must not leave a turn in the conversation the caller never saw)."""

    result: BaseModel
    commit: Callable[[], None]


def ask(caller: Caller, args: AskArgs) -> Deferred:
    c, workspace = caller.container, caller.workspace
    body = QueryRequest(
        question=args.question,
        top_k=args.top_k,
        filters=args.filters,
        extractive=args.extractive,
        session_id=args.session_id,
    )
    answer = c.agent.answer(make_ask(c, workspace, body, history_of(c, workspace, body.session_id)))
    return Deferred(answer_out(answer), lambda: remember(c, workspace, body.session_id, body.question, answer))


def document_status(caller: Caller, args: DocumentStatusArgs) -> DocumentOut:
    return _as_tool_error(lambda: get_document(args.file_id, caller.workspace, caller.container))


def event_status(caller: Caller, args: EventStatusArgs) -> EventOut:
    return _as_tool_error(lambda: get_event(args.event_id, caller.workspace, caller.container))


def _as_tool_error(call: Callable[[], _T]) -> _T:
    """The REST route's own answer, its refusals (404: not in this workspace) turned into tool errors."""
    try:
        return call()
    except HTTPException as exc:
        raise ToolCallError(str(exc.detail)) from exc


# Shared with the resources ----------------------------------------------------------------------------


def passages_out(hits: list[Hit]) -> list[CitationOut]:
    """Search hits as REST citations (numbered by rank), converted by the same code as /query's."""
    return citations_out(Answer("", "extractive", [Citation.from_hit(n, h) for n, h in enumerate(hits, start=1)]))


def document_text(caller: Caller, args: dict[str, Any], limit: int) -> DocumentText:
    span = caller.container.agent.read_span(caller.workspace, args, limit=limit)
    p = span.passage
    return DocumentText(
        file_id=p.file_id,
        path=p.path,
        version=p.version,
        title=p.title,
        start=p.start,
        end=p.end,
        length=span.length,
        text=p.text,
        next_start=p.end if p.end < span.length else None,
        page_start=p.page_start,
        page_end=p.page_end,
        sheet=p.sheet,
    )


def documents_page(
    state: StateStore,
    workspace: str,
    *,
    prefix: str,
    status: DocumentStatus | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[DocumentRecord], str | None]:
    """One page of the workspace's documents (ordered by path, then file id) under `prefix`, and the cursor
    of the next one. The cursor is tied to the filters it was issued for."""
    prefix = prefix.lstrip("/")
    offset = _read_cursor(cursor, prefix, status)
    found: list[DocumentRecord] = []
    scanned = 0
    while scanned < LIST_SCAN_MAX:
        want = min(500, LIST_SCAN_MAX - scanned)
        batch = state.list_documents(workspace, status=status, limit=want, offset=offset)
        for d in batch:
            offset += 1
            if d.path.startswith(prefix):
                found.append(d)
                if len(found) == limit:
                    return found, _cursor(offset, prefix, status)
            elif prefix and d.path > prefix:
                return found, None  # ordered by path: nothing further down starts with the prefix
        scanned += len(batch)
        if len(batch) < want:
            return found, None
    return found, _cursor(offset, prefix, status)


def _cursor(offset: int, prefix: str, status: DocumentStatus | None) -> str:
    raw = json.dumps({"o": offset, "p": prefix, "s": status.value if status else None}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None, prefix: str, status: DocumentStatus | None) -> int:
    if not cursor:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        offset, issued_prefix, issued_status = data["o"], data["p"], data["s"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise ToolArgumentError("cursor is not one this server issued: pass next_cursor back unchanged") from exc
    if not isinstance(offset, int) or offset < 0:
        raise ToolArgumentError("cursor is not one this server issued: pass next_cursor back unchanged")
    if (issued_prefix, issued_status) != (prefix, status.value if status else None):
        raise ToolArgumentError("cursor belongs to another listing: keep path_prefix and status as they were")
    return offset


# The registry --------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    arguments: type[_Arguments]
    result: type[BaseModel]
    run: Callable[[Caller, Any], BaseModel | Deferred]
    read_only: bool = True
    uses_llm: bool = False  # its time limit includes one LLM call past the agent's time budget


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "search_documents",
        "Search documents",
        "Search the documents of your workspace (hybrid: meaning and keywords). Returns the best passages,"
        " each with file_id, path, version, character offsets (text is exactly the document's text[start:end]),"
        " heading, title and score. Use read_document to read around a passage, ask for a cited answer.",
        SearchArgs,
        SearchResult,
        search_documents,
    ),
    ToolSpec(
        "read_document",
        "Read a document",
        f"Read the exact text of the latest indexed version of one document, characters start to end (at most"
        f" {READ_LIMIT} per call). next_start continues where this read stopped; length is the whole document.",
        ReadArgs,
        DocumentText,
        read_document,
    ),
    ToolSpec(
        "list_documents",
        "List documents",
        "List the documents of your workspace, ordered by path: status (indexed, pending, deleted, skipped,"
        " failed), version, chunk count and the last error. Narrow with path_prefix (a folder like"
        " 'handbook/') and status; pass next_cursor back as cursor for the next page.",
        ListArgs,
        DocumentPage,
        list_documents,
    ),
    ToolSpec(
        "ask",
        "Ask a question",
        "Answer a question from the documents of your workspace, citing the passages used: citations carry"
        " file_id, path, version, start, end and the quoted text. covered=false means the documents do not"
        " cover the question. With session_id the conversation is kept, so follow-ups can refer to it.",
        AskArgs,
        QueryResponse,
        ask,
        read_only=False,  # with session_id it appends to the conversation
        uses_llm=True,
    ),
    ToolSpec(
        "document_status",
        "Document status",
        "The indexing status of one document by file_id: status, version, chunk count, the last event applied"
        " and the last error. A document is searchable when its status is indexed.",
        DocumentStatusArgs,
        DocumentOut,
        document_status,
    ),
    ToolSpec(
        "event_status",
        "Event status",
        "The status of one webhook delivery by event id (its webhook-id header): received, queued, processing,"
        " done, failed, superseded or held, with attempts and the error. After sending a change, poll until"
        " done (or failed), then search: the change is indexed.",
        EventStatusArgs,
        EventOut,
        event_status,
    ),
)
TOOLS_BY_NAME = {t.name: t for t in TOOLS}
