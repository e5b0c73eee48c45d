"""The `StateStore` contract, against SQLite and against DynamoDB (moto, tables from serverless.yml)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stores.dynamodb.state import DynamoStateStore
from stores.events import EventStatus, EventType, FileEvent, position_key
from stores.ports import ActiveRevision, DocumentRecord, DocumentStatus, StateStore
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.state import SqliteStateStore
from tests.fakes.aws import create_stack, mocked_aws

ADAPTERS = ["sqlite", "dynamodb"]


@pytest.fixture(params=ADAPTERS)
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StateStore]:
    if request.param == "sqlite":
        sqlite = SqliteStateStore(SqliteDatabase(tmp_path / "state.sqlite3"))
        yield sqlite
        sqlite.close()
        return
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        dynamo = DynamoStateStore(
            session.client("dynamodb"),
            events_table=stack.events_table,
            documents_table=stack.documents_table,
            outbox_table=stack.outbox_table,
            retention=timedelta(days=7),
        )
        yield dynamo
        dynamo.close()


def file_event(
    event_id: str,
    *,
    workspace: str = "acme",
    file_id: str = "f1",
    kind: EventType = EventType.UPDATED,
    version: int | None = 1,
    content: str | None = "text",
) -> FileEvent:
    now = datetime.now(UTC)
    return FileEvent(
        event_id=event_id,
        workspace=workspace,
        type=kind,
        file_id=file_id,
        path=f"docs/{file_id}.md",
        timestamp=now,
        version=version,
        content=content if kind is not EventType.DELETED else None,
        metadata={"team": "hr", "weight": 1.5, "tags": ["a", "b"], "draft": False},
    )


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pos(seconds: int, event_id: str = "e", kind: EventType = EventType.UPDATED, version: int | None = None) -> str:
    """A position of the order rule, `seconds` after T0."""
    return position_key(
        timestamp=T0 + timedelta(seconds=seconds), kind=kind, version=version, sequencer=None, event_id=event_id
    )


def document(
    file_id: str,
    *,
    workspace: str = "acme",
    path: str | None = None,
    status: DocumentStatus = DocumentStatus.INDEXED,
    revision: str | None = "rev-1",
    position: str | None = None,
    **extra: object,
) -> DocumentRecord:
    return DocumentRecord(
        workspace=workspace,
        file_id=file_id,
        path=path or f"docs/{file_id}.md",
        status=status,
        position=position or pos(1, f"{file_id}-{revision}"),
        revision=revision,
        **extra,  # type: ignore[arg-type]
    )


class TestStateStoreContract:
    def test_is_a_state_store(self, store: StateStore) -> None:
        assert isinstance(store, StateStore)

    # events ---------------------------------------------------------------------------------------------
    def test_add_event_is_idempotent_on_the_event_id(self, store: StateStore) -> None:
        first = file_event("e1")
        before = datetime.now(UTC) - timedelta(seconds=1)
        rec, created = store.add_event(first, EventStatus.RECEIVED)
        assert created
        assert (rec.event, rec.status, rec.attempts, rec.error, rec.confirmed) == (
            first,
            EventStatus.RECEIVED,
            0,
            None,
            False,
        )
        assert before <= rec.received_at <= datetime.now(UTC) + timedelta(seconds=1)

        store.set_event_status("acme", "e1", EventStatus.QUEUED)
        again, created = store.add_event(
            file_event("e1", file_id="other", version=9, content="new"), EventStatus.RECEIVED
        )
        assert not created
        assert again.event == first and again.status is EventStatus.QUEUED  # unchanged, whatever the payload
        assert store.get_event("acme", "e1") == again

    def test_event_ids_are_per_workspace(self, store: StateStore) -> None:
        """The same webhook-id in two workspaces is two events: neither can squat or read the other's."""
        store.add_event(file_event("e1", workspace="acme"), EventStatus.QUEUED)
        beta, created = store.add_event(file_event("e1", workspace="beta", file_id="b"), EventStatus.RECEIVED)
        assert created and beta.event.workspace == "beta" and beta.status is EventStatus.RECEIVED
        store.set_event_status("beta", "e1", EventStatus.DONE)
        acme = store.get_event("acme", "e1")
        assert acme is not None and (acme.event.file_id, acme.status) == ("f1", EventStatus.QUEUED)
        assert store.get_event("gamma", "e1") is None
        with pytest.raises(KeyError):
            store.set_event_status("gamma", "e1", EventStatus.DONE)

    def test_a_rejection_never_swallows_a_later_valid_event(self, store: StateStore) -> None:
        stub = file_event("e1", file_id="")
        rejected, created = store.add_event(stub, EventStatus.REJECTED)
        assert created and rejected.status is EventStatus.REJECTED
        store.set_event_status("acme", "e1", EventStatus.REJECTED, error="data.path: missing")
        # Another invalid delivery keeps the first rejection.
        again, created = store.add_event(file_event("e1", file_id="x"), EventStatus.REJECTED)
        assert not created and again.event.file_id == "" and again.error == "data.path: missing"
        # A valid delivery replaces it, as new.
        valid, created = store.add_event(file_event("e1", file_id="f9"), EventStatus.RECEIVED)
        assert created
        assert (valid.event.file_id, valid.status, valid.error, valid.attempts) == ("f9", EventStatus.RECEIVED, None, 0)
        # ... and from then on, nothing replaces the valid one.
        after, created = store.add_event(file_event("e1", file_id="f0"), EventStatus.REJECTED)
        assert not created and after.event.file_id == "f9"
        after, created = store.add_event(file_event("e1", file_id="f0"), EventStatus.RECEIVED)
        assert not created and after.event.file_id == "f9"

    def test_unknown_events(self, store: StateStore) -> None:
        assert store.get_event("acme", "nope") is None
        with pytest.raises(KeyError):
            store.set_event_status("acme", "nope", EventStatus.DONE)
        with pytest.raises(KeyError):
            store.reset_for_retry("acme", "nope")

    def test_status_error_detail_and_attempts(self, store: StateStore) -> None:
        store.add_event(file_event("e1"), EventStatus.QUEUED)
        rec = store.set_event_status("acme", "e1", EventStatus.PROCESSING, count_attempt=True)
        assert (rec.status, rec.attempts) == (EventStatus.PROCESSING, 1)
        rec = store.set_event_status("acme", "e1", EventStatus.QUEUED, error="OSError: boom")
        assert (rec.status, rec.attempts, rec.error) == (EventStatus.QUEUED, 1, "OSError: boom")
        rec = store.set_event_status("acme", "e1", EventStatus.PROCESSING, count_attempt=True)
        assert (rec.attempts, rec.error) == (2, None)  # each update says the whole error and detail
        rec = store.set_event_status("acme", "e1", EventStatus.DONE, detail="indexed 3 chunk(s)")
        assert (rec.status, rec.detail, rec.attempts) == (EventStatus.DONE, "indexed 3 chunk(s)", 2)
        assert rec.updated_at >= rec.received_at
        assert store.get_event("acme", "e1") == rec

    def test_reset_for_retry_gives_a_fresh_budget_and_keeps_confirmation(self, store: StateStore) -> None:
        store.add_event(file_event("e1"), EventStatus.QUEUED)
        store.set_event_status("acme", "e1", EventStatus.PROCESSING, count_attempt=True)
        store.set_event_status("acme", "e1", EventStatus.FAILED, error="SourceNotFoundError: gone")
        rec = store.reset_for_retry("acme", "e1")
        assert (rec.status, rec.attempts, rec.confirmed) == (EventStatus.QUEUED, 0, False)
        assert store.reset_for_retry("acme", "e1", confirmed=True).confirmed
        last = store.reset_for_retry("acme", "e1")
        assert last.confirmed  # a confirmation is never taken back
        assert store.get_event("acme", "e1") == last

    def test_list_events_newest_first_with_filters(self, store: StateStore) -> None:
        for event_id, file_id in (("e1", "f1"), ("e2", "f2"), ("e3", "f1"), ("e4", "f3")):
            store.add_event(file_event(event_id, file_id=file_id), EventStatus.QUEUED)
        store.add_event(file_event("b1", workspace="beta", file_id="f1"), EventStatus.QUEUED)
        store.set_event_status("acme", "e2", EventStatus.DONE)
        store.set_event_status("acme", "e1", EventStatus.DONE)

        def ids(**kw: object) -> list[str]:
            return [r.event_id for r in store.list_events("acme", **kw)]  # type: ignore[arg-type]

        assert ids() == ["e4", "e3", "e2", "e1"]
        assert ids(limit=2) == ["e4", "e3"]
        assert ids(file_id="f1") == ["e3", "e1"]
        assert ids(status=EventStatus.DONE) == ["e2", "e1"]
        assert ids(status=EventStatus.DONE, file_id="f1") == ["e1"]
        assert ids(status=EventStatus.HELD) == []
        assert [r.event_id for r in store.list_events("beta")] == ["b1"]

    def test_events_with_status_oldest_first_across_workspaces(self, store: StateStore) -> None:
        store.add_event(file_event("e1"), EventStatus.RECEIVED)
        store.add_event(file_event("b1", workspace="beta"), EventStatus.RECEIVED)
        store.add_event(file_event("e2", file_id="f2"), EventStatus.QUEUED)
        assert [r.event_id for r in store.events_with_status(EventStatus.RECEIVED)] == ["e1", "b1"]
        assert [r.event_id for r in store.events_with_status(EventStatus.RECEIVED, limit=1)] == ["e1"]

    def test_count_recent_deletes(self, store: StateStore) -> None:
        before = datetime.now(UTC) - timedelta(seconds=1)
        for event_id, workspace, kind, status in (
            ("d1", "acme", EventType.DELETED, EventStatus.DONE),
            ("d2", "acme", EventType.DELETED, EventStatus.DONE),
            ("d3", "acme", EventType.DELETED, EventStatus.HELD),
            ("u1", "acme", EventType.UPDATED, EventStatus.DONE),
            ("b1", "beta", EventType.DELETED, EventStatus.DONE),
        ):
            store.add_event(file_event(event_id, workspace=workspace, file_id=event_id, kind=kind), EventStatus.QUEUED)
            store.set_event_status(workspace, event_id, status)
        assert store.count_recent_deletes("acme", before) == 2
        assert store.count_recent_deletes("beta", before) == 1
        assert store.count_recent_deletes("acme", datetime.now(UTC) + timedelta(minutes=1)) == 0

    # documents ------------------------------------------------------------------------------------------
    def test_switch_get_list_and_count_documents(self, store: StateStore) -> None:
        assert store.get_document("acme", "f1") is None
        store.switch_document(
            document(
                "f1",
                path="b.md",
                version=2,
                content_type="text/markdown",
                chunk_count=3,
                embedded=2,
                reused=1,
                last_event_id="e1",
                metadata={"team": "hr", "w": 1.5},
            )
        )
        got = store.get_document("acme", "f1")
        assert got is not None and got.updated_at is not None
        assert (got.path, got.status, got.position, got.revision, got.version, got.content_type) == (
            "b.md",
            DocumentStatus.INDEXED,
            pos(1, "f1-rev-1"),
            "rev-1",
            2,
            "text/markdown",
        )
        assert (got.chunk_count, got.embedded, got.reused, got.last_event_id, got.last_error, got.metadata) == (
            3,
            2,
            1,
            "e1",
            None,
            {"team": "hr", "w": 1.5},
        )

        # The switch replaces the whole record: nothing of the old one survives.
        assert store.switch_document(
            document(
                "f1",
                path="b.md",
                status=DocumentStatus.SKIPPED,
                revision=None,
                position=pos(2),
                last_error="cannot parse",
            )
        )
        got = store.get_document("acme", "f1")
        assert got is not None
        assert (got.status, got.revision, got.version, got.chunk_count, got.metadata, got.last_error) == (
            DocumentStatus.SKIPPED,
            None,
            None,
            0,
            {},
            "cannot parse",
        )

        store.switch_document(document("f2", path="a.md"))
        store.switch_document(document("f3", path="c.md"))
        store.switch_document(document("f0", path="c.md", status=DocumentStatus.DELETED, revision=None))
        store.switch_document(document("f1", workspace="beta", path="a.md"))
        assert [d.file_id for d in store.list_documents("acme")] == ["f2", "f1", "f0", "f3"]  # by path, file id
        assert [d.file_id for d in store.list_documents("acme", status=DocumentStatus.INDEXED)] == ["f2", "f3"]
        assert [d.file_id for d in store.list_documents("acme", limit=2, offset=1)] == ["f1", "f0"]
        assert store.count_documents("acme", DocumentStatus.INDEXED) == 2
        assert store.count_documents("acme", DocumentStatus.DELETED) == 1
        assert store.count_documents("beta", DocumentStatus.INDEXED) == 1
        assert store.count_documents("gamma", DocumentStatus.INDEXED) == 0

    def test_active_revisions_for_many_files(self, store: StateStore) -> None:
        expected = {}
        for i in range(230):  # more than one DynamoDB BatchGetItem (100 keys)
            revision = None if i % 10 == 0 else f"rev-{i}"  # a deleted file has nothing searchable
            version = None if i % 3 == 0 else i  # a source without versions too
            store.switch_document(document(f"f{i}", revision=revision, version=version))
            if revision:
                expected[f"f{i}"] = ActiveRevision(revision, version)
        store.switch_document(document("f1", workspace="beta", revision="other-workspace", position=pos(9)))
        asked = [f"f{i}" for i in range(240)] + ["f1", "f2"]  # unknown files and repeats too
        assert store.active_revisions("acme", asked) == expected
        assert store.active_revisions("acme", []) == {}
        assert store.active_revisions("beta", ["f1", "f2"]) == {"f1": ActiveRevision("other-workspace", None)}

    def test_switch_is_a_compare_and_set_on_the_position(self, store: StateStore) -> None:
        """A stale writer never replaces newer work: the switch applies only over an older position."""
        assert store.switch_document(document("f1", revision="r5", position=pos(5, "e5"), chunk_count=5))
        assert not store.switch_document(document("f1", revision="r3", position=pos(3, "e3"), chunk_count=3))
        got = store.get_document("acme", "f1")
        assert got is not None and (got.revision, got.chunk_count) == ("r5", 5)
        # At the same instant, a delete is newer than an update; the event id breaks exact ties.
        assert store.switch_document(document("f1", revision=None, position=pos(5, "e5", kind=EventType.DELETED)))
        assert not store.switch_document(document("f1", revision="r6", position=pos(5, "e4", kind=EventType.DELETED)))
        # The same position again is allowed: an event rewriting its own record (a repair).
        assert store.switch_document(
            document("f1", revision=None, position=pos(5, "e5", kind=EventType.DELETED), last_error="again")
        )
        assert store.switch_document(document("f1", revision="r7", position=pos(7, "e7")))
        got = store.get_document("acme", "f1")
        assert got is not None and (got.revision, got.position) == ("r7", pos(7, "e7"))
        # Another workspace's document of the same id is another record.
        assert store.switch_document(document("f1", workspace="beta", revision="b1", position=pos(1, "b")))

    def test_keeping_a_revision_also_requires_it_to_be_still_active(self, store: StateStore) -> None:
        """`if_revision`: the switch of a kept revision (unchanged content) applies only over a record that
        still holds that revision, and, like every switch, only over an older or equal position."""
        assert store.switch_document(document("f1", revision="r1", position=pos(1, "e1"), version=1))
        assert store.switch_document(document("f1", revision="r1", position=pos(3, "e3"), version=3), if_revision="r1")
        got = store.get_document("acme", "f1")
        assert got is not None and (got.revision, got.position, got.version) == ("r1", pos(3, "e3"), 3)
        # An older position is refused even with the right revision.
        assert not store.switch_document(
            document("f1", revision="r1", position=pos(2, "e2"), version=2), if_revision="r1"
        )
        # Another event switched the file to other content: keeping r1 is refused, whatever the position.
        assert store.switch_document(document("f1", revision="r4", position=pos(4, "e4"), version=4))
        assert not store.switch_document(
            document("f1", revision="r1", position=pos(5, "e5"), version=5), if_revision="r1"
        )
        got = store.get_document("acme", "f1")
        assert got is not None and (got.revision, got.position, got.version) == ("r4", pos(4, "e4"), 4)
        # Nothing to keep where there is no record (of this workspace).
        assert not store.switch_document(
            document("f1", workspace="beta", revision="r4", position=pos(5, "e5")), if_revision="r4"
        )
        assert store.get_document("beta", "f1") is None

    def test_a_position_from_before_the_rule_is_replaced_by_anything(self, store: StateStore) -> None:
        assert store.switch_document(
            document("f1", revision="v:00000000000000000009", position="v:00000000000000000009")
        )
        assert store.switch_document(document("f1", revision="r1", position=pos(1, "e1")))
        got = store.get_document("acme", "f1")
        assert got is not None and got.revision == "r1"

    def test_a_failure_older_than_what_is_applied_does_not_mark_the_document(self, store: StateStore) -> None:
        store.switch_document(document("f1", revision="r5", position=pos(5, "e5")))
        store.note_document_error("acme", "f1", "docs/f1.md", "late failure", position=pos(3, "e3"))
        got = store.get_document("acme", "f1")
        assert got is not None and (got.status, got.last_error) == (DocumentStatus.INDEXED, None)
        store.note_document_error("acme", "f1", "docs/f1.md", "newer failure", position=pos(6, "e6"))
        got = store.get_document("acme", "f1")
        assert got is not None and (got.status, got.last_error, got.revision) == (
            DocumentStatus.FAILED,
            "newer failure",
            "r5",
        )
        store.note_document_error("acme", "new", "docs/new.md", "first failure", position=pos(1, "n1"))
        new = store.get_document("acme", "new")
        assert new is not None and (new.status, new.position) == (DocumentStatus.FAILED, None)

    def test_note_document_error_keeps_the_active_revision(self, store: StateStore) -> None:
        store.switch_document(document("f1", revision="rev-7", chunk_count=4, metadata={"team": "hr"}))
        store.note_document_error("acme", "f1", "docs/f1.md", "SourceUnavailableError: timeout")
        got = store.get_document("acme", "f1")
        assert got is not None
        assert (got.status, got.revision, got.chunk_count, got.last_error, got.metadata) == (
            DocumentStatus.FAILED,
            "rev-7",
            4,
            "SourceUnavailableError: timeout",
            {"team": "hr"},
        )
        assert store.active_revisions("acme", ["f1"]) == {"f1": ActiveRevision("rev-7", None)}

        store.note_document_error("acme", "new", "docs/new.md", "SourceNotFoundError: gone")
        new = store.get_document("acme", "new")
        assert new is not None
        assert (new.path, new.status, new.revision, new.position, new.chunk_count, new.metadata, new.last_error) == (
            "docs/new.md",
            DocumentStatus.FAILED,
            None,
            None,
            0,
            {},
            "SourceNotFoundError: gone",
        )

    def test_workspaces_of_documents_and_events(self, store: StateStore) -> None:
        assert store.workspaces() == []
        store.add_event(file_event("e1", workspace="gamma"), EventStatus.RECEIVED)
        store.switch_document(document("f1", workspace="acme"))
        store.switch_document(document("f2", workspace="acme"))
        store.add_event(file_event("e2", workspace="acme"), EventStatus.RECEIVED)
        assert store.workspaces() == ["acme", "gamma"]

    def test_a_batch_keeps_its_writes_and_each_failed_one_out(self, store: StateStore) -> None:
        store.add_event(file_event("e1"), EventStatus.QUEUED)
        store.add_event(file_event("e2", file_id="f2"), EventStatus.QUEUED)
        with store.batch():
            store.set_event_status("acme", "e1", EventStatus.PROCESSING, count_attempt=True)
            with pytest.raises(KeyError):
                store.set_event_status("acme", "nope", EventStatus.DONE)
            assert store.switch_document(document("f2", position=pos(5, "e2"), revision="r1"))
            store.set_event_status("acme", "e2", EventStatus.DONE, detail="indexed")
            got = store.get_event("acme", "e1")  # the batch reads its own writes
            assert got is not None and (got.status, got.attempts) == (EventStatus.PROCESSING, 1)
        e1, e2 = store.get_event("acme", "e1"), store.get_event("acme", "e2")
        assert e1 is not None and (e1.status, e1.attempts) == (EventStatus.PROCESSING, 1)
        assert e2 is not None and (e2.status, e2.detail) == (EventStatus.DONE, "indexed")
        doc = store.get_document("acme", "f2")
        assert doc is not None and doc.revision == "r1"
        assert store.get_event("acme", "nope") is None

    def test_purge_forgets_no_event_that_is_still_pending(self, store: StateStore) -> None:
        store.add_event(file_event("e1"), EventStatus.QUEUED)
        store.add_event(file_event("e2", file_id="f2"), EventStatus.HELD)
        assert store.purge_events(datetime.now(UTC) + timedelta(days=1)) == 0
        assert store.get_event("acme", "e1") is not None and store.get_event("acme", "e2") is not None


def test_sqlite_a_batch_is_one_commit_that_undoes_a_failed_write_alone(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "state.sqlite3")
    commits: list[str] = []
    db._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    store = SqliteStateStore(db)
    with db.transaction() as conn:
        conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    commits.clear()
    with store.batch():
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError), db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (2)")  # written, then the write fails: both undone
            conn.execute("INSERT INTO t VALUES (1)")
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (3)")
    assert [r[0] for r in db.query("SELECT x FROM t ORDER BY x")] == [1, 3]
    assert commits == ["COMMIT"]

    class Killed(BaseException):
        pass

    with pytest.raises(Killed), store.batch():  # a crash inside the batch: none of it was written
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (4)")
        raise Killed
    assert [r[0] for r in db.query("SELECT x FROM t ORDER BY x")] == [1, 3]
    store.close()


def test_dynamodb_events_expire_only_once_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """TTL does what `purge_events` does for SQLite: settled events are forgotten after the retention."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = session.client("dynamodb")
        store = DynamoStateStore(
            client, events_table=stack.events_table, documents_table=stack.documents_table, retention=timedelta(days=2)
        )

        def expires_at(event_id: str) -> int | None:
            key = {"workspace": {"S": "acme"}, "event_id": {"S": event_id}}
            item = client.get_item(TableName=stack.events_table, Key=key)["Item"]
            return int(item["expires_at"]["N"]) if "expires_at" in item else None

        store.add_event(file_event("e1"), EventStatus.RECEIVED)
        assert expires_at("e1") is None
        store.set_event_status("acme", "e1", EventStatus.HELD)
        assert expires_at("e1") is None
        store.set_event_status("acme", "e1", EventStatus.DONE)
        expiry = expires_at("e1")
        assert expiry is not None
        assert abs(expiry - (datetime.now(UTC) + timedelta(days=2)).timestamp()) < 60
        store.reset_for_retry("acme", "e1")
        assert expires_at("e1") is None
        assert store.purge_events(datetime.now(UTC) + timedelta(days=30)) == 0  # TTL's job, not ours


def test_dynamodb_counts_recent_deletes_reading_only_the_workspaces_deletes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mass-deletion brake runs for every delete event: it reads the workspace's delete events from the
    sparse `recent_deletes` index, never every tenant's settled events."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = session.client("dynamodb")
        store = DynamoStateStore(client, events_table=stack.events_table, documents_table=stack.documents_table)
        before = datetime.now(UTC) - timedelta(seconds=1)
        for i in range(30):  # other tenants' deletes and everyone's updates: none of them may be read
            for workspace, kind in (("acme", EventType.UPDATED), ("beta", EventType.DELETED)):
                event_id = f"{workspace}-{i}"
                store.add_event(
                    file_event(event_id, workspace=workspace, file_id=event_id, kind=kind), EventStatus.QUEUED
                )
                store.set_event_status(workspace, event_id, EventStatus.DONE)
        for event_id, status in (("d1", EventStatus.DONE), ("d2", EventStatus.DONE), ("d3", EventStatus.HELD)):
            store.add_event(file_event(event_id, file_id=event_id, kind=EventType.DELETED), EventStatus.QUEUED)
            store.set_event_status("acme", event_id, status)
        scanned: list[int] = []
        pages = store._pages

        def counted(operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
            for page in pages(operation, **kwargs):
                scanned.append(int(page.get("ScannedCount", 0)))
                yield page

        monkeypatch.setattr(store, "_pages", counted)
        assert store.count_recent_deletes("acme", before) == 2
        assert sum(scanned) == 3  # acme's three delete events, and nothing else
        # A table whose index is not there yet (an upgrade: DynamoDB still builds it) is counted the old way.
        client.update_table(
            TableName=stack.events_table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "recent_deletes"}}]
        )
        scanned.clear()
        assert store.count_recent_deletes("acme", before) == 2
        assert store.count_recent_deletes("beta", before) == 30
        assert sum(scanned) > 3


class PartialBatchGets:
    """The moto client, except that BatchGetItem serves at most `serve` keys per call and hands the rest
    back as UnprocessedKeys, as DynamoDB does when a call is throttled or its response passes 16 MB."""

    def __init__(self, client: Any, serve: int) -> None:
        self.client = client
        self.serve = serve
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803 (boto3's name)
        self.calls += 1
        served, unprocessed = {}, {}
        for table, spec in RequestItems.items():
            served[table] = {**spec, "Keys": spec["Keys"][: self.serve]}
            if spec["Keys"][self.serve :]:
                unprocessed[table] = {**spec, "Keys": spec["Keys"][self.serve :]}
        resp: dict[str, Any] = self.client.batch_get_item(RequestItems=served)
        resp["UnprocessedKeys"] = unprocessed
        return resp


def test_dynamodb_active_revisions_retries_unprocessed_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = PartialBatchGets(session.client("dynamodb"), serve=70)
        store = DynamoStateStore(client, events_table=stack.events_table, documents_table=stack.documents_table)
        for i in range(150):
            store.switch_document(document(f"f{i}", revision=f"rev-{i}"))
        assert store.active_revisions("acme", [f"f{i}" for i in range(150)]) == {
            f"f{i}": ActiveRevision(f"rev-{i}", None) for i in range(150)
        }
        assert client.calls == 3  # keys 0-69, then 70-99 again; keys 100-149 in one call
