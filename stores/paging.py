"""Cursor pagination shared by every listing: a page of items, the total for the filter, the next cursor.

A cursor is opaque to clients: the listing, the workspace and the sort key of the last item of a page, as
URL-safe base64 JSON. Listings are keyset-paginated (the next page starts strictly after that key), so rows
added or removed between two requests never make a page repeat or skip an item that stays. A cursor pages
only the listing and workspace it came from: event ids are unique per workspace only, and another
workspace's cursor is refused (422) rather than read as a position in this one.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from stores.errors import EventragError

T = TypeVar("T")


class InvalidCursorError(EventragError):
    """The cursor was not made by this listing (or was altered)."""

    status_code = 422


@dataclass(slots=True)
class Page(Generic[T]):
    """One page of a listing: the items, how many match in all, the cursor of the next page (None: last)."""

    items: list[T]
    total: int
    next_cursor: str | None = None


def encode_cursor(kind: str, workspace: str, key: list[Any]) -> str:
    """A cursor of listing `kind` of one workspace: a workspace's cursor never pages another's listing."""
    raw = json.dumps([kind, workspace, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, workspace: str, cursor: str, arity: int) -> list[Any]:
    """The sort key in `cursor`; `InvalidCursorError` when it is not a cursor of listing `kind` of `workspace`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursorError("invalid cursor: pass the next_cursor of the previous page unchanged") from exc
    if not isinstance(values, list) or len(values) != arity + 2 or values[0] != kind:
        raise InvalidCursorError(f"invalid cursor: not a cursor of the {kind} listing")
    if values[1] != workspace:
        raise InvalidCursorError(f"invalid cursor: a cursor of another workspace's {kind} listing")
    key = values[2:]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in key):
        raise InvalidCursorError(f"invalid cursor: not a cursor of the {kind} listing")
    return key


def cursor_number(value: Any) -> Decimal:
    """A number of a decoded cursor, exactly (DynamoDB keys are decimals); `InvalidCursorError` otherwise."""
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidCursorError("invalid cursor: pass the next_cursor of the previous page unchanged") from exc
    if not number.is_finite():
        raise InvalidCursorError("invalid cursor: pass the next_cursor of the previous page unchanged")
    return number
