"""CORS for browser clients on another origin: an MCP client in a browser tab, a page calling `/query`.

Off unless `EVENTRAG_CORS_ORIGINS` names origins. The origins are read from the running container's settings
on each request (the container may be built after the app, in its lifespan, as for the body limit), and
Starlette's `CORSMiddleware` answers the preflights and adds the headers. Credentials are never allowed:
callers send their key in a header (`X-API-Key` or `Authorization`), which a preflight has to let through,
not in cookies. A browser's MCP client reads the `Mcp-Session-Id` answer header, so it is exposed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "x-api-key",
    "last-event-id",
    "mcp-session-id",
    "mcp-protocol-version",
)
EXPOSED_HEADERS = ("mcp-session-id", "retry-after")
MAX_AGE_SECONDS = 600


class Cors:
    """`origins_of(scope["app"])` gives the allowed origins; none: requests pass through untouched."""

    def __init__(self, app: ASGIApp, *, origins_of: Callable[[Any], Sequence[str]]) -> None:
        self.app = app
        self.origins_of = origins_of
        self._handlers: dict[tuple[str, ...], CORSMiddleware] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = tuple(self.origins_of(scope["app"])) if scope["type"] == "http" else ()
        if not origins:
            await self.app(scope, receive, send)
            return
        handler = self._handlers.get(origins)
        if handler is None:
            handler = self._handlers[origins] = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=list(ALLOWED_HEADERS),
                expose_headers=list(EXPOSED_HEADERS),
                allow_credentials=False,
                max_age=MAX_AGE_SECONDS,
            )
        await handler(scope, receive, send)
