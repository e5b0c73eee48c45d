"""The MCP server: tools and resources on the SDK's low-level `Server`.

The low-level server, not `MCPServer`, because eventrag states its schemas exactly (`additionalProperties:
false`: an unknown argument is refused, never dropped), validates every call itself, and pages
`resources/list` per workspace, which the decorator layer does not do.

Errors, as the specification sorts them:

- a bad argument, a document or event the workspace does not have, a time limit hit, an LLM failure: a tool
  result with `isError: true` and a message that says what is wrong, so the agent can correct itself;
- an unknown tool, or a resource URI that is not a document of this workspace: a JSON-RPC error;
- anything unexpected: logged here with its traceback, answered with a generic message that carries none.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import anyio
import anyio.to_thread
from fastapi import HTTPException
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    TextContent,
    TextResourceContents,
    Tool,
    ToolAnnotations,
)
from pydantic import BaseModel, ValidationError

from app.mcp_server.tools import TOOLS, TOOLS_BY_NAME, Caller, Deferred, ToolSpec, document_text, documents_page
from retrieval.agent import ToolCallError
from stores.errors import EventragError
from stores.ports import DocumentStatus

log = logging.getLogger(__name__)

CALLER_SCOPE_KEY = "eventrag.caller"  # the ASGI scope entry the endpoint puts the authenticated Caller in

DOCUMENT_URI_PREFIX = "eventrag://documents/"
DOCUMENT_URI_TEMPLATE = DOCUMENT_URI_PREFIX + "{file_id}"
# Characters one resources/read returns; a longer document is read in pages (`?start=`). Bounded so a
# response always fits AWS Lambda's 6 MB payload, whatever the script the text is in.
RESOURCE_PAGE_CHARS = 200_000
RESOURCE_LIST_PAGE = 100

INSTRUCTIONS = """eventrag answers from the documents of the workspace your API key belongs to, and only those.
search_documents finds passages, read_document reads a document's exact text, ask gives a cited answer.
After sending a file change by webhook, poll event_status until it is done before you search for it.
Each indexed document is also a resource, eventrag://documents/{file_id}."""


def build_server() -> Server[Any]:
    return Server(
        "eventrag",
        version=_version(),
        title="eventrag",
        description="Event-driven RAG: search and cited answers over an index that always equals your files.",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=_input_schema,
        on_list_tools=_list_tools,
        on_call_tool=_call_tool,
        on_list_resources=_list_resources,
        on_list_resource_templates=_list_resource_templates,
        on_read_resource=_read_resource,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("eventrag")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def caller_of(ctx: ServerRequestContext[Any]) -> Caller:
    """The caller the endpoint authenticated for this HTTP request (`app.mcp_server.endpoint`)."""
    caller = getattr(ctx.request, "scope", {}).get(CALLER_SCOPE_KEY)
    if not isinstance(caller, Caller):
        # Only reachable if the server is served without the endpoint in front of it: refuse, never guess.
        raise MCPError(code=INVALID_PARAMS, message="no authenticated caller: call eventrag through its /mcp endpoint")
    return caller


# Tools ------------------------------------------------------------------------------------------------


@functools.cache
def _tool_definitions() -> tuple[Tool, ...]:
    return tuple(
        Tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            input_schema=spec.arguments.model_json_schema(),
            output_schema=spec.result.model_json_schema(),
            annotations=ToolAnnotations(
                title=spec.title, read_only_hint=spec.read_only, destructive_hint=False, open_world_hint=False
            ),
        )
        for spec in TOOLS
    )


def _input_schema(name: str) -> dict[str, Any] | None:
    spec = TOOLS_BY_NAME.get(name)
    return spec.arguments.model_json_schema() if spec else None


async def _list_tools(ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None) -> ListToolsResult:
    return ListToolsResult(tools=list(_tool_definitions()))


async def _call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
    spec = TOOLS_BY_NAME.get(params.name)
    if spec is None:
        raise MCPError(code=INVALID_PARAMS, message=f"unknown tool {params.name!r}; tools: {', '.join(TOOLS_BY_NAME)}")
    caller = caller_of(ctx)
    try:
        args = spec.arguments.model_validate(params.arguments or {})
    except ValidationError as exc:
        return _tool_error(f"invalid arguments: {describe(exc)}")
    limit = _time_limit(spec, caller)
    out: BaseModel | Deferred | None = None
    try:
        with anyio.move_on_after(limit):
            # Off the event loop: searching embeds the query and answering may wait on an LLM. Past the limit
            # the call is answered and the thread left to finish on its own: a thread cannot be cancelled.
            out = await anyio.to_thread.run_sync(functools.partial(spec.run, caller, args), abandon_on_cancel=True)
        if out is None:
            return _tool_error(f"{spec.name} did not finish within {limit:g} seconds; try a narrower request")
        if isinstance(out, Deferred):
            await anyio.to_thread.run_sync(out.commit)
            out = out.result
    except ToolCallError as exc:
        return _tool_error(str(exc))
    except HTTPException as exc:
        return _tool_error(str(exc.detail))
    except ValidationError as exc:  # the REST request model refused what the tool arguments let through
        return _tool_error(f"invalid arguments: {describe(exc)}")
    except EventragError as exc:  # the LLM failed, a store is unavailable: said in words, as the API does
        log.warning("MCP tool %s refused (%s): %s", spec.name, exc.status_code, exc)
        return _tool_error(str(exc))
    except Exception:
        log.exception("MCP tool %s failed", spec.name)
        return _tool_error(f"{spec.name} failed unexpectedly; the server log has the details")
    return _tool_result(out)


def _time_limit(spec: ToolSpec, caller: Caller) -> float:
    """The agent's time budget (EVENTRAG_AGENT__TIME_BUDGET_SECONDS), as for /query; a tool that may call the
    LLM also gets one LLM timeout, because the answer forced at the end of the budget is one more call. On
    Lambda, never past what is left of the invocation."""
    s = caller.container.settings
    limit = s.agent.time_budget_seconds + (s.llm_timeout_seconds if spec.uses_llm else 0.0)
    if caller.deadline is not None:
        limit = min(limit, max(0.0, caller.deadline - time.monotonic()))
    return round(limit, 1)


def _tool_result(out: BaseModel) -> CallToolResult:
    data = out.model_dump(mode="json")
    # The same object twice: typed for clients that read structuredContent, as JSON text for those that do not.
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data))], structured_content=data)


def _tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line per problem, the way the REST API words a 422."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "arguments"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


# Resources --------------------------------------------------------------------------------------------


def document_uri(file_id: str, start: int = 0) -> str:
    # File ids may hold any character ("/", "?", spaces): encoded whole, as RFC 6570 expands {file_id}.
    return DOCUMENT_URI_PREFIX + quote(file_id, safe="") + (f"?start={start}" if start else "")


def parse_document_uri(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    if parts.scheme != "eventrag" or parts.netloc != "documents" or len(parts.path) < 2 or parts.fragment:
        raise ValueError(f"not a document URI: {uri!r} (expected {DOCUMENT_URI_TEMPLATE})")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"start"} or len(query.get("start", [])) > 1:
        raise ValueError(f"a document URI takes one parameter, start; got {parts.query!r}")
    start = query.get("start", ["0"])[0]
    if not start.isdigit():
        raise ValueError(f"start must be a character offset, got {start!r}")
    return unquote(parts.path[1:]), int(start)


async def _list_resources(ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None) -> ListResourcesResult:
    caller = caller_of(ctx)
    cursor = params.cursor if params else None

    def page() -> ListResourcesResult:
        docs, next_cursor = documents_page(
            caller.container.state,
            caller.workspace,
            prefix="",
            status=DocumentStatus.INDEXED,
            cursor=cursor,
            limit=RESOURCE_LIST_PAGE,
        )
        resources = [
            Resource(
                uri=document_uri(d.file_id),
                name=d.path,
                title=d.path,
                description=f"version {d.version}, {d.chunk_count} chunks"
                + (f", parsed from {d.content_type}" if d.content_type else ""),
                mime_type="text/plain",
            )
            for d in docs
        ]
        return ListResourcesResult(resources=resources, next_cursor=next_cursor)

    try:
        return await anyio.to_thread.run_sync(page)
    except ToolCallError as exc:
        raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc


async def _list_resource_templates(
    ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
) -> ListResourceTemplatesResult:
    return ListResourceTemplatesResult(
        resource_templates=[
            ResourceTemplate(
                uri_template=DOCUMENT_URI_TEMPLATE,
                name="document",
                title="A document of your workspace",
                description="The exact text of the latest indexed version of a document, by file_id. Longer"
                f" documents come in pages of {RESOURCE_PAGE_CHARS} characters: the eventrag/next entry of"
                " the contents' _meta is the URI of the next page (…?start=N).",
                mime_type="text/plain",
            )
        ]
    )


async def _read_resource(ctx: ServerRequestContext[Any], params: ReadResourceRequestParams) -> ReadResourceResult:
    caller = caller_of(ctx)
    try:
        file_id, start = parse_document_uri(str(params.uri))
        text = await anyio.to_thread.run_sync(
            lambda: document_text(caller, {"file_id": file_id, "start": start}, RESOURCE_PAGE_CHARS)
        )
    except (ValueError, ToolCallError) as exc:  # ToolCallError is a ValueError; both are the caller's to fix
        raise MCPError(code=INVALID_PARAMS, message=str(exc), data={"uri": str(params.uri)}) from exc
    meta: dict[str, Any] = {
        "eventrag/file_id": text.file_id,
        "eventrag/path": text.path,
        "eventrag/version": text.version,
        "eventrag/start": text.start,
        "eventrag/end": text.end,
        "eventrag/length": text.length,
    }
    if text.next_start is not None:  # the URI of the next page; absent on the last one
        meta["eventrag/next"] = document_uri(text.file_id, text.next_start)
    return ReadResourceResult(
        contents=[TextResourceContents(uri=str(params.uri), text=text.text, mime_type="text/plain", _meta=meta)]
    )
