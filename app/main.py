"""The FastAPI application factory. The same app serves `eventrag serve` and, under Mangum, AWS Lambda."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Route

from app.container import Container, build_container
from app.mcp_server import McpEndpoint
from app.routes import documents, events, health, openai_compat, operations, query, sessions, webhooks
from app.settings import Settings
from stores.errors import EventragError

log = logging.getLogger(__name__)


def create_app(container: Container | Callable[[], Container] | None = None, *, start_worker: bool = True) -> FastAPI:
    """Build the app. `container` may be ready-made (tests), a factory, or None (built from the environment
    at start-up, never at import). The in-process worker starts only with the embedded queue."""
    mcp = McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(container, Container)
        c = container if isinstance(container, Container) else (container or _from_env)()
        app.state.container = c
        c.recover()
        if start_worker:
            c.start_worker()
        try:
            async with mcp.running(c.settings):  # without a lifespan (Lambda), /mcp runs one per request
                yield
        finally:
            c.stop_worker()
            if owned:
                c.close()
            app.state.container = None

    app = FastAPI(
        title="eventrag",
        version="0.1.0",
        summary="Webhooks in, an index that always equals your files, cited answers out.",
        lifespan=lifespan,
    )
    if isinstance(container, Container):
        app.state.container = container  # usable without the lifespan (Lambda, tests)
    install_error_handlers(app)
    for module in (webhooks, query, sessions, openai_compat, documents, events, operations, health):
        app.include_router(module.router)
    # A route, not a mount: a mount answers POST /mcp with a redirect to /mcp/. POST only: a stateless server
    # has no stream of its own to offer (GET) and no session to end (DELETE), and answers both with 405.
    app.router.routes.append(Route("/mcp", mcp, methods=["POST"], include_in_schema=False))
    return app


def _from_env() -> Container:
    return build_container(Settings())


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EventragError)
    async def _eventrag(_: Request, exc: EventragError) -> JSONResponse:
        # Every error eventrag raises on purpose says which status it means (`stores.errors`), so this one
        # handler serves both paths without importing either.
        if exc.status_code < 500:
            log.warning("request refused (%s): %s", exc.status_code, exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)
