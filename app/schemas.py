"""Request and response bodies of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from stores.ports import SearchMode

# A question longer than this is not a question: it bounds the query embedding, the BM25 query and the prompt.
# The REST API, the OpenAI-compatible route and the MCP tools share it.
QUESTION_MAX_CHARS = 4000


def _unicode(value: str) -> str:
    """JSON may carry a lone surrogate escape ("\ud800"): not text, and unencodable downstream."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains a lone surrogate escape at character {exc.start}: not valid Unicode") from exc
    return value


Text = Annotated[str, AfterValidator(_unicode)]
# Metadata keys as the webhook body allows them (`ingest.webhook_body.METADATA_KEY`).
MetadataKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_-]*$", max_length=64)]
FilterScalar = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_unicode)] | int | float | bool


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, in words")


class Accepted(BaseModel):
    event_id: str
    status: str
    status_url: str
    duplicate: bool = Field(False, description="this webhook-id was received before; nothing changed")


class QueryFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path_prefix: Annotated[Text, Field(max_length=1024)] | None = Field(
        None, description='folder prefix ("handbook/") or an exact path; "" or "/" is the whole workspace'
    )
    content_type: Annotated[list[Annotated[Text, Field(max_length=255)]], Field(max_length=50)] | None = Field(
        None, description="any of these parsed types, e.g. text/markdown"
    )
    file_id: Annotated[list[Annotated[Text, Field(max_length=512)]], Field(max_length=1000)] | None = Field(
        None, description="any of these files"
    )
    metadata: (
        Annotated[
            dict[MetadataKey, FilterScalar | Annotated[list[FilterScalar], Field(max_length=100)]],
            Field(max_length=32),
        ]
        | None
    ) = Field(None, description="webhook metadata: a value means equality, a list means any of")
    page_from: int | None = Field(None, ge=1, description="passages on this page (or slide) or later")
    page_to: int | None = Field(None, ge=1, description="passages on this page (or slide) or earlier")
    sheet: Annotated[list[Annotated[Text, Field(max_length=255)]], Field(max_length=100)] | None = Field(
        None, description="passages from any of these spreadsheet sheets"
    )


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Text = Field(min_length=1, max_length=QUESTION_MAX_CHARS)
    top_k: int | None = Field(
        None,
        ge=1,
        description="passages to retrieve and cite (default EVENTRAG_TOP_K_DEFAULT); above EVENTRAG_TOP_K_MAX"
        " the request is refused with 422",
    )
    filters: QueryFilters | None = None
    mode: SearchMode | None = Field(None, description="dense, sparse or hybrid; the server default if unset")
    score_threshold: float | None = Field(None, description="drop passages whose rank_score is below this")
    group_by_document: bool = Field(False, description="at most one passage per file")
    extractive: bool = Field(False, description="answer extractively even when an LLM is configured")
    llm_fallback: Literal["error", "extractive"] = Field(
        "error", description="when the LLM fails: answer 502/503/504, or fall back to an extractive answer"
    )
    session_id: Text | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="continue (or start) a conversation kept by the server (the newest turns are kept)",
    )
    stream: bool = Field(False, description="server-sent events: tokens, then citations, then done")


class Span(BaseModel):
    start: int
    end: int


class CitationOut(BaseModel):
    n: int = Field(description="the [n] marker in the answer")
    file_id: str
    path: str
    version: int | None
    start: int = Field(description="character offset of the passage in the parsed text")
    end: int
    text: str = Field(description="the cited passage: parsed_text[start:end]")
    rank_score: float = Field(
        description="what the search mode ranked by: cosine (dense), BM25 (sparse), fused rank score (hybrid)"
    )
    similarity: float | None = Field(None, description="cosine similarity of the passage to the question")
    keyword_score: float | None = Field(
        None, description="BM25 score of the passage for the question (0: no question term in it)"
    )
    quotes: list[Span] = Field(
        default_factory=list,
        description="the ranges of the parsed text that the answer quotes from this passage (offsets, as start/end)",
    )
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
    unverified_quotes: list[str] = Field(
        default_factory=list, description="text the model put in quotation marks that no passage it cites holds"
    )
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
    count: int = Field(description="documents on this page")
    total: int = Field(description="documents matching the filter, on every page")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")
    next: str | None = Field(None, description="the URL of the next page; null on the last")


class ChunkOut(BaseModel):
    index: int
    start: int = Field(description="character offset in the parsed text")
    end: int
    text: str
    heading: str | None = None


class ChunkList(BaseModel):
    file_id: str
    path: str
    version: int | None
    chunks: list[ChunkOut]


class PassageOut(BaseModel):
    file_id: str
    path: str
    version: int | None
    start: int
    end: int
    before: str = Field(description="up to `context` characters of the document before the passage")
    text: str = Field(description="the document's text from start to end")
    after: str = Field(description="up to `context` characters after it")
    length: int = Field(description="characters in the parsed document")


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


class EventList(BaseModel):
    events: list[EventOut]
    count: int = Field(description="events on this page")
    total: int = Field(description="events matching the filter, on every page")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last")
    next: str | None = Field(None, description="the URL of the next page; null on the last")


class DeliveryOut(BaseModel):
    delivery_id: str
    message_id: str = Field(description="the webhook-id of every attempt")
    subscriber: str
    url: str
    type: str
    status: str = Field(description="pending, delivered or failed")
    attempts: int
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    last_status: int | None = Field(description="HTTP status of the last answer")
    last_response: str | None = Field(description="the start of the last answer's body")
    last_error: str | None
    file_id: str | None
    event_id: str | None
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
    count: int
    total: int
    next_cursor: str | None = None
    next: str | None = None


class StatsOut(BaseModel):
    workspace: str
    documents: dict[str, int] = Field(description="documents by status")
    chunks: int = Field(description="chunks of the indexed documents")
    embeddings: dict[str, int] = Field(description="of those chunks: `embedded` by the model, `reused` from the cache")
    events_last_hour: dict[str, int] = Field(description="events received in the last hour, by status")
    events_last_day: dict[str, int] = Field(description="events received in the last 24 hours, by status")
    queue_depth: int = Field(description="the workspace's events received, queued or processing")
    oldest_queued_age_seconds: float | None = Field(description="age of its oldest such event: the ingest lag")
    held: int = Field(description="deletes waiting for confirmation")
    queue_pending: int = Field(description="jobs in the ingest queue, all workspaces")
    deliveries: dict[str, int] = Field(default_factory=dict, description="outbound webhook deliveries by status")


class Me(BaseModel):
    workspace: str
    single_user: bool = Field(description="loopback single-user mode: no API key needed")


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
