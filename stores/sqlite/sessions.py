"""`SessionStore` on SQLite: conversation turns keyed by (workspace, session id)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict

from stores.sessions import Session, Turn
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts


class SqliteSessionStore:
    """Conversation history, keyed by (workspace, session id)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def get_session(self, workspace: str, session_id: str) -> Session | None:
        rows = self.db.query("SELECT * FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
        if not rows:
            return None
        row = rows[0]
        return Session(
            workspace=workspace,
            session_id=session_id,
            turns=[Turn(**t) for t in json.loads(row["turns"])],
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
        )

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session:
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT turns FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id)
            ).fetchone()
            existing = json.loads(row["turns"]) if row else []
            existing.extend(asdict(t) for t in turns)
            conn.execute(
                "INSERT INTO sessions (workspace, session_id, turns, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (workspace, session_id) DO UPDATE SET turns = excluded.turns,"
                " updated_at = excluded.updated_at",
                (workspace, session_id, json.dumps(existing), now, now),
            )
        session = self.get_session(workspace, session_id)
        assert session is not None  # written in the transaction above
        return session

    def delete_session(self, workspace: str, session_id: str) -> bool:
        with self.db.transaction() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
            return cur.rowcount > 0
