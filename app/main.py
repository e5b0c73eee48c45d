"""The FastAPI application factory. The same app serves `eventrag serve` and, under Mangum, AWS Lambda."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from app.body_limit import BodyLimit
from app.container import Container, build_container
from app.cors import Cors
from app.mcp_server import McpEndpoint
from app.routes import (
    deliveries,
    documents,
    events,
    health,
    metrics,
    openai_compat,
    operations,
    query,
    sessions,
    stats,
    subscriptions,
    web,
    webhooks,
)
from app.schemas import ErrorBody, describe_errors
from app.settings import Settings
from stores.errors import EventragError

log = logging.getLogger(__name__)


def create_app(
    container: Container | Callable[[], Container] | None = None,
    *,
    start_worker: bool = True,
    one_request_at_a_time: bool = False,
) -> FastAPI:
    """Build the app. `container` may be ready-made (tests), a factory, or None (built from the environment
    at start-up, never at import). The in-process worker starts only with the embedded queue.
    `one_request_at_a_time`: the app is never given two requests at once (AWS Lambda), so the question
    routes do their blocking work inline instead of in a thread (`app.deps.run_blocking`)."""
    mcp = McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not isinstance(container, Container)
        c = container if isinstance(container, Container) else (container or _from_env)()
        app.state.container = c
        c.recover()
        if start_worker:
            c.start_worker()
            c.start_relay()
        try:
            async with mcp.running(c.settings):  # without a lifespan (Lambda), /mcp runs one per request
                yield
        finally:
            c.stop_worker()
            c.stop_relay()
            if owned:
                c.close()
            app.state.container = None

    app = FastAPI(
        title="eventrag",
        version="0.1.0",
        summary="Webhooks in, an index that always equals your files, cited answers out.",
        lifespan=lifespan,
        responses={413: {"model": ErrorBody, "description": "The request body is larger than its limit"}},
    )
    app.state.one_request_at_a_time = one_request_at_a_time
    if isinstance(container, Container):
        app.state.container = container  # usable without the lifespan (Lambda, tests)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_of=_request_limit)
    app.add_middleware(Cors, origins_of=_cors_origins)  # outermost: a 413 carries the CORS headers too
    for module in (
        webhooks,
        query,
        sessions,
        openai_compat,
        documents,
        events,
        operations,
        stats,
        deliveries,
        subscriptions,
        health,
        metrics,
        web,
    ):
        app.include_router(module.router)
    # A route, not a mount: a mount answers POST /mcp with a redirect to /mcp/. POST only: a stateless server
    # has no stream of its own to offer (GET) and no session to end (DELETE), and answers both with 405.
    app.router.routes.append(Route("/mcp", mcp, methods=["POST"], include_in_schema=False))
    install_openapi(app)
    web.mount_static(app)
    return app


def _from_env() -> Container:
    return build_container(Settings())


def _request_limit(app: Any) -> int:
    """EVENTRAG_MAX_REQUEST_BYTES of the running container (read per request: the container may be built
    after the app, in its lifespan); the default while it starts."""
    container: Container | None = getattr(app.state, "container", None)
    if container is None:
        return int(Settings.model_fields["max_request_bytes"].default)
    return container.settings.max_request_bytes


def _cors_origins(app: Any) -> list[str]:
    """EVENTRAG_CORS_ORIGINS of the running container (none while it starts)."""
    container: Container | None = getattr(app.state, "container", None)
    return container.settings.cors_origins if container is not None else []


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
        return JSONResponse({"detail": describe_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        # FastAPI answers a body it cannot decode (not UTF-8, nested too deeply for the JSON parser) with a
        # bare 400 "There was an error parsing the body". Such a body is malformed input like any other:
        # a 422 that says what is wrong, as documented for every route.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            cause = exc.__cause__
            if isinstance(cause, UnicodeDecodeError):
                why = "the request body is not UTF-8"
            elif isinstance(cause, RecursionError):
                why = "the request body is JSON nested too deeply"
            else:
                why = f"the request body cannot be parsed as JSON ({type(cause).__name__ if cause else 'unknown'})"
            return JSONResponse({"detail": why}, status_code=422)
        return await http_exception_handler(request, exc)


_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}


def install_openapi(app: FastAPI) -> None:
    """The OpenAPI document says what is sent: every 422 is an `ErrorBody` (`{"detail": "<what is wrong>"}`,
    the handlers above), never FastAPI's default list of errors; every route behind an API key documents its
    401; and the webhook body schema is the one `ingest.webhook_body` validates."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        from app.schemas import ErrorBody

        components.setdefault("ErrorBody", ErrorBody.model_json_schema())
        # Imported here, when the document is first asked for: never on the path that answers questions.
        from ingest.webhook_body import WebhookBody

        body = WebhookBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components["WebhookBody"] = body
        for schema in ("HTTPValidationError", "ValidationError"):
            components.pop(schema, None)
        for path_item in doc.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses or operation.get("parameters") or operation.get("requestBody"):
                    described = responses.get("422", {}).get("description") or "Invalid request"
                    responses["422"] = {
                        "description": described,
                        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                    }
                if operation.get("security") and "401" not in responses:
                    responses["401"] = {
                        "description": "Missing or unknown API key",
                        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                    }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
