"""A state file written before events were keyed by workspace opens with everything in it: events, queued
jobs, sessions and documents are migrated in place, once."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from stores.events import EventKey, EventStatus, EventType, FileEvent
from stores.ports import DocumentRecord, DocumentStatus
from stores.sqlite.database import SCHEMA_VERSION, SqliteDatabase
from stores.sqlite.queue import SqliteJobQueue
from stores.sqlite.sessions import SqliteSessionStore
from stores.sqlite.state import SqliteStateStore

# The schema of version 0, as the code before this change created it.
SCHEMA_V0 = """
CREATE TABLE events (event_id TEXT PRIMARY KEY, workspace TEXT NOT NULL, file_id TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, detail TEXT, confirmed INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL, payload TEXT NOT NULL, received_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX events_by_file ON events (workspace, file_id);
CREATE INDEX events_by_status ON events (status);
CREATE INDEX events_by_kind ON events (workspace, kind, status, updated_at);
CREATE TABLE documents (workspace TEXT NOT NULL, file_id TEXT NOT NULL, path TEXT NOT NULL, status TEXT NOT NULL,
    position TEXT, revision TEXT, version INTEGER, content_type TEXT, chunk_count INTEGER NOT NULL DEFAULT 0,
    embedded INTEGER NOT NULL DEFAULT 0, reused INTEGER NOT NULL DEFAULT 0, last_event_id TEXT, last_error TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL, PRIMARY KEY (workspace, file_id));
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, group_key TEXT NOT NULL,
    available_at REAL NOT NULL, lease_until REAL, receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT);
CREATE INDEX jobs_by_group ON jobs (group_key, seq);
CREATE TABLE sessions (workspace TEXT NOT NULL, session_id TEXT NOT NULL, turns TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (workspace, session_id));
"""


def test_a_version_0_state_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_V0)
    now = time.time()
    payload = {
        "event_id": "e1",
        "workspace": "acme",
        "type": "file.updated",
        "file_id": "f1",
        "path": "f1.md",
        "position": "v:00000000000000000003",  # stored with the event before positions were derived
        "timestamp": "2026-01-01T00:00:00Z",
        "version": 3,
        "content": "hello",
        "metadata": {},
    }
    old.execute(
        "INSERT INTO events VALUES ('e1', 'acme', 'f1', 'queued', 0, NULL, NULL, 0, 'file.updated', ?, ?, ?)",
        (json.dumps(payload), now, now),
    )
    old.execute("INSERT INTO jobs (event_id, group_key, available_at) VALUES ('e1', 'acme/f1', ?)", (now,))
    old.execute(
        "INSERT INTO documents (workspace, file_id, path, status, position, revision, version, chunk_count,"
        " updated_at) VALUES ('acme', 'f1', 'f1.md', 'indexed', 'v:00000000000000000002',"
        " 'v:00000000000000000002', 2, 1, ?)",
        (now,),
    )
    turns = [{"role": "user", "content": "hi", "citations": [], "at": 1.0}, {"role": "assistant", "content": "yo"}]
    old.execute("INSERT INTO sessions VALUES ('acme', 's1', ?, ?, ?)", (json.dumps(turns), now, now))
    old.commit()
    old.close()

    db = SqliteDatabase(path)
    try:
        assert db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        state, queue = SqliteStateStore(db), SqliteJobQueue(db)
        rec = state.get_event("acme", "e1")
        assert rec is not None and rec.status is EventStatus.QUEUED and rec.event.version == 3
        assert rec.event.position.startswith("20260101T000000.000000Z|2|v0000000000000000003|")
        (job,) = queue.claim(10, 60)
        assert job.key == EventKey("acme", "e1") and job.group_key == "acme/f1"
        session = SqliteSessionStore(db).get_session("acme", "s1")
        assert session is not None and [t.content for t in session.turns] == ["hi", "yo"]
        # The document's legacy position is older than any of the rule: the queued event applies.
        doc = state.get_document("acme", "f1")
        assert doc is not None and doc.position == "v:00000000000000000002"
        event = FileEvent(
            event_id="e1",
            workspace="acme",
            type=EventType.UPDATED,
            file_id="f1",
            path="f1.md",
            timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            version=3,
        )
        assert state.switch_document(
            DocumentRecord("acme", "f1", "f1.md", DocumentStatus.INDEXED, event.position, event.position, 3)
        )
        # A new event id of another workspace no longer collides with acme's.
        other = event.model_copy(update={"workspace": "beta"})
        assert state.add_event(other, EventStatus.RECEIVED)[1]
        queue.close()
    finally:
        db.close()
    # Opening it again migrates nothing more.
    again = SqliteDatabase(path)
    try:
        assert SqliteStateStore(again).get_event("beta", "e1") is not None
    finally:
        again.close()


def test_a_version_1_state_file_gets_the_outbox_and_subscriptions_tables(tmp_path: Path) -> None:
    """Version 1 (issue 10's layout) had no outbox: opening it adds the tables, keeping everything else."""
    path = tmp_path / "state.sqlite3"
    db = SqliteDatabase(path)
    state = SqliteStateStore(db)
    event = FileEvent(
        event_id="e1",
        workspace="acme",
        type=EventType.UPDATED,
        file_id="f1",
        path="f1.md",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        version=1,
        content="hello",
    )
    state.add_event(event, EventStatus.QUEUED)
    db.close()
    old = sqlite3.connect(path)
    old.executescript("DROP TABLE outbox; DROP TABLE subscriptions; PRAGMA user_version = 1;")
    old.close()

    from ingest.notifications import Change, deliveries_for
    from stores.outbox import Outbound, OutboundType, Subscription
    from stores.sqlite.outbox import SqliteOutboxStore
    from stores.sqlite.subscriptions import SqliteSubscriptionStore

    db = SqliteDatabase(path)
    try:
        assert db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "subscriptions", "events", "documents", "jobs"} <= tables
        state = SqliteStateStore(db)
        record = state.get_event("acme", "e1")
        assert record is not None and record.status is EventStatus.QUEUED
        outbound = Outbound({"acme": [Subscription("s", "https://example.com/hook")]})
        out = deliveries_for(outbound, record, Change(OutboundType.DOCUMENT_INDEXED, "indexed"))
        state.set_event_status("acme", "e1", EventStatus.DONE, outbox=out)
        assert SqliteOutboxStore(db).pending_count() == 1
        assert SqliteSubscriptionStore(db).list_subscriptions("acme") == []
    finally:
        db.close()


def test_the_version_0_migration_creates_the_outbox_too(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_V0)
    old.close()
    db = SqliteDatabase(path)
    try:
        tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "subscriptions", "session_turns"} <= tables
        indexes = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"outbox_due", "outbox_by_workspace", "events_by_status"} <= indexes
    finally:
        db.close()
