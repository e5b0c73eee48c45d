"""eventrag as an MCP server: the knowledge tool an agent plugs in with one URL (`/mcp`) and one API key.

    endpoint.py   the ASGI app at /mcp: API key -> workspace, the SDK's Streamable HTTP session manager
    server.py     the MCP server: tool and resource handlers, errors as the specification sorts them
    tools.py      the tools: arguments, structured results, and the service calls behind them

Nothing here imports the write path or loads a model at import time.
"""

from app.mcp_server.endpoint import McpEndpoint

__all__ = ["McpEndpoint"]
