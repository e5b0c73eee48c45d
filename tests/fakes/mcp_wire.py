"""JSON-RPC requests as an MCP client puts them on the wire, for tests that speak to /mcp without the SDK
client (the Lambda events, the transport checks)."""

from __future__ import annotations

from typing import Any

MODERN = "2026-07-28"


def mcp_request(
    method: str, params: dict[str, Any], *, version: str = MODERN, request_id: int = 7
) -> tuple[dict[str, Any], dict[str, str]]:
    """(body, headers) of one request: the 2026-07-28 envelope (`params._meta` and the routing headers it
    must agree with), or, for an older `version`, the plain request of the handshake-era transport."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": version,
    }
    if version == MODERN:
        envelope = {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        params = {**params, "_meta": envelope}
        headers["mcp-method"] = method
        if method == "tools/call":
            headers["mcp-name"] = params["name"]
        elif method == "resources/read":
            headers["mcp-name"] = params["uri"]
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, headers
