"""CORS: a page on another origin, in a real browser (Debian's chromium through Playwright), calls `/query` and
`/mcp` when `EVENTRAG_CORS_ORIGINS` names its origin, and is refused by the browser when it does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Browser
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from app.settings import Settings
from tests.conftest import KEY_ACME, Harness
from tests.fakes.embedder import HashEmbedder
from tests.fakes.server import serve
from tests.fakes.webhooks import file_event
from tests.test_web_page import browser, playwright, served  # noqa: F401  (fixtures)

QUERY = """async ([api, key]) => {
  try {
    const r = await fetch(api + "/query", {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-API-Key": key},
      body: JSON.stringify({question: "How many days of annual leave?", top_k: 3}),
    });
    return {status: r.status, body: await r.json()};
  } catch (e) { return {error: String(e)}; }
}"""

MCP_INITIALIZE = """async ([api, key]) => {
  try {
    const r = await fetch(api + "/mcp", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": "Bearer " + key,
        "MCP-Protocol-Version": "2025-06-18",
      },
      body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "initialize", params: {
        protocolVersion: "2025-06-18", capabilities: {}, clientInfo: {name: "browser", version: "1"}}}),
    });
    return {status: r.status, body: await r.text()};
  } catch (e) { return {error: String(e)}; }
}"""


def _blank_page() -> Starlette:
    async def page(_: Any) -> HTMLResponse:
        return HTMLResponse("<!doctype html><title>another origin</title><p>a client page</p>")

    return Starlette(routes=[Route("/", page)])


@pytest.mark.browser
def test_a_page_on_an_allowed_origin_queries_and_speaks_mcp_and_others_are_refused(
    make_harness: Callable[..., Harness],
    browser: Browser,  # noqa: F811
) -> None:
    with serve(_blank_page()) as page_url:
        port = page_url.rsplit(":", 1)[1]
        h = make_harness(model=HashEmbedder(), cors_origins=page_url)
        h.post_event(
            file_event("created", "leave", content="# Leave\n\nEmployees get 25 days of annual leave per year.")
        )
        h.drain()
        with served(h) as api:
            ctx = browser.new_context()
            try:
                page = ctx.new_page()
                page.goto(page_url + "/")
                answered = page.evaluate(QUERY, [api, KEY_ACME])
                assert answered.get("status") == 200, answered
                assert answered["body"]["citations"], answered
                assert "25 days" in json.dumps(answered["body"])
                mcp = page.evaluate(MCP_INITIALIZE, [api, KEY_ACME])
                assert mcp.get("status") == 200, mcp
                assert "serverInfo" in mcp["body"]

                # The same server seen from an origin it does not name: localhost is not 127.0.0.1.
                page.goto(f"http://localhost:{port}/")
                refused = page.evaluate(QUERY, [api, KEY_ACME])
                assert "error" in refused and "Failed to fetch" in refused["error"], refused
            finally:
                ctx.close()


def test_without_origins_no_cors_headers_are_sent(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(model=HashEmbedder())
    preflight = h.client.options(
        "/query",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    answered = h.client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in answered.headers


def test_an_allowed_origin_gets_its_preflight_and_headers(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(model=HashEmbedder(), cors_origins="https://app.example.com, https://inspector.example.com/")
    assert h.settings.cors_origins == ["https://app.example.com", "https://inspector.example.com"]
    preflight = h.client.options(
        "/mcp",
        headers={
            "Origin": "https://inspector.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://inspector.example.com"
    assert "access-control-allow-credentials" not in preflight.headers
    other = h.client.options(
        "/mcp", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # A refusal carries the headers too, so the page can read why.
    refused = h.client.post("/query", json={}, headers={"Origin": "https://app.example.com"})
    assert refused.status_code in (401, 422)
    assert refused.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "mcp-session-id" in refused.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "ftp://x"])
def test_a_value_that_is_not_an_origin_is_refused_at_start(bad: str) -> None:
    with pytest.raises(ValidationError, match="EVENTRAG_CORS_ORIGINS"):
        Settings(cors_origins=bad)  # type: ignore[arg-type]
