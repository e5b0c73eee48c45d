"""`/mcp`: the MCP server over Streamable HTTP, behind the API keys of the REST API.

Each request is authenticated first, exactly as the REST routes do it (`app.deps`: `X-API-Key` or
`Authorization: Bearer`, the loopback-only anonymous workspace of `eventrag serve`); a refused key gets a
401 whose body is a JSON-RPC error, so MCP clients show its message. The workspace travels with the request
(`CALLER_SCOPE_KEY` in the ASGI scope) to the tools, which take no workspace argument at all.

The SDK's session manager needs a running task group. Two ways to give it one:

- `eventrag serve` (uvicorn with the app lifespan): `running()` starts one manager for the life of the app;
  responses may stream (SSE) when the client accepts it.
- AWS Lambda (Mangum with `lifespan="off"`) and any server without a lifespan: no manager is running, so each
  request gets its own, entered and left around that one request, with JSON responses. That is cheap
  because the server is stateless: no handshake to remember, no session id (the 2026-07-28 protocol is
  stateless by design; older clients get the SDK's stateless mode), so any instance answers any request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import HTTPException
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INVALID_REQUEST, ErrorData, JSONRPCError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.deps import caller_workspace, get_container
from app.mcp_server.server import CALLER_SCOPE_KEY, build_server
from app.mcp_server.tools import Caller
from app.settings import Settings

log = logging.getLogger(__name__)

# JSON-RPC bodies of /mcp are small: the largest tool argument is a 4,000-character question.
MAX_REQUEST_BYTES = 1024 * 1024
LAMBDA_RESPONSE_MARGIN_SECONDS = 1.0

_LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
_LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Without API keys (`eventrag serve` on loopback) a web page could reach /mcp through DNS rebinding, so
    Host and Origin must be loopback; the spec requires servers to validate Origin for exactly this. With keys
    the key is the guard, and the Host is whatever name the deployment is reached by (API Gateway, a proxy).
    The origins named in EVENTRAG_CORS_ORIGINS are let through too, but never "*"."""
    if settings.anonymous_workspace:
        named = [o for o in settings.cors_origins if o != "*"]
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=_LOOPBACK_HOSTS,
            allowed_origins=[*_LOOPBACK_ORIGINS, *named],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


class McpEndpoint:
    """The ASGI app mounted at `/mcp` (`app.main.create_app`)."""

    def __init__(self, server: Server[Any] | None = None) -> None:
        self.server = server or build_server()
        self._manager: StreamableHTTPSessionManager | None = None

    def _new_manager(self, settings: Settings, *, json_response: bool) -> StreamableHTTPSessionManager:
        return StreamableHTTPSessionManager(
            app=self.server,
            json_response=json_response,
            stateless=True,
            security_settings=transport_security(settings),
            max_request_body_size=MAX_REQUEST_BYTES,
        )

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[None]:
        """One session manager for the life of the app (its lifespan enters this)."""
        manager = self._new_manager(settings, json_response=False)
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            container = await get_container(request)
            workspace = await caller_workspace(request, container, request.headers.get("x-api-key"))
        except HTTPException as exc:
            await _refusal(exc)(scope, receive, send)
            return
        scope[CALLER_SCOPE_KEY] = Caller(container, workspace, _lambda_deadline(scope))
        if self._manager is not None:
            await self._manager.handle_request(scope, receive, send)
            return
        manager = self._new_manager(container.settings, json_response=True)
        async with manager.run():
            await manager.handle_request(scope, receive, send)


def _lambda_deadline(scope: Scope) -> float | None:
    """When the invocation ends, less a margin for sending the answer: Mangum puts the Lambda context in
    the scope, and the API function's timeout (29 s, under the HTTP API's 30 s) is shorter than the agent's
    time budget."""
    context = scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return time.monotonic() + remaining() / 1000 - LAMBDA_RESPONSE_MARGIN_SECONDS


def _refusal(exc: HTTPException) -> Response:
    """A refused request as HTTP status + JSON-RPC error body: the SDK client surfaces the message."""
    body = JSONRPCError(jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=str(exc.detail)))
    headers = {"WWW-Authenticate": 'Bearer realm="eventrag"'} if exc.status_code == 401 else None
    return Response(
        body.model_dump_json(by_alias=True, exclude_unset=True),
        status_code=exc.status_code,
        media_type="application/json",
        headers=headers,
    )
