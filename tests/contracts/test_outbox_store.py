"""The `OutboxStore` contract and the operator listings of `StateStore`, against SQLite and DynamoDB (moto,
tables from serverless.yml): deliveries written atomically with an event's status, claimed once, recorded,
listed newest first a page at a time; events and documents paged with totals and cursors."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ingest.notifications import Change, deliveries_for
from stores.dynamodb.outbox import DynamoOutboxStore
from stores.dynamodb.state import DynamoStateStore
from stores.dynamodb.subscriptions import DynamoSubscriptionStore
from stores.events import EventStatus, EventType, FileEvent
from stores.outbox import (
    Added,
    DeliveryAttempt,
    DeliveryStatus,
    Outbound,
    OutboundType,
    OutboxStore,
    StoredSubscription,
    Subscription,
    SubscriptionStore,
)
from stores.paging import InvalidCursorError
from stores.ports import DocumentRecord, DocumentStatus, StateStore
from stores.sqlite.database import SqliteDatabase
from stores.sqlite.outbox import SqliteOutboxStore
from stores.sqlite.state import SqliteStateStore
from stores.sqlite.subscriptions import SqliteSubscriptionStore
from tests.fakes.aws import create_stack, mocked_aws

OUTBOUND = Outbound(
    {
        "acme": [
            Subscription("all", "https://a.example/hook"),
            Subscription("failures", "https://b.example/hook", frozenset({OutboundType.DOCUMENT_FAILED})),
        ],
        "beta": [Subscription("beta", "https://c.example/hook")],
    }
)


@dataclass
class Stores:
    state: StateStore
    outbox: OutboxStore
    subscriptions: SubscriptionStore


@pytest.fixture(params=["sqlite", "dynamodb"])
def stores(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stores]:
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "state.sqlite3")
        yield Stores(SqliteStateStore(db), SqliteOutboxStore(db), SqliteSubscriptionStore(db))
        db.close()
        return
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = session.client("dynamodb")
        state = DynamoStateStore(
            client,
            events_table=stack.events_table,
            documents_table=stack.documents_table,
            outbox_table=stack.outbox_table,
        )
        yield Stores(
            state,
            DynamoOutboxStore(client, table=stack.outbox_table),
            DynamoSubscriptionStore(client, table=stack.subscriptions_table),
        )


def event(event_id: str, *, workspace: str = "acme", file_id: str = "f1", version: int = 1) -> FileEvent:
    now = datetime.now(UTC)
    return FileEvent(
        event_id=event_id,
        workspace=workspace,
        type=EventType.UPDATED,
        file_id=file_id,
        path=f"docs/{file_id}.md",
        timestamp=now,
        version=version,
        content="text",
    )


def settle(s: Stores, event_id: str, kind: OutboundType, *, workspace: str = "acme", **kw: str) -> list[str]:
    ev = event(event_id, workspace=workspace, **kw)
    s.state.add_event(ev, EventStatus.QUEUED)
    record = s.state.set_event_status(workspace, event_id, EventStatus.PROCESSING, count_attempt=True)
    out = deliveries_for(OUTBOUND, record, Change(kind, "indexed", chunk_count=3, embedded=1, reused=2))
    s.state.set_event_status(workspace, event_id, EventStatus.DONE, detail="indexed", outbox=out)
    return [d.delivery_id for d in out]


class TestOutboxContract:
    def test_is_an_outbox_store(self, stores: Stores) -> None:
        assert isinstance(stores.outbox, OutboxStore)

    def test_settling_writes_one_delivery_per_interested_subscriber(self, stores: Stores) -> None:
        ids = settle(stores, "e1", OutboundType.DOCUMENT_INDEXED)
        assert len(ids) == 1  # "failures" does not want document.indexed
        d = stores.outbox.get_delivery(ids[0])
        assert d is not None and d.status is DeliveryStatus.PENDING and d.subscriber == "all"
        assert d.payload["type"] == "document.indexed"
        assert d.payload["data"]["chunk_count"] == 3 and d.payload["data"]["event_id"] == "e1"
        assert stores.state.get_event("acme", "e1").status is EventStatus.DONE  # type: ignore[union-attr]
        assert len(settle(stores, "e2", OutboundType.DOCUMENT_FAILED)) == 2
        assert stores.outbox.pending_count() == 3

    def test_writing_the_same_deliveries_again_changes_nothing(self, stores: Stores) -> None:
        ev = event("e1")
        stores.state.add_event(ev, EventStatus.QUEUED)
        record = stores.state.set_event_status("acme", "e1", EventStatus.PROCESSING)
        out = deliveries_for(OUTBOUND, record, Change(OutboundType.DOCUMENT_FAILED, "failed", error="x"))
        stores.state.set_event_status("acme", "e1", EventStatus.FAILED, error="x", outbox=out)
        first = stores.outbox.claim(out[0].delivery_id, datetime.now(UTC), 60)
        assert first is not None
        stores.state.set_event_status("acme", "e1", EventStatus.FAILED, error="x", outbox=out)  # a retried write
        again = stores.outbox.get_delivery(out[0].delivery_id)
        assert again is not None and again.next_attempt_at == first.next_attempt_at  # the claim stands
        assert stores.outbox.pending_count() == 2

    def test_settling_an_unknown_event_writes_nothing(self, stores: Stores) -> None:
        ev = event("ghost")
        from stores.ports import EventRecord

        now = datetime.now(UTC)
        record = EventRecord(ev, EventStatus.PROCESSING, now, now)
        out = deliveries_for(OUTBOUND, record, Change(OutboundType.DOCUMENT_INDEXED, "indexed"))
        with pytest.raises(KeyError):
            stores.state.set_event_status("acme", "ghost", EventStatus.DONE, outbox=out)
        assert stores.outbox.get_delivery(out[0].delivery_id) is None

    def test_claim_is_exclusive_and_attempts_are_recorded(self, stores: Stores) -> None:
        (did,) = settle(stores, "e1", OutboundType.DOCUMENT_INDEXED)
        now = datetime.now(UTC) + timedelta(seconds=1)
        assert [d.delivery_id for d in stores.outbox.due_deliveries(now)] == [did]
        assert stores.outbox.claim(did, now, 30) is not None
        assert stores.outbox.claim(did, now, 30) is None  # leased
        assert stores.outbox.due_deliveries(now) == []
        later = now + timedelta(seconds=5)
        retry = stores.outbox.record_attempt(
            did, DeliveryAttempt(DeliveryStatus.PENDING, later, 503, "busy", "HTTP 503")
        )
        assert retry.attempts == 1 and retry.last_status == 503 and retry.last_response == "busy"
        assert stores.outbox.claim(did, now, 30) is None  # not due yet
        assert stores.outbox.claim(did, later, 30) is not None
        done = stores.outbox.record_attempt(did, DeliveryAttempt(DeliveryStatus.DELIVERED, later, 200, "ok"))
        assert done.status is DeliveryStatus.DELIVERED and done.attempts == 2 and done.delivered_at is not None
        assert done.last_error is None
        assert stores.outbox.due_deliveries(later + timedelta(hours=1)) == []
        assert stores.outbox.pending_count() == 0
        assert stores.outbox.claim(did, later + timedelta(hours=1), 30) is None  # delivered: never again
        with pytest.raises(KeyError):
            stores.outbox.record_attempt("nope", DeliveryAttempt(DeliveryStatus.DELIVERED, later))

    def test_finished_deliveries_are_forgotten_after_the_retention(self, stores: Stores) -> None:
        (done,) = settle(stores, "e1", OutboundType.DOCUMENT_INDEXED)
        (waiting,) = settle(stores, "e2", OutboundType.DOCUMENT_INDEXED)
        now = datetime.now(UTC) + timedelta(seconds=1)
        assert stores.outbox.claim(done, now, 30) is not None
        stores.outbox.record_attempt(done, DeliveryAttempt(DeliveryStatus.DELIVERED, now, 200))
        if isinstance(stores.outbox, SqliteOutboxStore):
            assert stores.outbox.purge(datetime.now(UTC) - timedelta(days=1)) == 0
            assert stores.outbox.purge(datetime.now(UTC) + timedelta(seconds=5)) == 1  # pending stays
            assert stores.outbox.get_delivery(done) is None
        else:
            assert isinstance(stores.outbox, DynamoOutboxStore)
            item = stores.outbox.client.get_item(TableName=stores.outbox.table, Key={"delivery_id": {"S": done}})
            expires = int(item["Item"]["expires_at"]["N"])
            assert abs(expires - (datetime.now(UTC) + timedelta(days=7)).timestamp()) < 60
            pending = stores.outbox.client.get_item(TableName=stores.outbox.table, Key={"delivery_id": {"S": waiting}})
            assert "expires_at" not in pending["Item"]
        assert stores.outbox.get_delivery(waiting) is not None

    def test_listing_is_per_workspace_newest_first_in_pages(self, stores: Stores) -> None:
        for i in range(5):
            settle(stores, f"e{i}", OutboundType.DOCUMENT_FAILED)  # two deliveries each
        settle(stores, "b1", OutboundType.DOCUMENT_INDEXED, workspace="beta")
        seen, cursor, totals = [], None, []
        while True:
            page = stores.outbox.list_deliveries("acme", cursor=cursor, limit=3)
            seen.extend(page.items)
            totals.append(page.total)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == 10 and len({d.delivery_id for d in seen}) == 10 and set(totals) == {10}
        assert [d.created_at for d in seen] == sorted((d.created_at for d in seen), reverse=True)
        assert {d.workspace for d in seen} == {"acme"}
        assert stores.outbox.list_deliveries("beta").total == 1
        assert stores.outbox.list_deliveries("acme", status=DeliveryStatus.DELIVERED).total == 0
        assert stores.outbox.delivery_counts("acme") == {"pending": 10, "delivered": 0, "failed": 0}


class TestListingsContract:
    def test_events_newest_first_in_pages_with_totals(self, stores: Stores) -> None:
        for i in range(7):
            stores.state.add_event(event(f"e{i}", file_id=f"f{i % 2}"), EventStatus.QUEUED)
        stores.state.add_event(event("other", workspace="beta"), EventStatus.QUEUED)
        stores.state.set_event_status("acme", "e3", EventStatus.FAILED, error="boom")
        seen, cursor = [], None
        while True:
            page = stores.state.page_events("acme", cursor=cursor, limit=3)
            assert page.total == 7
            seen.extend(r.event_id for r in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [f"e{i}" for i in range(6, -1, -1)]
        failed = stores.state.page_events("acme", status=EventStatus.FAILED)
        assert [r.event_id for r in failed.items] == ["e3"] and failed.total == 1
        f1 = stores.state.page_events("acme", file_id="f1", limit=2)
        assert f1.total == 3 and [r.event_id for r in f1.items] == ["e5", "e3"] and f1.next_cursor
        assert stores.state.page_events("acme", since=datetime.now(UTC) + timedelta(minutes=1)).total == 0
        assert stores.state.page_events("beta").total == 1
        with pytest.raises(InvalidCursorError):
            stores.state.page_events("acme", cursor="bogus")

    def test_event_ids_and_cursors_are_per_workspace(self, stores: Stores) -> None:
        """The same webhook id in two workspaces is two events, listed, settled and told about apart; a
        cursor pages only the workspace's listing it came from."""
        for workspace in ("acme", "beta"):
            for i in range(3):
                stores.state.add_event(event(f"e{i}", workspace=workspace), EventStatus.QUEUED)
        stores.state.set_event_status("beta", "e1", EventStatus.FAILED, error="beta's failure")
        acme = stores.state.page_events("acme", limit=2)
        assert acme.total == 3 and {r.event.workspace for r in acme.items} == {"acme"}
        assert stores.state.page_events("acme", status=EventStatus.FAILED).total == 0
        (failed,) = stores.state.page_events("beta", status=EventStatus.FAILED).items
        assert failed.event_id == "e1" and failed.error == "beta's failure"
        assert acme.next_cursor is not None
        rest = stores.state.page_events("acme", cursor=acme.next_cursor, limit=2)
        assert [r.event_id for r in [*acme.items, *rest.items]] == ["e2", "e1", "e0"]
        with pytest.raises(InvalidCursorError, match="another workspace"):
            stores.state.page_events("beta", cursor=acme.next_cursor)
        for i in range(3):
            stores.state.switch_document(
                DocumentRecord("acme", f"f{i}", f"{i}.md", DocumentStatus.INDEXED, "v:1", "v:1", 1)
            )
        docs = stores.state.page_documents("acme", limit=1)
        assert docs.next_cursor is not None
        with pytest.raises(InvalidCursorError, match="another workspace"):
            stores.state.page_documents("beta", cursor=docs.next_cursor)
        # Deliveries of the two workspaces' "e9" are distinct rows with distinct webhook ids.
        (a,) = settle(stores, "e9", OutboundType.DOCUMENT_INDEXED)
        (b,) = settle(stores, "e9", OutboundType.DOCUMENT_INDEXED, workspace="beta")
        da, db = stores.outbox.get_delivery(a), stores.outbox.get_delivery(b)
        assert da is not None and db is not None and da.message_id != db.message_id
        assert (da.workspace, db.workspace) == ("acme", "beta")
        for i in range(3):
            settle(stores, f"d{i}", OutboundType.DOCUMENT_INDEXED)
        deliveries = stores.outbox.list_deliveries("acme", limit=1)
        assert deliveries.next_cursor is not None
        with pytest.raises(InvalidCursorError, match="another workspace"):
            stores.outbox.list_deliveries("beta", cursor=deliveries.next_cursor)
        for forged in ('["events","acme",{"a":1},"e1"]', '["events","acme","NaN","e1"]'):
            bad = base64.urlsafe_b64encode(forged.encode()).decode().rstrip("=")
            with pytest.raises(InvalidCursorError):
                stores.state.page_events("acme", cursor=bad)

    def test_documents_by_path_in_pages_with_filters(self, stores: Stores) -> None:
        for i, path in enumerate(["b/2.md", "a/1.md", "b/1.md", "c%_/x.md", "a/0.md"]):
            stores.state.switch_document(
                DocumentRecord("acme", f"f{i}", path, DocumentStatus.INDEXED, "v:1", "v:1", 1, chunk_count=i)
            )
        stores.state.note_document_error("acme", "f5", "b/3.md", "boom", event_id="e9")
        seen, cursor = [], None
        while True:
            page = stores.state.page_documents("acme", cursor=cursor, limit=2)
            assert page.total == 6
            seen.extend(d.path for d in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == ["a/0.md", "a/1.md", "b/1.md", "b/2.md", "b/3.md", "c%_/x.md"]
        b = stores.state.page_documents("acme", path_prefix="b/")
        assert [d.path for d in b.items] == ["b/1.md", "b/2.md", "b/3.md"] and b.total == 3
        assert stores.state.page_documents("acme", path_prefix="c%_").total == 1  # no LIKE wildcards
        failed = stores.state.page_documents("acme", status=DocumentStatus.FAILED)
        assert [(d.file_id, d.last_event_id) for d in failed.items] == [("f5", "e9")]
        assert stores.state.page_documents("beta").total == 0

    def test_stats_and_oldest_unsettled(self, stores: Stores) -> None:
        assert stores.state.oldest_unsettled() is None
        stores.state.switch_document(
            DocumentRecord(
                "acme", "f1", "a.md", DocumentStatus.INDEXED, "v:1", "v:1", 1, chunk_count=4, embedded=1, reused=3
            )
        )
        stores.state.switch_document(DocumentRecord("acme", "f2", "b.md", DocumentStatus.DELETED, "v:2", None, 2))
        stores.state.add_event(event("q1"), EventStatus.QUEUED)
        stores.state.add_event(event("d1"), EventStatus.QUEUED)
        stores.state.set_event_status("acme", "d1", EventStatus.DONE)
        stores.state.add_event(event("h1"), EventStatus.QUEUED)
        stores.state.set_event_status("acme", "h1", EventStatus.HELD)
        stores.state.add_event(event("b1", workspace="beta"), EventStatus.QUEUED)
        s = stores.state.workspace_stats("acme", datetime.now(UTC))
        assert s.documents["indexed"] == 1 and s.documents["deleted"] == 1 and s.documents["failed"] == 0
        assert (s.chunks, s.embedded, s.reused) == (4, 1, 3)
        assert s.events_last_hour["queued"] == 1 and s.events_last_hour["done"] == 1
        assert s.events_last_hour["held"] == 1 and s.events_last_day == s.events_last_hour
        assert s.unsettled == 1 and s.held == 1 and s.oldest_unsettled_at is not None
        oldest = stores.state.oldest_unsettled()
        assert oldest is not None and oldest <= datetime.now(UTC)
        later = stores.state.workspace_stats("acme", datetime.now(UTC) + timedelta(days=2))
        assert sum(later.events_last_day.values()) == 0 and later.unsettled == 1


class TestSubscriptionsContract:
    def test_add_list_get_delete_per_workspace(self, stores: Stores) -> None:
        sub = stores.subscriptions
        assert isinstance(sub, SubscriptionStore)
        now = datetime.now(UTC)
        a = StoredSubscription("acme", "a", "https://a.example/h", frozenset({OutboundType.EVENT_HELD}), "whsec_a", now)
        b = StoredSubscription("acme", "b", "https://b.example/h", frozenset(), "whsec_b", now + timedelta(seconds=1))
        assert sub.add_subscription(a, limit=20) is Added.ADDED
        assert sub.add_subscription(b, limit=20) is Added.ADDED
        assert sub.add_subscription(a, limit=20) is Added.EXISTS  # the id is taken
        beta = StoredSubscription("beta", "a", "https://c.example/h", frozenset(), "whsec_c", now)
        assert sub.add_subscription(beta, limit=20) is Added.ADDED
        assert [s.id for s in sub.list_subscriptions("acme")] == ["a", "b"]
        got = sub.get_subscription("acme", "a")
        assert got is not None and got.events == frozenset({OutboundType.EVENT_HELD}) and got.secret == "whsec_a"
        assert sub.get_subscription("beta", "b") is None
        assert sub.delete_subscription("acme", "a") and not sub.delete_subscription("acme", "a")
        assert [s.id for s in sub.list_subscriptions("acme")] == ["b"]
        assert [s.url for s in sub.list_subscriptions("beta")] == ["https://c.example/h"]

    def test_the_limit_counts_the_workspace_and_a_delete_frees_a_place(self, stores: Stores) -> None:
        sub, now = stores.subscriptions, datetime.now(UTC)

        def one(ws: str, i: int) -> StoredSubscription:
            return StoredSubscription(ws, f"s{i}", f"https://h{i}.example/h", frozenset(), f"whsec_{i}", now)

        assert [sub.add_subscription(one("acme", i), limit=3) for i in range(4)] == [Added.ADDED] * 3 + [Added.FULL]
        assert sub.add_subscription(one("acme", 0), limit=3) is Added.EXISTS  # a taken id says so, full or not
        assert sub.add_subscription(one("beta", 9), limit=3) is Added.ADDED  # another workspace has its own places
        assert sub.add_subscription(one("acme", 5), limit=0) is Added.FULL
        assert sub.delete_subscription("acme", "s1")
        assert not sub.delete_subscription("acme", "s1")  # a second delete frees nothing
        assert sub.add_subscription(one("acme", 6), limit=3) is Added.ADDED
        assert sub.add_subscription(one("acme", 7), limit=3) is Added.FULL
        assert sorted(s.id for s in sub.list_subscriptions("acme")) == ["s0", "s2", "s6"]

    def test_adds_racing_each_other_never_pass_the_limit(self, stores: Stores) -> None:
        sub, now = stores.subscriptions, datetime.now(UTC)
        barrier = threading.Barrier(8)
        if isinstance(sub, DynamoSubscriptionStore):  # each answer takes a round trip, as it would from AWS
            sub.client.meta.events.register("after-call.dynamodb", lambda **_: time.sleep(0.005))
        assert sub.list_subscriptions("acme") == []  # the client's first call (loading its models) is not raced

        def add(i: int) -> Added:
            if i < 8:  # the first eight start together
                barrier.wait(timeout=30)
            s = StoredSubscription("acme", f"r{i}", f"https://r{i}.example/h", frozenset(), f"whsec_{i}", now)
            return sub.add_subscription(s, limit=5)

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(add, range(16)))
        assert results.count(Added.ADDED) == 5 and results.count(Added.FULL) == 11
        assert len(sub.list_subscriptions("acme")) == 5


def test_a_dynamodb_listing_reads_keys_then_only_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Event items hold their payload (a whole file, inline): a listing reads the matching events' keys,
    never their payloads, then the page's items by key."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        state = DynamoStateStore(
            session.client("dynamodb"),
            events_table=stack.events_table,
            documents_table=stack.documents_table,
            outbox_table=stack.outbox_table,
        )
        _listing_requests(state)


def _listing_requests(state: DynamoStateStore) -> None:
    for i in range(7):
        state.add_event(event(f"e{i}", file_id=f"f{i % 2}"), EventStatus.QUEUED)
    calls: list[tuple[str, dict[str, Any]]] = []
    client = state.client

    def record(params: dict[str, Any], event_name: str, **_: Any) -> None:
        calls.append((event_name.rsplit(".", 1)[-1], params))

    client.meta.events.register("provide-client-params.dynamodb.*", record)
    try:
        for status in (None, EventStatus.QUEUED):
            calls.clear()
            page = state.page_events("acme", status=status, limit=3)
            assert [r.event_id for r in page.items] == ["e6", "e5", "e4"] and page.total == 7
            assert page.items[0].event.content == "text"  # the page's own items are whole
            queries = [p for name, p in calls if name == "Query"]
            assert queries
            for q in queries:  # what each query reads, the placeholders resolved
                read = {
                    q["ExpressionAttributeNames"].get(a.strip(), a.strip())
                    for a in q["ProjectionExpression"].split(",")
                }
                assert read == {"workspace", "event_id", "received_at"}, q
            gets = [p for name, p in calls if name == "BatchGetItem"]
            assert sum(len(spec["Keys"]) for p in gets for spec in p["RequestItems"].values()) == 3
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb.*", record)


def test_a_dynamodb_table_from_before_the_count_is_counted_on_its_first_add(monkeypatch: pytest.MonkeyPatch) -> None:
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        client = session.client("dynamodb")
        for i in range(3):  # subscribers written the old way: no count item beside them
            client.put_item(
                TableName=stack.subscriptions_table,
                Item={
                    "workspace": {"S": "acme"},
                    "id": {"S": f"old{i}"},
                    "url": {"S": f"https://o{i}.example/h"},
                    "events": {"S": "[]"},
                    "secret": {"S": f"whsec_{i}"},
                    "created_at": {"N": "1700000000"},
                },
            )
        sub = DynamoSubscriptionStore(client, table=stack.subscriptions_table)
        now = datetime.now(UTC)
        new = [StoredSubscription("acme", f"new{i}", "https://n.example/h", frozenset(), "whsec", now) for i in (0, 1)]
        assert [sub.add_subscription(s, limit=4) for s in new] == [Added.ADDED, Added.FULL]
        assert sub.delete_subscription("acme", "old0")
        assert sub.add_subscription(new[1], limit=4) is Added.ADDED
        assert len(sub.list_subscriptions("acme")) == 4  # the count item is not a subscriber
        assert sub.get_subscription("acme", "#count") is None and not sub.delete_subscription("acme", "#count")
