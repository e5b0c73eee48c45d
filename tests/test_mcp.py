"""eventrag as an MCP server: the official `mcp` client (Streamable HTTP) against `eventrag serve` on loopback.

One server for the module, with two workspaces (acme: a writer key and a reader key; beta: one key). The
tests drive it the way agents do: list the tools, call each one, read resources, send a change and wait for
it, and try what must be refused (a wrong key, another workspace's documents, bad arguments).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextResourceContents

from retrieval.agent import Ask, ToolArgumentError
from retrieval.llm import ToolCall as LLMToolCall
from tests.conftest import KEY_BETA, SECRET_ACME, SECRET_BETA, Harness
from tests.fakes.cli import cli_env, serving, wait_for
from tests.fakes.mcp_wire import mcp_request
from tests.fakes.webhooks import file_event, sign

KEY_WRITER = "key-acme-writer-0123456789"
KEY_READER = "key-acme-reader-0123456789"
TOP_K_MAX = 3

ACME_DOCS = {
    "leave": ("handbook/leave.md", "# Annual leave\nEmployees get 30 days of annual leave; unused days carry over."),
    "travel": ("handbook/travel.md", "# Travel\nTake the train for trips under 500 km; flights need approval."),
    "remote": ("handbook/remote.md", "# Remote work\nYou may work remotely three days a week from anywhere."),
    "oncall": ("ops/oncall.md", "# On-call\nThe on-call engineer answers pages within fifteen minutes."),
    "offsite": ("notes/offsite.md", "# Offsite\nThe quarterly offsite is in Porto, near the river."),
}
BETA_DOC = ("finance/merger.md", "# Merger\nBeta's merger code name is BLUEHERON and it closes in March.")


@dataclass
class Served:
    url: str
    events: dict[str, str]  # file id -> event id of its webhook


def post_file(url: str, secret: str, file_id: str, path: str, content: str, workspace: str) -> str:
    raw, headers = sign(
        secret, file_event("created", file_id, path=path, content=content, version=1, workspace=workspace)
    )
    r = httpx.post(f"{url}/webhooks", content=raw, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    return str(r.json()["event_id"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("mcp") / "data"
    env = cli_env(data)
    env.update(
        {
            "EVENTRAG_API_KEYS": json.dumps({KEY_WRITER: "acme", KEY_READER: "acme", KEY_BETA: "beta"}),
            "EVENTRAG_WEBHOOK_SECRETS": json.dumps({"acme": [SECRET_ACME], "beta": [SECRET_BETA]}),
            "EVENTRAG_TOP_K_MAX": str(TOP_K_MAX),
            "EVENTRAG_TOP_K_DEFAULT": "2",
            "EVENTRAG_MIN_SCORE": "-1",  # every passage counts as relevant: the top_k cap is what limits
        }
    )
    with serving(data, env) as server:
        url = server.url
        events = {fid: post_file(url, SECRET_ACME, fid, path, text, "acme") for fid, (path, text) in ACME_DOCS.items()}
        events["merger"] = post_file(url, SECRET_BETA, "merger", *BETA_DOC, "beta")

        def all_done() -> bool:
            key = {"merger": KEY_BETA}
            return all(
                httpx.get(f"{url}/events/{e}", headers={"X-API-Key": key.get(f, KEY_READER)}).json()["status"] == "done"
                for f, e in events.items()
            )

        wait_for(all_done, 120, "the documents to be indexed")
        yield Served(url, events)
    # Whatever happened, no request may have put a traceback of ours into the server log unnoticed.
    log = "\n".join(server.lines)
    assert "Traceback" not in log, log


@asynccontextmanager
async def mcp_client(url: str, key: str | None, *, mode: str = "auto", header: str = "bearer") -> AsyncIterator[Client]:
    headers = {} if key is None else ({"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key})
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0)) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def run(fn: Callable[[], Awaitable[None]]) -> None:
    """Run a client on its own event loop in a worker thread. In the main thread `asyncio.run` would replace
    (and leave unset) the loop Mangum installed there for the Lambda tests, which then leaks unclosed."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, fn).result()


def refusal(fn: Callable[[], Awaitable[None]]) -> MCPError:
    """The MCPError a client call ends with; the SDK's task groups may wrap it in exception groups."""
    try:
        run(fn)
    except BaseException as exc:  # noqa: B036 - unwrapping groups, re-raised when not ours
        found = [exc]
        while found and not isinstance(found[0], MCPError):
            first = found.pop(0)
            if isinstance(first, BaseExceptionGroup):
                found.extend(first.exceptions)
        if found and isinstance(found[0], MCPError):
            return found[0]
        raise
    raise AssertionError("the call was not refused")


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    data = result.structured_content
    assert isinstance(data, dict)
    # The same object as JSON text, for clients that only read content.
    assert json.loads(result.content[0].text) == data  # type: ignore[union-attr]
    return data


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str) and "Traceback" not in text and 'File "' not in text
    return text


# Tools and schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_tools_are_listed_with_strict_schemas(served: Served, mode: str) -> None:
    """Both eras of the protocol: the stateless 2026-07-28 exchange the SDK negotiates by default, and the
    initialize handshake of older clients (served statelessly)."""

    async def main() -> None:
        async with mcp_client(served.url, KEY_READER, mode=mode) as client:
            assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {
                "search_documents",
                "read_document",
                "list_documents",
                "ask",
                "document_status",
                "event_status",
            }
            for tool in tools.values():
                assert tool.description and tool.output_schema is not None
                assert tool.input_schema["type"] == "object"
                assert tool.input_schema["additionalProperties"] is False
            assert tools["search_documents"].input_schema["required"] == ["query"]
            assert tools["search_documents"].annotations.read_only_hint is True  # type: ignore[union-attr]
            assert tools["ask"].annotations.read_only_hint is False  # type: ignore[union-attr]
            found = structured(await client.call_tool("search_documents", {"query": "annual leave days"}))
            assert found["passages"][0]["file_id"] == "leave"

    run(main)


def test_every_tool_answers_with_structured_content(served: Served) -> None:
    async def main() -> None:
        async with mcp_client(served.url, KEY_READER, header="x-api-key") as client:
            # search_documents: passages as REST citations, whose text is the document's text[start:end]
            res = structured(
                await client.call_tool(
                    "search_documents",
                    {"query": "how many days of annual leave", "filters": {"path_prefix": "handbook/"}},
                )
            )
            passages = res["passages"]
            assert passages and all(p["path"].startswith("handbook/") for p in passages)
            top = passages[0]
            assert (top["n"], top["file_id"], top["path"], top["version"]) == (1, "leave", "handbook/leave.md", 1)
            assert top["text"] == ACME_DOCS["leave"][1][top["start"] : top["end"]]
            assert isinstance(top["rank_score"], float) and isinstance(top["similarity"], float)
            # top_k above the server maximum is refused with the limit, as POST /query refuses it
            refused = error_text(await client.call_tool("search_documents", {"query": "work", "top_k": 50}))
            assert f"maximum of {TOP_K_MAX}" in refused and "EVENTRAG_TOP_K_MAX" in refused
            many = structured(await client.call_tool("search_documents", {"query": "work", "top_k": TOP_K_MAX}))
            assert len(many["passages"]) == TOP_K_MAX

            # read_document: the exact text, bounded, with where to read on
            text = ACME_DOCS["travel"][1]
            part = structured(await client.call_tool("read_document", {"file_id": "travel", "start": 2, "end": 12}))
            assert (part["text"], part["start"], part["end"]) == (text[2:12], 2, 12)
            assert (part["length"], part["next_start"], part["path"]) == (len(text), 12, "handbook/travel.md")
            rest = structured(await client.call_tool("read_document", {"file_id": "travel", "start": 12}))
            assert rest["text"] == text[12:] and rest["next_start"] is None

            # list_documents: by folder, by status, a page at a time
            listed = structured(await client.call_tool("list_documents", {"path_prefix": "handbook/", "limit": 2}))
            assert [d["path"] for d in listed["documents"]] == ["handbook/leave.md", "handbook/remote.md"]
            assert listed["total"] == 3  # every match of the filters, as GET /documents counts them
            assert listed["documents"][0]["status"] == "indexed" and listed["documents"][0]["chunk_count"] >= 1
            nxt = structured(
                await client.call_tool(
                    "list_documents", {"path_prefix": "handbook/", "limit": 2, "cursor": listed["next_cursor"]}
                )
            )
            assert [d["path"] for d in nxt["documents"]] == ["handbook/travel.md"] and nxt["next_cursor"] is None
            assert nxt["total"] == 3
            everything = structured(await client.call_tool("list_documents", {"status": "indexed"}))
            assert {d["file_id"] for d in everything["documents"]} == set(ACME_DOCS)

            # ask: the cited answer as structured content; the conversation is kept like /query's
            answer = structured(
                await client.call_tool("ask", {"question": "Where is the quarterly offsite?", "session_id": "mcp-s1"})
            )
            assert answer["mode"] == "extractive" and answer["covered"] is True
            assert "Porto" in answer["answer"]
            cited = answer["citations"][0]
            assert cited["file_id"] == "offsite" and cited["text"] in ACME_DOCS["offsite"][1]
            session = httpx.get(f"{served.url}/sessions/mcp-s1", headers={"X-API-Key": KEY_WRITER}).json()
            assert [t["role"] for t in session["turns"]] == ["user", "assistant"]

            # document_status and event_status: the REST objects
            doc = structured(await client.call_tool("document_status", {"file_id": "oncall"}))
            rest_doc = httpx.get(f"{served.url}/documents/oncall", headers={"X-API-Key": KEY_READER}).json()
            assert doc == rest_doc and doc["status"] == "indexed"
            event_id = served.events["oncall"]
            event = structured(await client.call_tool("event_status", {"event_id": event_id}))
            assert (event["event_id"], event["status"], event["file_id"]) == (event_id, "done", "oncall")

    run(main)


def test_documents_are_resources(served: Served) -> None:
    async def main() -> None:
        async with mcp_client(served.url, KEY_READER) as client:
            templates = (await client.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["eventrag://documents/{file_id}"]
            listing = await client.list_resources()
            assert {r.uri for r in listing.resources} == {f"eventrag://documents/{f}" for f in ACME_DOCS}
            assert listing.next_cursor is None
            leave = next(r for r in listing.resources if r.name == "handbook/leave.md")
            contents = (await client.read_resource(leave.uri)).contents
            assert len(contents) == 1 and isinstance(contents[0], TextResourceContents)
            assert contents[0].text == ACME_DOCS["leave"][1] and contents[0].mime_type == "text/plain"
            assert contents[0].meta is not None and "eventrag/next" not in contents[0].meta
            # a page further on
            later = (await client.read_resource("eventrag://documents/leave?start=10")).contents[0]
            assert isinstance(later, TextResourceContents) and later.text == ACME_DOCS["leave"][1][10:]
            assert later.meta is not None and later.meta["eventrag/start"] == 10
            with pytest.raises(MCPError, match="not a document URI"):
                await client.read_resource("file:///etc/passwd")
            with pytest.raises(MCPError, match="no indexed document 'nope'"):
                await client.read_resource("eventrag://documents/nope")

    run(main)


# Refusals -----------------------------------------------------------------------------------------------


def test_a_wrong_or_missing_key_is_refused(served: Served) -> None:
    async def attempt(key: str | None) -> None:
        async with mcp_client(served.url, key) as client:
            await client.list_tools()

    assert "unknown API key" in str(refusal(lambda: attempt("key-nobody-0123456789abcdef")))
    assert "missing API key" in str(refusal(lambda: attempt(None)))
    r = httpx.post(f"{served.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["message"].startswith("missing API key")


def test_no_tool_or_resource_reaches_another_workspace(served: Served) -> None:
    async def main() -> None:
        async with mcp_client(served.url, KEY_BETA) as beta:
            found = structured(await beta.call_tool("search_documents", {"query": "annual leave Porto offsite"}))
            assert {p["file_id"] for p in found["passages"]} == {"merger"}
            # Naming acme's file is not enough: it is not there for beta.
            pinned = structured(
                await beta.call_tool(
                    "search_documents", {"query": "annual leave", "filters": {"file_id": ["leave", "offsite"]}}
                )
            )
            assert pinned["passages"] == []
            assert "no indexed document 'leave'" in error_text(
                await beta.call_tool("read_document", {"file_id": "leave"})
            )
            listed = structured(await beta.call_tool("list_documents", {}))
            assert [d["file_id"] for d in listed["documents"]] == ["merger"] and listed["total"] == 1
            assert "no document 'leave'" in error_text(await beta.call_tool("document_status", {"file_id": "leave"}))
            event = served.events["leave"]
            assert f"no event {event!r}" in error_text(await beta.call_tool("event_status", {"event_id": event}))
            answer = structured(await beta.call_tool("ask", {"question": "How many days of annual leave?"}))
            assert all(c["file_id"] == "merger" for c in answer["citations"])
            # A workspace argument is refused, not ignored.
            assert "workspace" in error_text(
                await beta.call_tool("search_documents", {"query": "leave", "workspace": "acme"})
            )
            assert [r.name for r in (await beta.list_resources()).resources] == ["finance/merger.md"]
            with pytest.raises(MCPError, match="no indexed document 'leave'"):
                await beta.read_resource("eventrag://documents/leave")
        async with mcp_client(served.url, KEY_READER) as acme:
            found = structured(await acme.call_tool("search_documents", {"query": "merger code name BLUEHERON"}))
            assert "merger" not in {p["file_id"] for p in found["passages"]}
            assert all("BLUEHERON" not in p["text"] for p in found["passages"])
            acme_cursor = structured(await acme.call_tool("list_documents", {"limit": 1}))["next_cursor"]
        # A cursor of acme's listing, passed back unchanged with the same filters, does not page beta's.
        async with mcp_client(served.url, KEY_BETA) as beta:
            refused = error_text(await beta.call_tool("list_documents", {"limit": 1, "cursor": acme_cursor}))
            assert "cursor is not one this server issued for this listing" in refused
            assert "another workspace" in refused

    run(main)


def test_bad_arguments_are_tool_errors_with_a_message(served: Served) -> None:
    async def main() -> None:
        async with mcp_client(served.url, KEY_READER) as client:

            async def refused(tool: str, args: dict[str, Any]) -> str:
                return error_text(await client.call_tool(tool, args))

            assert "query: Field required" in await refused("search_documents", {})
            assert "top_k: Input should be greater than or equal to 1" in await refused(
                "search_documents", {"query": "leave", "top_k": 0}
            )
            assert "at most 4000 characters" in await refused("search_documents", {"query": "x" * 4001})
            assert "at most 4000 characters" in await refused("ask", {"question": "y" * 4001})
            assert "filters.owner: Extra inputs are not permitted" in await refused(
                "search_documents", {"query": "leave", "filters": {"owner": "me"}}
            )
            assert "start: Input should be greater than or equal to 0" in await refused(
                "read_document", {"file_id": "leave", "start": -1}
            )
            assert "empty range; the document has" in await refused(
                "read_document", {"file_id": "leave", "start": 10_000}
            )
            assert "mode: Input should be 'dense', 'sparse' or 'hybrid'" in await refused(
                "search_documents", {"query": "leave", "mode": "fuzzy"}
            )
            assert "cursor is not one this server issued" in await refused("list_documents", {"cursor": "garbage!"})
            page = structured(await client.call_tool("list_documents", {"limit": 1}))
            assert "cursor belongs to another listing" in await refused(
                "list_documents", {"limit": 1, "cursor": page["next_cursor"], "status": "failed"}
            )
            assert "session_id: String should have at most 128 characters" in await refused(
                "ask", {"question": "leave?", "session_id": "s" * 129}
            )
            # Reading is bounded: one call returns at most 4000 characters, however much is asked for.
            read = structured(await client.call_tool("read_document", {"file_id": "leave", "end": 1_000_000}))
            assert read["end"] == len(ACME_DOCS["leave"][1]) <= 4000
            with pytest.raises(MCPError, match="unknown tool 'drop_index'"):
                await client.call_tool("drop_index", {})

    run(main)


# The event-driven handoff -------------------------------------------------------------------------------


def test_a_writer_agent_hands_a_change_to_a_reader_agent(served: Served) -> None:
    """The writer sends a signed webhook, waits over MCP until its event is done; the reader, with its own
    key and its own connection, then finds the new passage."""
    text = "# Rollback\nTo roll back a release, run the rollback job with the release tag; it takes four minutes."

    async def writer() -> str:
        event_id = post_file(served.url, SECRET_ACME, "rollback", "runbooks/rollback.md", text, "acme")
        async with mcp_client(served.url, KEY_WRITER) as client:
            with anyio.fail_after(60):
                while True:
                    status = structured(await client.call_tool("event_status", {"event_id": event_id}))["status"]
                    assert status not in ("failed", "superseded"), status
                    if status == "done":
                        return event_id
                    await anyio.sleep(0.1)  # polling interval, with the deadline above

    async def reader() -> None:
        async with mcp_client(served.url, KEY_READER) as client:
            res = structured(await client.call_tool("search_documents", {"query": "how do I roll back a release"}))
            top = res["passages"][0]
            assert (top["file_id"], top["path"]) == ("rollback", "runbooks/rollback.md")
            assert top["text"] == text[top["start"] : top["end"]] and "rollback job" in top["text"]
            doc = structured(await client.call_tool("document_status", {"file_id": "rollback"}))
            assert doc["status"] == "indexed" and doc["last_event_id"] == event_id

    event_id = ""

    async def handoff() -> None:
        nonlocal event_id
        event_id = await writer()
        await reader()

    run(handoff)


# The transport ------------------------------------------------------------------------------------------


def test_serve_streams_where_lambda_answers_in_json(served: Served) -> None:
    """Under `eventrag serve` the app lifespan runs one session manager, and a client that accepts a stream
    gets one (Server-Sent Events); behind Mangum the same request is answered in JSON (test_mcp_lambda)."""
    body, headers = mcp_request("tools/list", {}, version="2025-11-25")
    r = httpx.post(f"{served.url}/mcp", json=body, headers={**headers, "X-API-Key": KEY_READER})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "mcp-session-id" not in r.headers  # stateless: nothing to be sticky on
    assert '"search_documents"' in r.text
    # No server-initiated stream to open, no session to end: a stateless server answers 405 (the spec's way).
    sse = {"Accept": "text/event-stream", "X-API-Key": KEY_READER}
    assert httpx.get(f"{served.url}/mcp", headers=sse).status_code == 405
    assert httpx.delete(f"{served.url}/mcp", headers=sse).status_code == 405


def test_without_keys_only_loopback_hosts_and_origins_are_served(make_harness: Callable[..., Harness]) -> None:
    """`eventrag serve` on loopback answers without an API key; a web page must not reach that through DNS
    rebinding, so /mcp then insists on a loopback Host and Origin (421 / 403 before any tool runs)."""
    h = make_harness(api_keys={}, anonymous_workspace="acme")
    body, headers = mcp_request("tools/list", {})
    r = h.client.post("/mcp", json=body, headers={**headers, "host": "127.0.0.1:8000"})
    assert r.status_code == 200 and len(r.json()["result"]["tools"]) == 6
    assert h.client.post("/mcp", json=body, headers={**headers, "host": "rebound.example"}).status_code == 421
    evil = {**headers, "host": "127.0.0.1:8000", "origin": "http://rebound.example"}
    assert h.client.post("/mcp", json=body, headers=evil).status_code == 403


def test_without_keys_the_cors_origins_named_reach_mcp_but_a_star_does_not(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness(api_keys={}, anonymous_workspace="acme", cors_origins="https://inspector.example.com, *")
    body, headers = mcp_request("tools/list", {})
    named = {**headers, "host": "127.0.0.1:8000", "origin": "https://inspector.example.com"}
    r = h.client.post("/mcp", json=body, headers=named)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    other = {**headers, "host": "127.0.0.1:8000", "origin": "http://rebound.example"}
    assert h.client.post("/mcp", json=body, headers=other).status_code == 403


def test_the_agents_tools_refuse_arguments_they_do_not_take(make_harness: Callable[..., Harness]) -> None:
    """The MCP tools reuse the LLM agent's tools; those refuse a stray argument too (the model's calls)."""
    h = make_harness()
    h.post_event(file_event("created", "leave", content=ACME_DOCS["leave"][1], version=1))
    h.drain()
    agent, ask = h.container.agent, Ask("acme", "leave")
    with pytest.raises(ToolArgumentError, match=r"unknown argument\(s\) \['workspace'\]"):
        agent.read_span("acme", {"file_id": "leave", "workspace": "beta"})
    assert agent.read_span("acme", {"file_id": "leave", "end": 7}).passage.text == ACME_DOCS["leave"][1][:7]
    listed = agent._tool(ask, LLMToolCall("c1", "list_documents", '{"workspace": "beta"}'), [])
    assert listed.startswith("error: unknown argument(s) ['workspace']")
    read = agent._tool(ask, LLMToolCall("c2", "read_document", '{"file_id": "leave", "start": 2, "end": 9}'), [])
    assert ACME_DOCS["leave"][1][2:9] in read
