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

    def test_a_stored_session_keeps_only_its_newest_turns(self, sessions: SessionStore) -> None:
        """Sessions are bounded: beyond the turn count the oldest turns are dropped."""
        for i in range(130):
            got = sessions.append_turns("acme", "s1", [Turn("user", f"q{i}"), Turn("assistant", f"a{i}")])
        assert len(got.turns) == 100
        assert [t.content for t in got.turns[:2]] == ["q80", "a80"] and got.turns[-1].content == "a129"
        assert sessions.get_session("acme", "s1") == got

    def test_a_stored_session_stays_within_its_byte_bound(self, sessions: SessionStore) -> None:
        """Long answers with citations: the stored turns never pass the bound (DynamoDB's 400 KB item
        limit turned every later query of a long session into a 500 after the answer was computed)."""
        citations = [{"n": n, "text": "quoted passage " * 60, "score": 0.5} for n in range(1, 6)]
        for i in range(60):
            got = sessions.append_turns(
                "acme", "s1", [Turn("user", f"question {i}"), Turn("assistant", "answer " * 700, citations)]
            )
        size = sum(len(t.to_json().encode()) for t in got.turns)
        assert size <= 256 * 1024 and len(got.turns) < 120
        assert got.turns[-1].content.startswith("answer") and got.turns[-2].content == "question 59"

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
