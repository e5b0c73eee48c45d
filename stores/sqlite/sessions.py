"""`SessionStore` on SQLite: one row per turn, keyed by (workspace, session id, sequence number).

An append inserts the new rows and deletes the oldest beyond the bounds: it never rewrites the session.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from stores.sessions import DEFAULT_MAX_BYTES, DEFAULT_MAX_TURNS, Session, Turn, keep_newest
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.database import ts as _ts


class SqliteSessionStore:
    """Conversation history, keyed by (workspace, session id)."""

    def __init__(
        self, db: SqliteDatabase, *, max_turns: int = DEFAULT_MAX_TURNS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.db = db
        self.max_turns = max_turns
        self.max_bytes = max_bytes

    def get_session(self, workspace: str, session_id: str) -> Session | None:
        rows = self.db.query("SELECT * FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
        if not rows:
            return None
        turns = self.db.query(
            "SELECT turn FROM session_turns WHERE workspace = ? AND session_id = ? ORDER BY seq",
            (workspace, session_id),
        )
        row = rows[0]
        return Session(
            workspace=workspace,
            session_id=session_id,
            turns=[Turn(**json.loads(t["turn"])) for t in turns],
            created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]),
        )

    def append_turns(self, workspace: str, session_id: str, turns: Sequence[Turn]) -> Session:
        now = time.time()
        key = (workspace, session_id)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions (workspace, session_id, created_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (workspace, session_id) DO UPDATE SET updated_at = excluded.updated_at",
                (*key, now, now),
            )
            last = conn.execute(
                "SELECT MAX(seq) FROM session_turns WHERE workspace = ? AND session_id = ?", key
            ).fetchone()[0]
            seq = -1 if last is None else int(last)
            for turn in turns:
                seq += 1
                conn.execute(
                    "INSERT INTO session_turns (workspace, session_id, seq, turn) VALUES (?, ?, ?, ?)",
                    (*key, seq, turn.to_json()),
                )
            # Newest first, only as far as the bounds reach: the sizes are read, not the whole history.
            rows = conn.execute(
                "SELECT seq, turn FROM session_turns WHERE workspace = ? AND session_id = ? ORDER BY seq DESC LIMIT ?",
                (*key, self.max_turns + 1),
            ).fetchall()
            kept = keep_newest([r["turn"] for r in reversed(rows)], max_turns=self.max_turns, max_bytes=self.max_bytes)
            oldest_kept = rows[len(kept) - 1]["seq"]
            conn.execute(
                "DELETE FROM session_turns WHERE workspace = ? AND session_id = ? AND seq < ?", (*key, oldest_kept)
            )
        session = self.get_session(workspace, session_id)
        assert session is not None  # written in the transaction above
        return session

    def delete_session(self, workspace: str, session_id: str) -> bool:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM session_turns WHERE workspace = ? AND session_id = ?", (workspace, session_id))
            cur = conn.execute("DELETE FROM sessions WHERE workspace = ? AND session_id = ?", (workspace, session_id))
            return cur.rowcount > 0
