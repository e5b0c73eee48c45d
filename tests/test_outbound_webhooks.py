"""Outbound webhooks end to end: events through HTTP, the worker writes the outbox, the relay delivers to a
receiver on loopback, and the receiver verifies every delivery with the official `standardwebhooks` library."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from app.container import build_container
from app.main import create_app
from stores.embedding import SentenceTransformerEmbedder
from tests.conftest import KEY_BETA, SECRET_ACME, Harness, base_settings
from tests.fakes.receiver import Received, receiver
from tests.fakes.webhooks import file_event, sign

SUBSCRIBER_SECRET = "whsec_" + base64.b64encode(b"subscriber-secret-0123456789abcd").decode()
# Events without inline content are read from here; the folders do not exist, so they fail for good (file not
# found). One folder per workspace, as two workspaces are configured.
SOURCE_ROOT = str(Path(__file__).resolve().parent / "events" / "{workspace}")
DOC = "# Leave policy\n\nEmployees get 25 days of annual leave per year. Unused days carry over until March."


def subscribed(url: str, **outbound: Any) -> dict[str, Any]:
    return {
        "source_root": SOURCE_ROOT,
        "outbound_webhooks": {"acme": [{"url": url, "secret": SUBSCRIBER_SECRET, "id": "downstream"}]},
        # The receiver is on loopback, which the SSRF rules refuse unless allowed.
        "outbound": {"allow_private": True, "backoff_seconds": 0.01, "backoff_max_seconds": 0.05, **outbound},
    }


def verified(r: Received) -> dict[str, Any]:
    """The payload, after the reference library accepted the signature (it raises otherwise)."""
    payload: dict[str, Any] = Webhook(SUBSCRIBER_SECRET).verify(r.body, r.headers)
    return payload


def deliver_until(h: Harness, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run the relay until `done()` (retries are due after their short test backoff); poll with a deadline."""
    relay = h.container.relay
    assert relay is not None
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries did not settle in time"
        relay.deliver_due()
        time.sleep(0.01)


def deliveries(h: Harness, **params: Any) -> dict[str, Any]:
    resp = h.get(f"/webhook-deliveries?{urlencode(params)}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_indexed_deleted_and_failed_documents_are_delivered_signed(make_harness: Callable[..., Harness]) -> None:
    with receiver() as r:
        h = make_harness(**subscribed(r.url))
        assert (
            h.post_event(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1)).status_code == 202
        )
        # A file that cannot be read: no content and no source root -> failed for good.
        assert h.post_event(file_event("created", "gone", path="hr/gone.md", version=1)).status_code == 202
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 2)
        h.post_event(file_event("deleted", "leave", path="hr/leave.md", version=2))
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 3)

        payloads = [verified(x) for x in r.received]
        by_type = {p["type"]: p for p in payloads}
        assert set(by_type) == {"document.indexed", "document.failed", "document.deleted"}
        indexed = by_type["document.indexed"]["data"]
        assert indexed["workspace"] == "acme" and indexed["file_id"] == "leave" and indexed["path"] == "hr/leave.md"
        assert indexed["version"] == 1 and indexed["chunk_count"] >= 1
        assert indexed["embedded"] + indexed["reused"] == indexed["chunk_count"]
        assert indexed["error"] is None
        failed = by_type["document.failed"]["data"]
        assert failed["file_id"] == "gone" and failed["error"]
        assert by_type["document.deleted"]["data"]["version"] == 2
        # webhook-id is the message id the body's event got; each type of each event its own.
        assert len({x.headers["webhook-id"] for x in r.received}) == 3

        listed = deliveries(h)
        assert listed["total"] == 3 and {d["status"] for d in listed["deliveries"]} == {"delivered"}
        assert {d["last_status"] for d in listed["deliveries"]} == {204}
        assert all(d["attempts"] == 1 and d["subscriber"] == "downstream" for d in listed["deliveries"])
        # Another workspace sees none of them.
        assert h.client.get("/webhook-deliveries", headers={"X-API-Key": KEY_BETA}).json()["total"] == 0


def test_deliveries_carry_the_position_of_the_order_rule(make_harness: Callable[..., Harness]) -> None:
    """What a subscriber is told follows the index's order rule: an event that loses (an earlier timestamp,
    however high its version) is told to nobody, and the positions of what is told sort as the changes."""
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with receiver() as r:
        h = make_harness(**subscribed(r.url))
        h.post_event(file_event("updated", "leave", path="hr/leave.md", content=DOC, version=5, timestamp=t))
        h.drain()
        late_but_old = file_event(
            "updated", "leave", path="hr/leave.md", content=DOC + " Old.", version=9, timestamp=t - timedelta(hours=1)
        )
        h.post_event(late_but_old, event_id="old-v9")
        h.drain()
        assert h.get("/events/old-v9").json()["status"] == "superseded"
        h.post_event(
            file_event("updated", "leave", path="hr/leave.md", content=DOC + " New.", timestamp=t + timedelta(1))
        )
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 2)
        # Deliveries may arrive in any order (README "Ordered by position"): a subscriber sorts by position,
        # and that order is the order of the changes.
        told = sorted((verified(x)["data"] for x in r.received), key=lambda d: d["position"])
        assert [d["version"] for d in told] == [5, None]  # nothing about the superseded version 9
        assert [d["changed_at"] for d in told] == ["2026-03-01T12:00:00Z", "2026-03-02T12:00:00Z"]
        assert told[1]["position"] == h.get("/documents/leave").json()["position"]
        assert deliveries(h)["total"] == 2


def test_an_unchanged_resend_is_told_as_indexed_at_its_version(make_harness: Callable[..., Harness]) -> None:
    """A re-send of the same content keeps the active revision (nothing embedded or re-written), but the
    document now stands at the new version: subscribers hear so, like of any indexing."""
    with receiver() as r:
        h = make_harness(**subscribed(r.url))
        h.post_event(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
        h.drain()
        h.post_event(file_event("updated", "leave", path="hr/leave.md", content=DOC, version=2), event_id="same-v2")
        h.drain()
        assert h.get("/events/same-v2").json()["detail"].startswith("unchanged content")
        deliver_until(h, lambda: len(r.received) >= 2)
        # Arrival order is not promised (README "Ordered by position"): sorted as a subscriber sorts them.
        told = sorted((verified(x) for x in r.received), key=lambda p: p["data"]["position"])
        assert [p["type"] for p in told] == ["document.indexed", "document.indexed"]
        first, kept = told[0]["data"], told[1]["data"]
        assert (kept["version"], kept["event_id"], kept["status"]) == (2, "same-v2", "indexed")
        assert kept["chunk_count"] == first["chunk_count"] == kept["reused"] and kept["embedded"] == 0


def test_a_receiver_that_fails_twice_gets_the_same_message_a_third_time(make_harness: Callable[..., Harness]) -> None:
    with receiver(fail_first=2) as r:
        h = make_harness(**subscribed(r.url))
        h.post_event(file_event("created", "leave", path="hr/leave.md", content=DOC, version=3))
        h.drain()
        deliver_until(h, lambda: deliveries(h)["deliveries"][0]["status"] == "delivered")

        assert [x.answered for x in r.received] == [503, 503, 204]
        payloads = [verified(x) for x in r.received]  # each attempt freshly signed, each verifies
        assert len({json.dumps(p, sort_keys=True) for p in payloads}) == 1  # the same message
        assert len({x.headers["webhook-id"] for x in r.received}) == 1  # receivers can deduplicate on it
        (d,) = deliveries(h)["deliveries"]
        assert d["attempts"] == 3 and d["last_status"] == 204 and d["delivered_at"] is not None


def test_a_delivery_that_keeps_failing_is_marked_failed_with_the_last_answer(
    make_harness: Callable[..., Harness],
) -> None:
    with receiver(fail_first=1000) as r:
        h = make_harness(**subscribed(r.url, max_attempts=3))
        h.post_event(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
        h.drain()
        deliver_until(h, lambda: deliveries(h)["deliveries"][0]["status"] == "failed")
        assert len(r.received) == 3
        (d,) = deliveries(h, status="failed")["deliveries"]
        assert d["attempts"] == 3 and d["last_status"] == 503
        assert d["last_response"] == "try again later" and d["last_error"] == "HTTP 503"
        assert deliveries(h, status="delivered")["total"] == 0


def test_only_the_types_a_subscriber_asked_for(make_harness: Callable[..., Harness]) -> None:
    with receiver() as r:
        settings = subscribed(r.url)
        settings["outbound_webhooks"]["acme"][0]["events"] = ["document.failed"]
        h = make_harness(**settings)
        h.post_event(file_event("created", "leave", content=DOC, version=1))
        h.post_event(file_event("created", "gone", version=1))
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 1)
        assert [verified(x)["type"] for x in r.received] == ["document.failed"]
        assert deliveries(h)["total"] == 1


def test_a_crash_between_settling_and_sending_still_delivers(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, make_harness: Callable[..., Harness]
) -> None:
    """The outbox row is committed with the event's status; a process that dies before its relay runs leaves
    it pending, and the next process's relay delivers it."""
    data = tmp_path / "data"
    with receiver() as r:
        first = build_container(base_settings(data, **subscribed(r.url)), embedder=embedder)
        with TestClient(create_app(first, start_worker=False)) as client:
            raw, headers = sign(SECRET_ACME, file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
            assert client.post("/webhooks", content=raw, headers=headers).status_code == 202
            assert first.loop is not None and first.loop.drain() == 1
            assert first.state.page_events("acme").items[0].status.value == "done"
        first.close()  # the "crash": settled and written to the outbox, never sent
        assert r.received == []

        second = make_harness(data_dir=data, **subscribed(r.url))
        loop = second.container.relay_loop
        assert loop is not None
        loop.start()  # what `eventrag serve` starts on boot
        (got,) = r.wait_for(1)
        loop.stop()
        assert verified(got)["data"]["file_id"] == "leave"
        assert deliveries(second)["deliveries"][0]["status"] == "delivered"


def test_subscriber_urls_on_the_servers_own_network_are_refused(make_harness: Callable[..., Harness]) -> None:
    """Without allow-private, a subscriber on loopback is never called: the attempt is refused after DNS
    resolution and recorded with the reason."""
    with receiver() as r:
        local = r.url.replace("127.0.0.1", "localhost")  # a name that resolves to loopback
        h = make_harness(**subscribed(local, allow_private=False, max_attempts=2))
        h.post_event(file_event("created", "leave", content=DOC, version=1))
        h.drain()
        deliver_until(h, lambda: deliveries(h)["deliveries"][0]["status"] == "failed")
        (d,) = deliveries(h)["deliveries"]
        assert "loopback" in d["last_error"] and d["last_status"] is None
        assert r.received == []


def test_the_relay_connects_to_the_address_it_checked(make_harness: Callable[..., Harness]) -> None:
    """DNS is resolved once, checked, and that address is the one connected to, with the host's name in the
    Host header: a second lookup (DNS rebinding) never happens."""
    with receiver() as r:
        port = r.url.split(":")[2].split("/")[0]
        h = make_harness(**subscribed(f"http://hooks.example.test:{port}/hooks"))
        relay = h.container.relay
        assert relay is not None
        lookups: list[str] = []

        def resolver(host: str, port: int) -> list[str]:
            lookups.append(host)
            return ["127.0.0.1"]

        relay.resolver = resolver
        h.post_event(file_event("created", "leave", content=DOC, version=1))
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 1)
        assert lookups == ["hooks.example.test"]
        assert r.received[0].headers["host"] == f"hooks.example.test:{port}"
        verified(r.received[0])


@pytest.mark.parametrize(
    "subscriber, message",
    [
        ({"url": "ftp://example.com/x", "secret": SUBSCRIBER_SECRET}, "https://"),
        ({"url": "https://example.com/x", "secret": "not-a-whsec"}, "whsec_"),
        ({"url": "https://example.com/x", "secret": SUBSCRIBER_SECRET, "events": ["file.created"]}, "unknown"),
        ({"url": "https://example.com/x", "secret": SUBSCRIBER_SECRET, "surprise": 1}, "surprise"),
    ],
)
def test_bad_subscriber_settings_are_refused_with_a_reason(subscriber: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match=message):
        Settings(outbound_webhooks=json.dumps({"acme": [subscriber]}))


def test_subscribers_are_bounded_and_unique() -> None:
    from pydantic import ValidationError

    from app.outbound.subscriptions import build_subscribers
    from app.settings import Settings

    many = [{"url": f"https://example.com/{i}", "secret": SUBSCRIBER_SECRET} for i in range(21)]
    with pytest.raises(ValidationError, match="at most 20"):
        Settings(outbound_webhooks=json.dumps({"acme": many}))
    twice = [{"url": "https://example.com/x", "secret": SUBSCRIBER_SECRET}] * 2
    with pytest.raises(ValueError, match="two subscribers"):
        build_subscribers(Settings(outbound_webhooks=json.dumps({"acme": twice})))
