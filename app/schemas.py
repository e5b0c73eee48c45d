"""Request and response bodies of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stores.ports import SearchMode

# A question longer than this is not a question: it bounds the query embedding, the BM25 query and the prompt.
# The REST API and the MCP tools share it.
QUESTION_MAX_CHARS = 4000


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, in words")


class Accepted(BaseModel):
    event_id: str
    status: str
    status_url: str
    duplicate: bool = Field(False, description="this webhook-id was received before; nothing changed")


class QueryFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: str | None = Field(None, description='folder prefix ("handbook/") or an exact path')
    content_type: list[str] | None = Field(None, description="any of these parsed types, e.g. text/markdown")
    file_id: list[str] | None = Field(None, description="any of these files")
    metadata: dict[str, str | int | float | bool | list[str | int | float | bool]] | None = Field(
        None, description="webhook metadata: a value means equality, a list means any of"
    )
    page_from: int | None = Field(None, ge=1, description="passages on this page (or slide) or later")
    page_to: int | None = Field(None, ge=1, description="passages on this page (or slide) or earlier")
    sheet: list[str] | None = Field(None, description="passages from any of these spreadsheet sheets")


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    top_k: int | None = Field(None, ge=1, description="passages to retrieve (capped by the server maximum)")
    filters: QueryFilters | None = None
    mode: SearchMode | None = Field(None, description="dense, sparse or hybrid; the server default if unset")
    score_threshold: float | None = Field(None, description="drop passages scoring below this")
    group_by_document: bool = Field(False, description="at most one passage per file")
    extractive: bool = Field(False, description="answer extractively even when an LLM is configured")
    llm_fallback: Literal["error", "extractive"] = Field(
        "error", description="when the LLM fails: answer 502/503/504, or fall back to an extractive answer"
    )
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="continue (or start) a conversation kept by the server",
    )
    stream: bool = Field(False, description="server-sent events: tokens, then citations, then done")


class CitationOut(BaseModel):
    n: int = Field(description="the [n] marker in the answer")
    file_id: str
    path: str
    version: int | None
    start: int = Field(description="character offset of the passage in the parsed text")
    end: int
    text: str = Field(description="the quoted passage")
    score: float
    heading: str | None = None
    title: str | None = None
    page_start: int | None = Field(None, description="first page (PDF) or slide (PPTX) the passage is on, 1-based")
    page_end: int | None = Field(None, description="last page or slide the passage is on")
    sheet: str | None = Field(None, description="the spreadsheet sheet the passage is from")


class QueryResponse(BaseModel):
    answer: str
    mode: Literal["llm", "extractive"]
    citations: list[CitationOut]
    invented_citations: int = Field(0, description="[n] markers the model made up; removed from the answer")
    covered: bool = Field(description="false when the documents do not cover the question")
    fallback_reason: str | None = None


class DocumentOut(BaseModel):
    workspace: str
    file_id: str
    path: str
    status: str
    version: int | None
    position: str | None
    content_type: str | None
    charset: str | None = Field(None, description="the character encoding the text was decoded with")
    chunk_count: int
    embedded: int
    reused: int
    last_event_id: str | None
    last_error: str | None
    metadata: dict[str, Any]
    updated_at: datetime | None


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    count: int


class EventOut(BaseModel):
    event_id: str
    workspace: str
    type: str
    file_id: str
    path: str
    version: int | None
    status: str
    attempts: int
    error: str | None
    detail: str | None
    received_at: datetime
    updated_at: datetime


class EventStatusQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_ids: list[str] = Field(min_length=1, max_length=1000)


class EventStatusList(BaseModel):
    events: list[EventOut]
    unknown: list[str] = Field(default_factory=list, description="ids with no event in the caller's workspace")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class TurnOut(BaseModel):
    role: str
    content: str
    citations: list[dict[str, Any]] = Field(default_factory=list)
    at: float


class SessionOut(BaseModel):
    session_id: str
    workspace: str
    turns: list[TurnOut]
    created_at: datetime
    updated_at: datetime
