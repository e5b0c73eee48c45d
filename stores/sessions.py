"""Conversation sessions: the model and the port (the agent trims a history to its token budget).

A session belongs to one workspace: it is stored under (workspace, session id), so another workspace's key
can neither read nor continue it (the same id there is simply another, empty session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(slots=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    at: float = 0.0


@dataclass(slots=True)
class Session:
    workspace: str
    session_id: str
    turns: list[Turn]
    created_at: datetime
    updated_at: datetime


class SessionStore(Protocol):
    """`append` creates the session on first use; `delete` returns whether it existed."""

    def get_session(self, workspace: str, session_id: str) -> Session | None: ...

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session: ...

    def delete_session(self, workspace: str, session_id: str) -> bool: ...
