"""Conversation sessions: the model and the port (the agent trims a history to its token budget).

A session belongs to one workspace: it is stored under (workspace, session id), so another workspace's key
can neither read nor continue it (the same id there is simply another, empty session).

A stored session is bounded: at most `max_turns` turns and `max_bytes` of them (as JSON); appending beyond
either drops the oldest turns. The prompt uses far less anyway (`EVENTRAG_AGENT__HISTORY_TOKENS`), and a
bound keeps every append cheap and every record within its store's limits (DynamoDB's 400 KB item).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

DEFAULT_MAX_TURNS = 100
DEFAULT_MAX_BYTES = 256 * 1024


@dataclass(slots=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(slots=True)
class Session:
    workspace: str
    session_id: str
    turns: list[Turn]
    created_at: datetime
    updated_at: datetime


def keep_newest(turns: Sequence[str], *, max_turns: int, max_bytes: int) -> list[str]:
    """The newest turns (as JSON) that fit both bounds; the newest one always stays."""
    kept: list[str] = []
    size = 0
    for turn in reversed(turns):
        n = len(turn.encode("utf-8"))
        if kept and (len(kept) >= max_turns or size + n > max_bytes):
            break
        kept.append(turn)
        size += n
    kept.reverse()
    return kept


class SessionStore(Protocol):
    """`append` creates the session on first use and drops the oldest turns beyond the store's bounds;
    `delete` returns whether it existed."""

    def get_session(self, workspace: str, session_id: str) -> Session | None: ...

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session: ...

    def delete_session(self, workspace: str, session_id: str) -> bool: ...
