"""POST /query: a cited answer from the caller's documents."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ContainerDep, Workspace
from app.schemas import CitationOut, ErrorBody, QueryFilters, QueryRequest, QueryResponse
from ingest.ports import SearchFilter
from retrieval.answering import Answer
from retrieval.llm import LLMError

router = APIRouter(tags=["query"])


def to_filter(f: QueryFilters | None) -> SearchFilter | None:
    if f is None:
        return None
    equals, any_of = [], []
    for key, value in (f.metadata or {}).items():
        if isinstance(value, list):
            any_of.append((key, tuple(value)))
        else:
            equals.append((key, value))
    return SearchFilter(
        file_ids=tuple(f.file_id or ()),
        path_prefix=f.path_prefix,
        content_types=tuple(f.content_type or ()),
        metadata_equals=tuple(equals),
        metadata_any=tuple(any_of),
    )


def answer_out(a: Answer, fallback_reason: str | None = None) -> QueryResponse:
    return QueryResponse(
        answer=a.answer,
        mode=a.mode,
        citations=[
            CitationOut(
                n=c.n, file_id=c.file_id, path=c.path, version=c.version, start=c.start, end=c.end, text=c.text,
                score=c.score, heading=c.heading, title=c.title,
            )
            for c in a.citations
        ],
        invented_citations=a.invented_citations,
        covered=a.covered,
        fallback_reason=fallback_reason,
    )


@router.post(
    "/query",
    response_model=QueryResponse,
    responses={
        401: {"model": ErrorBody, "description": "Missing or unknown API key"},
        422: {"model": ErrorBody, "description": "Invalid request body"},
        502: {"model": ErrorBody, "description": "The language model failed"},
        503: {"model": ErrorBody, "description": "The language model is rate limited or unreachable"},
        504: {"model": ErrorBody, "description": "The language model timed out"},
    },
)
def query(body: QueryRequest, workspace: Workspace, container: ContainerDep) -> QueryResponse:
    """Answer a question from the caller's workspace only, citing the passages used.

    With an LLM configured (EVENTRAG_LLM_MODEL) the answer is written by the model from fenced passages;
    without one it is extractive. When nothing relevant is found the answer says so (`covered: false`).
    """
    s = container.settings
    top_k = min(body.top_k or s.top_k_default, s.top_k_max)
    kwargs = dict(
        top_k=top_k,
        flt=to_filter(body.filters),
        mode=body.mode or s.search_mode,
        score_threshold=body.score_threshold,
        group_by_document=body.group_by_document,  # accepted by the schema; passed on since issue 4
    )
    try:
        result = container.answerer.answer(workspace, body.question, extractive=body.extractive, **kwargs)  # type: ignore[arg-type]
    except LLMError as exc:
        if body.llm_fallback != "extractive":
            raise
        fallback = container.answerer.answer(workspace, body.question, extractive=True, **kwargs)  # type: ignore[arg-type]
        return answer_out(fallback, fallback_reason=str(exc))
    return answer_out(result)
