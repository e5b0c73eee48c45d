"""Every request body is bounded: a pure ASGI middleware that answers 413 before a route reads a byte too many.

`POST /webhooks` keeps its own, larger bound (`EVENTRAG_MAX_BODY_BYTES`: webhook bodies carry file content)
and reads its body itself; every other route gets at most `EVENTRAG_MAX_REQUEST_BYTES`, checked against the
declared `content-length` first and then while the body streams in (uvicorn imposes no limit of its own).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OWN_LIMIT = frozenset({"/webhooks"})  # routes that bound (and stream) their body themselves


class BodyLimit:
    """`limit_of(scope["app"])` gives the bound in bytes (the app's settings may come after the middleware)."""

    def __init__(self, app: ASGIApp, *, limit_of: Callable[[Any], int]) -> None:
        self.app = app
        self.limit_of = limit_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OWN_LIMIT:
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["app"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, f"a body of {declared} bytes", limit)
            return
        # Read the whole body first (every route here parses it whole anyway), then replay it to the app.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > limit:
                await _refuse(send, "the body", limit)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, what: str, limit: int) -> None:
    body = json.dumps({"detail": f"{what} exceeds the limit of {limit} bytes (EVENTRAG_MAX_REQUEST_BYTES)"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
