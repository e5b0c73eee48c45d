"""Shared request dependencies as `Annotated` aliases.

They are `async def`: none waits on anything, and FastAPI runs a plain `def` dependency in its thread
pool, a thread hop each (with the endpoint's own, most of what `/query` cost beyond its search and
answer under Mangum)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from app.container import Container
from app.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key of a workspace")


async def get_container(request: Request) -> Container:
    container: Container | None = getattr(request.app.state, "container", None)
    if container is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


def single_user_workspace(settings: Settings) -> str | None:
    """The workspace of loopback single-user mode (no API keys, a workspace for requests without one, as
    `eventrag serve` sets on loopback), or None. Only in that mode do an unknown key and the all-workspace
    `/metrics` pass without a key."""
    return settings.anonymous_workspace if not settings.api_keys else None


async def caller_workspace(
    request: Request, container: ContainerDep, key: Annotated[str | None, Depends(_api_key)] = None
) -> str:
    """The workspace of the caller's API key (X-API-Key, or `Authorization: Bearer` for OpenAI clients)."""
    if key is None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip() or None
    settings = container.settings
    if key is None:
        if settings.anonymous_workspace:
            return settings.anonymous_workspace
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send it in the X-API-Key header")
    found = None
    for known, workspace in settings.api_keys.items():
        if hmac.compare_digest(known.encode(), key.encode()):  # constant time: no key prefix leaks
            found = workspace
    if found is None:
        if (anonymous := single_user_workspace(settings)) is not None:
            return anonymous
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
    return found


Workspace = Annotated[str, Depends(caller_workspace)]


async def run_blocking(request: Request, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, work that blocks (the model, the index, SQLite, the LLM), kept off the event
    loop: in the thread pool, as FastAPI runs a plain `def` endpoint, so one request never holds up the
    others. Inline when the app serves one request at a time (`create_app(one_request_at_a_time=True)`, the
    Lambda handler: an execution environment never runs two invocations at once, and under Mangum every
    invocation would start a thread of its own, since anyio's worker threads end with the task that started
    them). An endpoint that runs its work here is `async def` and makes this one hop, where a `def` endpoint
    with a response model makes two (the endpoint, then the response's validation)."""
    if getattr(request.app.state, "one_request_at_a_time", False):
        return fn(*args, **kwargs)
    return await run_in_threadpool(fn, *args, **kwargs)
