"""POST /query: a cited answer from the caller's documents; multi-turn with `session_id`; SSE streaming."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.container import Container
from app.deps import ContainerDep, Workspace, run_blocking
from app.schemas import CitationOut, ErrorBody, QueryFilters, QueryRequest, QueryResponse, Span
from retrieval.agent import AgentEvent, Ask
from retrieval.answering import Answer
from retrieval.llm import LLMError
from stores.ports import SearchFilter
from stores.sessions import Turn

router = APIRouter(tags=["query"])

SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["token", "citations", "done", "error"]},
        "data": {"type": "string", "description": "a JSON object: {text}, {citations}, the answer, {status, detail}"},
    },
}


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
        page_from=f.page_from,
        page_to=f.page_to,
        sheets=tuple(f.sheet or ()),
    )


def citations_out(a: Answer) -> list[CitationOut]:
    return [
        CitationOut(
            n=c.n,
            file_id=c.file_id,
            path=c.path,
            version=c.version,
            start=c.start,
            end=c.end,
            text=c.text,
            rank_score=c.rank_score,
            similarity=c.similarity,
            keyword_score=c.keyword_score,
            quotes=[Span(start=a, end=b) for a, b in c.quotes],
            heading=c.heading,
            title=c.title,
            page_start=c.page_start,
            page_end=c.page_end,
            sheet=c.sheet,
        )
        for c in a.citations
    ]


def answer_out(a: Answer, fallback_reason: str | None = None) -> QueryResponse:
    return QueryResponse(
        answer=a.answer,
        mode=a.mode,
        citations=citations_out(a),
        invented_citations=a.invented_citations,
        unverified_quotes=a.unverified_quotes,
        covered=a.covered,
        fallback_reason=fallback_reason,
    )


def make_ask(container: Container, workspace: str, body: QueryRequest, history: list[Turn]) -> Ask:
    s = container.settings
    return Ask(
        workspace=workspace,
        question=body.question,
        top_k=body.top_k or s.top_k_default,  # above top_k_max the agent refuses it (422)
        flt=to_filter(body.filters),
        mode=body.mode or s.search_mode,
        score_threshold=body.score_threshold,
        history=tuple(history),
        extractive=body.extractive,
        group_by_document=body.group_by_document,
    )


def remember(container: Container, workspace: str, session_id: str | None, question: str, a: Answer) -> None:
    if session_id is None:
        return
    now = time.time()
    container.sessions.append_turns(
        workspace,
        session_id,
        [
            Turn("user", question, at=now),
            Turn("assistant", a.answer, [c.model_dump() for c in citations_out(a)], at=now),
        ],
    )


def history_of(container: Container, workspace: str, session_id: str | None) -> list[Turn]:
    if session_id is None:
        return []
    session = container.sessions.get_session(workspace, session_id)
    return list(session.turns) if session else []


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@router.post(
    "/query",
    response_model=QueryResponse,
    responses={
        200: {
            # Before OpenAPI 3.2, the schema of an event stream describes one event.
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
            "description": "The answer; or, with `stream` or `Accept: text/event-stream`, server-sent events:"
            " `token` ({text}) as the answer is written, then `citations`, then `done` (the whole answer)",
        },
        401: {"model": ErrorBody, "description": "Missing or unknown API key"},
        422: {"model": ErrorBody, "description": "Invalid request body, or top_k above EVENTRAG_TOP_K_MAX"},
        502: {"model": ErrorBody, "description": "The language model failed"},
        503: {"model": ErrorBody, "description": "The language model is rate limited or unreachable"},
        504: {"model": ErrorBody, "description": "The language model timed out"},
    },
)
async def query(body: QueryRequest, request: Request, workspace: Workspace, container: ContainerDep) -> object:
    """Answer a question from the caller's workspace only, citing the passages used.

    With an LLM configured (EVENTRAG_LLM_MODEL) the answer is written by the model from fenced passages (and
    tools, when the model supports them); without one it is extractive. When nothing relevant is found the
    answer says so (`covered: false`). With `session_id` the conversation is kept and follow-ups are
    rewritten into standalone searches. Behind AWS Lambda (Mangum) a streamed response arrives whole.
    """
    stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    out = await run_blocking(request, answer_query, container, workspace, body, stream=stream)
    if isinstance(out, QueryResponse):
        # Validated when it was made: serialised once here, not validated again by FastAPI against
        # `response_model` (the same JSON; the schema still documents it).
        return Response(out.model_dump_json(), media_type="application/json")
    return out


def answer_query(container: Container, workspace: str, body: QueryRequest, *, stream: bool) -> object:
    """The work of `/query`, all of it blocking (session store, search, model): one hop off the loop."""
    ask = make_ask(container, workspace, body, history_of(container, workspace, body.session_id))
    if stream:
        return stream_answer(container, ask, body)
    try:
        result = container.agent.answer(ask)
    except LLMError as exc:
        if body.llm_fallback != "extractive":
            raise
        fallback = container.agent.answer(_extractive(ask))
        remember(container, workspace, body.session_id, body.question, fallback)
        return answer_out(fallback, fallback_reason=str(exc))
    remember(container, workspace, body.session_id, body.question, result)
    return answer_out(result)


def _extractive(ask: Ask) -> Ask:
    from dataclasses import replace

    return replace(ask, extractive=True)


def stream_answer(container: Container, ask: Ask, body: QueryRequest) -> object:
    events = container.agent.run(ask, stream=True)
    fallback_reason: str | None = None
    try:
        first: AgentEvent | None = next(events)  # errors before the first byte still get a proper status code
    except LLMError as exc:
        if body.llm_fallback != "extractive":
            return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
        fallback_reason = str(exc)
        events = container.agent.run(_extractive(ask), stream=True)
        first = next(events)

    def generate() -> Iterator[str]:
        pending: list[AgentEvent] = [first] if first is not None else []
        try:
            for event in _chain(pending, events):
                if event.kind == "token":
                    yield _sse("token", {"text": event.text})
                elif event.answer is not None:
                    out = answer_out(event.answer, fallback_reason)
                    remember(container, ask.workspace, body.session_id, ask.question, event.answer)
                    yield _sse("citations", {"citations": [c.model_dump() for c in out.citations]})
                    yield _sse("done", out.model_dump())
        except LLMError as exc:
            yield _sse("error", {"status": exc.status_code, "detail": str(exc)})

    return StreamingResponse(generate(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _chain(first: list[AgentEvent], rest: Iterator[AgentEvent]) -> Iterator[AgentEvent]:
    yield from first
    yield from rest
