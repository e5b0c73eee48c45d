"""Managing outbound webhook subscribers through the API: created with a generated secret (shown once), listed
without it, kept to the caller's workspace, refused when the SSRF rules refuse the URL, deleted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.conftest import KEY_ACME, KEY_BETA, Harness
from tests.fakes.receiver import receiver
from tests.fakes.webhooks import file_event
from tests.test_outbound_webhooks import DOC, SUBSCRIBER_SECRET, deliver_until, subscribed


def post(h: Harness, body: dict[str, Any], key: str = KEY_ACME) -> Any:
    return h.client.post("/webhook-subscriptions", json=body, headers={"X-API-Key": key})


def test_a_subscriber_created_through_the_api_receives_signed_deliveries(make_harness: Callable[..., Harness]) -> None:
    with receiver() as r:
        h = make_harness(outbound={"allow_private": True, "backoff_seconds": 0.01})
        resp = post(h, {"url": r.url, "events": ["document.indexed"], "id": "agent"})
        assert resp.status_code == 201, resp.text
        created = resp.json()
        assert created["id"] == "agent" and created["source"] == "api" and created["secret"].startswith("whsec_")
        listed = h.get("/webhook-subscriptions").json()
        assert listed["count"] == 1 and "secret" not in listed["subscriptions"][0]
        assert h.get("/webhook-subscriptions", key=KEY_BETA).json()["count"] == 0

        h.post_event(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 1)
        payload = Webhook(created["secret"]).verify(r.received[0].body, r.received[0].headers)
        assert payload["type"] == "document.indexed" and payload["data"]["file_id"] == "leave"

        # Another workspace cannot delete it; its owner can, and then nothing more is sent.
        assert h.client.delete("/webhook-subscriptions/agent", headers={"X-API-Key": KEY_BETA}).status_code == 404
        assert h.client.delete("/webhook-subscriptions/agent", headers={"X-API-Key": KEY_ACME}).status_code == 204
        assert h.client.delete("/webhook-subscriptions/agent", headers={"X-API-Key": KEY_ACME}).status_code == 404
        h.post_event(file_event("updated", "leave", path="hr/leave.md", content=DOC + " More.", version=2))
        h.drain()
        assert h.get("/webhook-deliveries").json()["total"] == 1


def test_urls_the_ssrf_rules_refuse_are_refused_at_creation(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    for url, why in [
        ("http://127.0.0.1:9/hooks", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("ftp://example.com/x", "only http and https"),
    ]:
        resp = post(h, {"url": url})
        assert resp.status_code == 422 and why in resp.json()["detail"], resp.text
    assert post(h, {"url": "https://example.com/x", "events": ["file.created"]}).status_code == 422
    assert h.get("/webhook-subscriptions").json()["count"] == 0


def test_ids_are_unique_and_settings_subscribers_are_read_only(make_harness: Callable[..., Harness]) -> None:
    with receiver() as r:
        h = make_harness(**subscribed(r.url))  # "downstream", from settings
        assert post(h, {"url": r.url, "id": "downstream"}).status_code == 409
        assert post(h, {"url": r.url + "/2", "id": "second"}).status_code == 201
        assert post(h, {"url": r.url + "/3", "id": "second"}).status_code == 409
        listed = {s["id"]: s["source"] for s in h.get("/webhook-subscriptions").json()["subscriptions"]}
        assert listed == {"downstream": "settings", "second": "api"}
        assert h.client.delete("/webhook-subscriptions/downstream", headers={"X-API-Key": KEY_ACME}).status_code == 409
        # Both are told, each with its own secret.
        h.post_event(file_event("created", "leave", content=DOC, version=1))
        h.drain()
        deliver_until(h, lambda: len(r.received) >= 2)
        paths = {x.path for x in r.received}
        assert paths == {"/hooks", "/hooks/2"}
        settings_one = next(x for x in r.received if x.path == "/hooks")
        Webhook(SUBSCRIBER_SECRET).verify(settings_one.body, settings_one.headers)
