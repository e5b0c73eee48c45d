"""The `SessionStore` contract, against SQLite and against DynamoDB (moto, tables from serverless.yml)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from stores.dynamodb.sessions import DynamoSessionStore
from stores.sessions import SessionStore, Turn
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.sessions import SqliteSessionStore
from tests.fakes.aws import create_stack, mocked_aws


@pytest.fixture(params=["sqlite", "dynamodb"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionStore]:
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "state.sqlite3")
        yield SqliteSessionStore(db)
        db.close()
        return
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        yield DynamoSessionStore(session.client("dynamodb"), table=stack.sessions_table)


class TestSessionStoreContract:
    def test_append_creates_then_extends(self, sessions: SessionStore) -> None:
        assert sessions.get_session("acme", "s1") is None
        first = sessions.append_turns(
            "acme", "s1", [Turn("user", "hi", at=1.0), Turn("assistant", "hello", [{"n": 1, "score": 0.5}], 2.0)]
        )
        second = sessions.append_turns("acme", "s1", [Turn("user", "and then?", at=3.0)])
        assert [t.content for t in second.turns] == ["hi", "hello", "and then?"]
        assert second.turns[1].citations == [{"n": 1, "score": 0.5}] and second.turns[1].at == 2.0
        assert second.created_at == first.created_at and second.updated_at >= first.updated_at
        assert sessions.get_session("acme", "s1") == second

    def test_a_session_belongs_to_its_workspace(self, sessions: SessionStore) -> None:
        sessions.append_turns("acme", "s1", [Turn("user", "secret plans")])
        assert sessions.get_session("beta", "s1") is None
        assert not sessions.delete_session("beta", "s1")
        assert sessions.get_session("acme", "s1") is not None

    def test_delete_says_whether_it_existed(self, sessions: SessionStore) -> None:
        sessions.append_turns("acme", "s1", [Turn("user", "hi")])
        assert sessions.delete_session("acme", "s1")
        assert not sessions.delete_session("acme", "s1")
        assert sessions.get_session("acme", "s1") is None


def test_dynamodb_expired_session_is_gone_before_ttl_deletes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = session.client("dynamodb")
        DynamoSessionStore(client, table=stack.sessions_table, ttl=timedelta(seconds=-10)).append_turns(
            "acme", "s1", [Turn("user", "long ago")]
        )
        store = DynamoSessionStore(client, table=stack.sessions_table)
        assert store.get_session("acme", "s1") is None
        assert [t.content for t in store.append_turns("acme", "s1", [Turn("user", "now")]).turns] == ["now"]
