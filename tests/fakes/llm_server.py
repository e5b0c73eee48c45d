"""A scripted, OpenAI-compatible chat server on loopback, for driving the real `openai` client in tests.

    with ScriptedLLM() as llm:
        llm.push(Reply("Paris [1]"), Error(429, retry_after=1), Slow(5, then=Echo()))
        client = openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0)
        ...
        assert llm.requests[0]["messages"][-1]["content"] == "..."

Each `POST /v1/chat/completions` consumes one scripted step from the queue (or `default` when the queue is
empty) and answers in the wire shape the official SDK parses: a `chat.completion` object, or, when the
request says `"stream": true`, `chat.completion.chunk` objects as SSE `data:` events ending in
`data: [DONE]`. `GET /v1/models` lists one model.

The server is Starlette under uvicorn on a daemon thread with its own event loop, so the (synchronous or
async) client under test talks real HTTP to it. Usage numbers are word counts, not real tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL_ID = "scripted-llm"
# A fixed timestamp keeps every response byte-for-byte reproducible.
CREATED = 1_700_000_000
# How many characters of tool-call arguments go in one streamed fragment; small enough that any
# non-trivial argument object arrives in several pieces, as it does from OpenAI.
ARGUMENT_FRAGMENT_CHARS = 8
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

JSONObject: TypeAlias = dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant makes; `id` defaults to `call_scripted_<request>_<index>`."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """An assistant message: text, tool calls, or both (finish_reason "tool_calls" when any)."""

    text: str
    tool_calls: list[ToolCall] | None = None


@dataclass(frozen=True)
class Error:
    """An OpenAI-shaped error response; `retry_after` (seconds) adds a `retry-after` header."""

    status: int
    message: str = "scripted error"
    retry_after: float | None = None


@dataclass(frozen=True)
class Slow:
    """Holds the response back `seconds` before answering with `then` (to trip client timeouts).

    The wait ends early, without answering, if the client hangs up or the server is stopping.
    """

    seconds: float
    then: Step


@dataclass(frozen=True)
class Echo:
    """Replies with the text of the last user message (empty if there is none)."""


Step: TypeAlias = Reply | Error | Slow | Echo | Callable[[JSONObject], "Step"]

_NO_SCRIPT = Error(500, "no scripted response")

# OpenAI's `error.type` / `error.code` for the statuses tests script most; anything else gets a generic
# pair by status class. Shapes from https://platform.openai.com/docs/guides/error-codes.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class ScriptedLLM:
    """The server; use as a context manager or call `start()` / `stop()`.

    `requests` holds every chat-completion request body, in arrival order. `push` queues steps, one per
    request; when the queue is empty `default` answers, and with no default the reply is a 500
    "no scripted response". Safe to `push` while the server runs.
    """

    def __init__(self) -> None:
        self.requests: list[JSONObject] = []
        self.default: Step | None = None
        self.base_url = ""
        self._script: deque[Step] = deque()
        self._script_lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Ends any Slow step still waiting, so stop() does not wait out its delay.
        self._stopping = asyncio.Event()
        self._app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def push(self, *steps: Step) -> None:
        with self._script_lock:
            self._script.extend(steps)

    def start(self) -> ScriptedLLM:
        if self._thread is not None:
            raise RuntimeError("ScriptedLLM is already running")
        self._stopping = asyncio.Event()
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=0,  # the OS picks a free port; read back from the listening socket below
            loop="asyncio",
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            # A backstop only: Slow steps end on stop, so in-flight requests finish at once.
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="scripted-llm", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("ScriptedLLM server thread exited during startup")
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(STOP_TIMEOUT_S)
                raise RuntimeError(f"ScriptedLLM did not start within {START_TIMEOUT_S}s")
            time.sleep(0.005)
        listener = server.servers[0]
        port = listener.sockets[0].getsockname()[1]
        self._server, self._thread, self._loop = server, thread, listener.get_loop()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None or loop is None:
            return
        loop.call_soon_threadsafe(self._stopping.set)
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"ScriptedLLM did not stop within {STOP_TIMEOUT_S}s")
        self._server = self._thread = self._loop = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- routes -------------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        model = {"id": MODEL_ID, "object": "model", "created": CREATED, "owned_by": "eventrag-tests"}
        return JSONResponse({"object": "list", "data": [model]})

    async def _chat_completions(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(Error(400, "request body is not valid JSON"))
        if not isinstance(body, dict):
            return _error_response(Error(400, "request body must be a JSON object"))
        self.requests.append(body)
        number = len(self.requests)
        step = self._next_step()
        while True:
            try:
                step = _resolve(step, body)
            except Exception as exc:  # a broken callable step: tell the client, do not hide it
                return _error_response(Error(500, f"scripted step raised {exc!r}"))
            if isinstance(step, Slow):
                if not await self._hold(step.seconds, request):
                    # The client hung up (this reply goes nowhere) or the server is stopping (503).
                    return Response(status_code=503)
                step = step.then
            elif isinstance(step, Error):
                return _error_response(step)
            else:
                return _completion_response(step, body, number)

    def _next_step(self) -> Step:
        with self._script_lock:
            if self._script:
                return self._script.popleft()
        return self.default if self.default is not None else _NO_SCRIPT

    async def _hold(self, seconds: float, request: Request) -> bool:
        """Sleeps `seconds`; False if the client disconnected or the server began stopping first."""
        sleep = asyncio.ensure_future(asyncio.sleep(seconds))
        hang_up = asyncio.ensure_future(_until_disconnected(request))
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({sleep, hang_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleep, hang_up, stopping):
            task.cancel()
        await asyncio.gather(sleep, hang_up, stopping, return_exceptions=True)
        # cancel() leaves a finished task alone, so the sleep is uncancelled only if it ran out first.
        return not sleep.cancelled()


async def _until_disconnected(request: Request) -> None:
    # Once the body has been read, uvicorn's receive() blocks until the client disconnects.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _resolve(step: Step, body: JSONObject) -> Reply | Error | Slow:
    """Turns callables and Echo into the concrete step they stand for."""
    while True:
        if isinstance(step, Reply | Error | Slow):
            return step
        if isinstance(step, Echo):
            return Reply(_last_user_text(body))
        if callable(step):
            step = step(body)
            continue
        raise TypeError(f"not a scripted step: {step!r}")


def _last_user_text(body: JSONObject) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: keep the text ones
                return "".join(
                    part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
                )
    return ""


def _error_response(error: Error) -> Response:
    kind, code = _ERROR_KINDS.get(
        error.status, ("server_error", None) if error.status >= 500 else ("invalid_request_error", None)
    )
    headers = {}
    if error.retry_after is not None:
        seconds = error.retry_after
        headers["retry-after"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
    payload = {"error": {"message": error.message, "type": kind, "param": None, "code": code}}
    return JSONResponse(payload, status_code=error.status, headers=headers)


def _completion_response(reply: Reply, body: JSONObject, number: int) -> Response:
    tool_calls = [
        {
            "id": call.id or f"call_scripted_{number}_{index}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for index, call in enumerate(reply.tool_calls or [])
    ]
    envelope = {
        "id": f"chatcmpl-scripted-{number}",
        "created": CREATED,
        "model": body.get("model") or MODEL_ID,
        "system_fingerprint": None,
    }
    finish_reason = "tool_calls" if tool_calls else "stop"
    usage = _usage(body, reply.text, tool_calls)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _stream_events(envelope, reply.text, tool_calls, finish_reason, usage if include_usage else None)
        return StreamingResponse(events, media_type="text/event-stream")
    message: JSONObject = {
        "role": "assistant",
        # OpenAI sends null content on a pure tool-call turn.
        "content": reply.text if reply.text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return JSONResponse({**envelope, "object": "chat.completion", "choices": [choice], "usage": usage})


def _usage(body: JSONObject, text: str, tool_calls: list[JSONObject]) -> JSONObject:
    prompt = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [] if isinstance(m, dict))
    completion = len(text.split()) + sum(len(c["function"]["arguments"].split()) for c in tool_calls)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream_events(
    envelope: JSONObject,
    text: str,
    tool_calls: list[JSONObject],
    finish_reason: str,
    usage: JSONObject | None,
) -> AsyncIterator[bytes]:
    """The chunk sequence OpenAI sends: role, content pieces, tool calls (header then argument
    fragments), an empty delta carrying finish_reason, an optional usage-only chunk, then [DONE]."""

    def chunk(delta: JSONObject, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data: JSONObject = {**envelope, "object": "chat.completion.chunk", "choices": [choice]}
        if usage is not None:
            data["usage"] = None  # with include_usage, every chunk but the last carries usage: null
        return _sse(data)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    # Split after each run of whitespace so the pieces rejoin to exactly `text`.
    for piece in re.split(r"(?<=\s)(?=\S)", text):
        if piece:
            yield chunk({"content": piece})
    for index, call in enumerate(tool_calls):
        function = call["function"]
        header = {"index": index, "id": call["id"], "type": "function"}
        yield chunk({"tool_calls": [{**header, "function": {"name": function["name"], "arguments": ""}}]})
        arguments = function["arguments"]
        for start in range(0, len(arguments), ARGUMENT_FRAGMENT_CHARS):
            fragment = arguments[start : start + ARGUMENT_FRAGMENT_CHARS]
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
    yield chunk({}, finish_reason)
    if usage is not None:
        yield _sse({**envelope, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _sse(data: JSONObject) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


__all__ = ["CREATED", "MODEL_ID", "Echo", "Error", "Reply", "ScriptedLLM", "Slow", "Step", "ToolCall"]
