"""An OpenAI-compatible face: `POST /v1/chat/completions` and `GET /v1/models`.

Tools that speak OpenAI's API (the official SDKs, chat front ends) can use eventrag as a "model". The API
key (Bearer) maps to the workspace as elsewhere. The conversation comes from the client's `messages`: the
last user message is the question, earlier user/assistant turns are history (client system messages are
not passed on: eventrag's own grounding prompt applies). Citations travel twice: as a "Sources" list at the
end of the text, and in the extra top-level field `citations` (in the last chunk when streaming), with
`unverified_quotes` beside them. The extra request field `top_k` (e.g. `extra_body={"top_k": 8}` in the
SDK) sets the passages per answer; above EVENTRAG_TOP_K_MAX it is refused with 422, as on `/query`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.container import Container
from app.deps import ContainerDep, Workspace, run_blocking
from app.routes.query import citations_out
from app.schemas import QUESTION_MAX_CHARS, ErrorBody, Text
from retrieval.agent import Ask
from retrieval.answering import Answer, version_label
from retrieval.errors import QuestionRejectedError
from retrieval.llm import LLMError
from stores.sessions import Turn

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

MODEL_ID = "eventrag"

# Bounds on what a client may send. The question (the last user message) has /query's limit; earlier turns
# are the history, of which the agent keeps the newest that fit EVENTRAG_AGENT__HISTORY_TOKENS and at most
# the turns a stored session keeps (EVENTRAG_AGENT__SESSION_MAX_TURNS).
MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 32_000
MAX_CONTENT_PARTS = 64


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Annotated[str, Field(max_length=64)] = "text"
    text: Annotated[Text, Field(max_length=MAX_MESSAGE_CHARS)] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Annotated[str, Field(max_length=64)]
    content: (
        Annotated[Text, Field(max_length=MAX_MESSAGE_CHARS)]
        | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]
        | None
    ) = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(max_length=256)] = MODEL_ID
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    top_k: int | None = Field(None, ge=1, description="eventrag extension: passages per answer")


def _text(m: ChatMessage) -> str:
    if isinstance(m.content, str):
        return m.content
    if isinstance(m.content, list):
        return " ".join(p.text or "" for p in m.content)[:MAX_MESSAGE_CHARS]
    return ""


def _error(status: int, message: str, kind: str) -> JSONResponse:
    # OpenAI clients read `error.message`; eventrag's own clients and the OpenAPI document read `detail`.
    body = {"error": {"message": message, "type": kind, "code": status}, "detail": message}
    return JSONResponse(body, status_code=status)


def sources_text(a: Answer) -> str:
    if not a.citations:
        return ""
    lines = []
    for c in a.citations:
        where = ", ".join(x for x in (version_label(c.version), f"characters {c.start}-{c.end}") if x)
        lines.append(f"[{c.n}] {c.path} ({where})")
    return "\n\nSources:\n" + "\n".join(lines)


@router.get("/models")
def list_models(workspace: Workspace) -> dict[str, Any]:
    """The one model eventrag serves: answers grounded in the caller's documents."""
    return {
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "eventrag"}],
    }


@router.post(
    "/chat/completions",
    responses={
        200: {
            "description": "A chat.completion object (or chat.completion.chunk events when streaming),"
            " with the extra field `citations`"
        },
        400: {
            "description": "No user message to answer, or a question longer than /query allows"
            " (an OpenAI-style `error` object)"
        },
        401: {"model": ErrorBody, "description": "Missing or unknown API key"},
        422: {
            "model": ErrorBody,
            "description": "Too many messages, a message too long, or top_k above EVENTRAG_TOP_K_MAX (the"
            " OpenAI-style `error` object too)",
        },
        502: {"description": "The language model failed"},
        503: {"description": "The language model is rate limited or unreachable"},
        504: {"description": "The language model timed out"},
    },
)
async def chat_completions(body: ChatRequest, request: Request, workspace: Workspace, container: ContainerDep) -> Any:
    """OpenAI Chat Completions over the caller's documents, streaming and not."""
    return await run_blocking(request, complete_chat, container, workspace, body)


def complete_chat(container: Container, workspace: str, body: ChatRequest) -> Any:
    """The work of `/v1/chat/completions`, all of it blocking: one hop off the loop."""
    turns = [m for m in body.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user" or not _text(turns[-1]).strip():
        return _error(400, "the last message must be a non-empty user message", "invalid_request_error")
    question = _text(turns[-1])
    if len(question) > QUESTION_MAX_CHARS:
        return _error(
            400,
            f"the question (the last user message) has {len(question)} characters; at most {QUESTION_MAX_CHARS}",
            "invalid_request_error",
        )
    keep = container.settings.agent.session_max_turns
    history = tuple(Turn(m.role, _text(m)) for m in turns[:-1][-keep:])
    s = container.settings
    ask = Ask(workspace, question, top_k=body.top_k or s.top_k_default, mode=s.search_mode, history=history)
    try:
        container.agent.check(ask)
    except QuestionRejectedError as exc:
        return _error(exc.status_code, str(exc), "invalid_request_error")
    created = int(time.time())
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    if not body.stream:
        try:
            a = container.agent.answer(ask)
        except LLMError as exc:
            return _error(exc.status_code, str(exc), "upstream_error")
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": a.answer + sources_text(a)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "citations": [c.model_dump() for c in citations_out(a)],
            "unverified_quotes": a.unverified_quotes,
        }

    events = container.agent.run(ask, stream=True)
    try:
        first = next(events)
    except LLMError as exc:
        return _error(exc.status_code, str(exc), "upstream_error")

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        payload = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(payload)}\n\n"

    def generate() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        try:
            for event in [first, *events]:
                if event.kind == "token":
                    yield chunk({"content": event.text})
                elif event.answer is not None:
                    a = event.answer
                    if sources_text(a):
                        yield chunk({"content": sources_text(a)})
                    yield chunk(
                        {},
                        "stop",
                        citations=[c.model_dump() for c in citations_out(a)],
                        unverified_quotes=a.unverified_quotes,
                    )
        except LLMError as exc:
            yield f"data: {json.dumps({'error': {'message': str(exc), 'code': exc.status_code}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(generate(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
