"""What every cursor-paginated route shares: the `next` link of a page."""

from __future__ import annotations

from fastapi import Request


def next_link(request: Request, next_cursor: str | None) -> str | None:
    """The path and query of the next page (relative, so it is right behind any proxy or API gateway)."""
    if next_cursor is None:
        return None
    url = request.url.include_query_params(cursor=next_cursor)
    return f"{url.path}?{url.query}"
