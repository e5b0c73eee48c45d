"""eventrag as an MCP server: the knowledge tool an agent plugs in with one URL (`/mcp`) and one API key.

    endpoint.py   the ASGI app at /mcp: API key -> workspace, the SDK's Streamable HTTP session manager
    server.py     the MCP server: tool and resource handlers, errors as the specification sorts them
    tools.py      the tools: arguments, structured results, and the service calls behind them

Nothing here imports the write path or loads a model at import time, and the MCP SDK (about half a second
of imports) is imported only when `/mcp` is first used or the app's lifespan starts: a Lambda cold start
answering `/healthz` or `/query` never pays for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from app.settings import Settings

if TYPE_CHECKING:
    from app.mcp_server.endpoint import McpEndpoint as _Endpoint


class McpEndpoint:
    """The ASGI app mounted at `/mcp` (`app.main.create_app`): `endpoint.McpEndpoint`, built on first use."""

    def __init__(self) -> None:
        self._endpoint: _Endpoint | None = None

    def _loaded(self) -> _Endpoint:
        if self._endpoint is None:
            from app.mcp_server.endpoint import McpEndpoint as Endpoint

            self._endpoint = Endpoint()
        return self._endpoint

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[None]:
        """One session manager for the life of the app (its lifespan enters this)."""
        async with self._loaded().running(settings):
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._loaded()(scope, receive, send)


__all__ = ["McpEndpoint"]
