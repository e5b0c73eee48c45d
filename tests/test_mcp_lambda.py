"""`/mcp` on AWS Lambda: JSON-RPC requests in API Gateway HTTP API v2 events, through `app.handlers.api_handler`
(the app under Mangum, lifespan off: no session manager runs between invocations, each request brings its own).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from app import handlers
from retrieval.llm import OpenAIChatModel
from tests.conftest import KEY_ACME, KEY_BETA, SECRET_BETA, Harness
from tests.fakes.llm_server import Error, Reply, ScriptedLLM, Slow
from tests.fakes.mcp_wire import MODERN, mcp_request
from tests.fakes.webhooks import file_event
from tests.test_lambda_api import EVENTS, LambdaContext

FAQ = "# Support\nOur support line is open from 9 to 5 on weekdays, and until noon on Saturdays."


def mcp_event(body: dict[str, Any] | str, headers: dict[str, str]) -> dict[str, Any]:
    event = copy.deepcopy(json.loads((EVENTS / "apigw_http_v2.json").read_text()))
    event["rawPath"] = "/mcp"
    event["requestContext"]["http"]["method"] = "POST"
    event["requestContext"]["http"]["path"] = "/mcp"
    event["headers"].update({k.lower(): v for k, v in headers.items()})
    event["body"] = body if isinstance(body, str) else json.dumps(body)
    event["isBase64Encoded"] = False
    return event


def rpc(method: str, params: dict[str, Any], *, key: str | None = KEY_ACME, version: str = MODERN) -> dict[str, Any]:
    body, headers = mcp_request(method, params, version=version)
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return handlers.api_handler(mcp_event(body, headers), LambdaContext())


def result_of(response: dict[str, Any]) -> dict[str, Any]:
    assert response["statusCode"] == 200, response["body"]
    # JSON, not a stream: Lambda returns the body whole. No session: any instance answers the next request.
    assert response["headers"]["content-type"].startswith("application/json")
    assert "mcp-session-id" not in {k.lower() for k in response["headers"]}
    reply = json.loads(response["body"])
    assert reply["id"] == 7 and "error" not in reply, reply
    result: dict[str, Any] = reply["result"]
    return result


@pytest.fixture
def lambda_app(make_harness: Callable[..., Harness]) -> Iterator[Harness]:
    h = make_harness()
    h.post_event(file_event("created", "faq", path="help/faq.md", content=FAQ, version=1))
    h.post_event(
        file_event("created", "merger", workspace="beta", content="Beta's merger is code-named BLUEHERON.", version=1),
        secret=SECRET_BETA,
    )
    assert h.drain() == 2
    handlers.set_container(h.container)
    yield h
    handlers.set_container(None)


def test_tools_and_resources_through_the_lambda_handler(lambda_app: Harness) -> None:
    tools = result_of(rpc("tools/list", {}))["tools"]
    assert {t["name"] for t in tools} >= {"search_documents", "read_document", "ask", "event_status"}
    assert all(t["inputSchema"]["additionalProperties"] is False for t in tools)

    found = result_of(rpc("tools/call", {"name": "search_documents", "arguments": {"query": "when is support open"}}))
    assert found["isError"] is False
    top = found["structuredContent"]["passages"][0]
    assert (top["file_id"], top["path"]) == ("faq", "help/faq.md")
    assert top["text"] == FAQ[top["start"] : top["end"]]

    answer = result_of(rpc("tools/call", {"name": "ask", "arguments": {"question": "Is support open on Saturday?"}}))
    assert answer["structuredContent"]["citations"][0]["file_id"] == "faq"

    read = result_of(rpc("resources/read", {"uri": "eventrag://documents/faq"}))
    assert read["contents"][0]["text"] == FAQ

    # The handshake-era transport, stateless: no initialize needed, no session kept.
    legacy = result_of(
        rpc("tools/call", {"name": "read_document", "arguments": {"file_id": "faq"}}, version="2025-11-25")
    )
    assert legacy["structuredContent"]["text"] == FAQ


def test_the_lambda_path_refuses_what_the_server_refuses(lambda_app: Harness) -> None:
    r = rpc("tools/list", {}, key=None)
    assert r["statusCode"] == 401 and json.loads(r["body"])["error"]["message"].startswith("missing API key")
    r = rpc("tools/list", {}, key="key-nobody-0123456789abcdef")
    assert r["statusCode"] == 401 and json.loads(r["body"])["error"]["message"] == "unknown API key"

    beta = result_of(
        rpc("tools/call", {"name": "search_documents", "arguments": {"query": "support line"}}, key=KEY_BETA)
    )
    assert {p["file_id"] for p in beta["structuredContent"]["passages"]} <= {"merger"}
    denied = result_of(rpc("tools/call", {"name": "read_document", "arguments": {"file_id": "faq"}}, key=KEY_BETA))
    assert denied["isError"] is True and "no indexed document 'faq'" in denied["content"][0]["text"]

    bad = result_of(rpc("tools/call", {"name": "search_documents", "arguments": {"query": "x", "top_k": "many"}}))
    assert bad["isError"] is True and "top_k: Input should be a valid integer" in bad["content"][0]["text"]

    # A request the server cannot parse is a JSON-RPC error, never a stack trace.
    garbled = handlers.api_handler(
        mcp_event(
            "{not json",
            {
                "content-type": "application/json",
                "accept": "application/json",
                "mcp-protocol-version": MODERN,
                "authorization": f"Bearer {KEY_ACME}",
            },
        ),
        LambdaContext(),
    )
    assert garbled["statusCode"] == 400 and json.loads(garbled["body"])["error"]["message"] == "Parse error"


def test_ask_with_an_llm_and_when_the_llm_fails(make_harness: Callable[..., Harness]) -> None:
    with ScriptedLLM() as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0, timeout=30)
        h = make_harness(chat=OpenAIChatModel("gpt-test", client=client))
        h.post_event(file_event("created", "faq", content=FAQ, version=1))
        h.drain()
        handlers.set_container(h.container)
        try:
            llm.push(Reply("Support is open until noon on Saturdays [1] and on Sundays [9]."))
            r = result_of(rpc("tools/call", {"name": "ask", "arguments": {"question": "Support on Saturday?"}}))
            answer = r["structuredContent"]
            assert answer["mode"] == "llm" and answer["invented_citations"] == 1 and "[9]" not in answer["answer"]
            assert [c["file_id"] for c in answer["citations"]] == ["faq"]

            llm.push(Error(503, "overloaded"))
            r = result_of(rpc("tools/call", {"name": "ask", "arguments": {"question": "Support on Sunday?"}}))
            assert r["isError"] is True
            assert r["content"][0]["text"].startswith("the language model is unavailable (503)")
            # extractive=true answers without the model, as /query's `extractive`
            r = result_of(
                rpc("tools/call", {"name": "ask", "arguments": {"question": "Support on Sunday?", "extractive": True}})
            )
            assert r["structuredContent"]["mode"] == "extractive"
        finally:
            handlers.set_container(None)


def test_a_tool_past_its_time_limit_is_answered_with_an_error(make_harness: Callable[..., Harness]) -> None:
    """The agent's time budget bounds every tool; `ask` also gets one LLM timeout for the forced answer."""
    with ScriptedLLM() as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0, timeout=30)
        h = make_harness(
            chat=OpenAIChatModel("gpt-test", client=client),
            agent={"time_budget_seconds": 0.2},
            llm_timeout_seconds=0.3,
        )
        h.post_event(file_event("created", "faq", content=FAQ, version=1))
        h.drain()
        handlers.set_container(h.container)
        try:
            llm.push(Slow(5, then=Reply("Open until noon on Saturdays [1].")))
            r = result_of(rpc("tools/call", {"name": "ask", "arguments": {"question": "Support on Saturday?"}}))
            assert r["isError"] is True
            assert r["content"][0]["text"] == "ask did not finish within 0.5 seconds; try a narrower request"

            # On Lambda a tool never outlives the invocation: what is left of it (less a margin) is the limit.
            h.container.settings.agent.time_budget_seconds = 60.0
            llm.push(Slow(5, then=Reply("Open until noon on Saturdays [1].")))
            body, headers = mcp_request("tools/call", {"name": "ask", "arguments": {"question": "Saturday?"}})
            event = mcp_event(body, {**headers, "authorization": f"Bearer {KEY_ACME}"})
            r = result_of(handlers.api_handler(event, EndingSoon()))
            assert r["content"][0]["text"] == "ask did not finish within 0.7 seconds; try a narrower request"
        finally:
            handlers.set_container(None)


class EndingSoon(LambdaContext):
    def get_remaining_time_in_millis(self) -> int:
        return 1700


MCP_PROBE = r"""
import json, sys
from pathlib import Path

import app.handlers as handlers
import app.mcp_server

heavy = sorted(m for m in ("ingest", "torch", "sentence_transformers") if m in sys.modules)
event = json.loads(Path(sys.argv[1]).read_text())
event["rawPath"] = "/mcp"
event["requestContext"]["http"].update(method="POST", path="/mcp")
meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
event["headers"].update({
    "content-type": "application/json", "accept": "application/json", "x-api-key": sys.argv[2],
    "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "search_documents",
})
event["body"] = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "search_documents", "arguments": {"query": "leave"}, "_meta": meta}})
r = handlers.api_handler(event, None)
result = json.loads(r["body"])["result"]
print(json.dumps({"heavy_at_import": heavy, "status": r["statusCode"], "error": result["isError"],
                  "ingest_loaded": "ingest" in sys.modules}))
"""


@pytest.mark.usefixtures("embedder")  # the model is on disk and loads offline
def test_the_mcp_path_loads_neither_the_write_path_nor_torch_at_import(tmp_path: Path) -> None:
    key = "key-probe-0123456789abcdef"
    env = {
        **os.environ,
        "EVENTRAG_DATA_DIR": str(tmp_path / "data"),
        "EVENTRAG_API_KEYS": json.dumps({key: "acme"}),
        "EVENTRAG_WEBHOOK_SECRETS": json.dumps({"acme": ["whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]}),
        "HF_HUB_OFFLINE": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", MCP_PROBE, str(EVENTS / "apigw_http_v2.json"), key],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"heavy_at_import": [], "status": 200, "error": False, "ingest_loaded": False}
