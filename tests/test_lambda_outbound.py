"""Outbound webhooks as deployed on AWS (moto, from serverless.yml): the ingest function writes the outbox in
the transaction that settles an event and hands the delivery to the outbound queue; the outbound function
delivers it to a receiver on loopback (verified with `standardwebhooks`); the scheduled sweep delivers what
a lost hand-off left behind, and a failed attempt comes back through the queue with its backoff delay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from app import handlers
from app.container import Container, build_container
from tests.conftest import base_settings
from tests.fakes.aws import Stack, create_stack, mocked_aws
from tests.fakes.embedder import HashEmbedder
from tests.fakes.receiver import Receiver, receiver
from tests.fakes.webhooks import file_event
from tests.test_lambda_api import LambdaContext
from tests.test_lambda_ingest import Deployment, EventSource
from tests.test_outbound_webhooks import DOC, subscribed, verified

SCHEDULED = {"version": "0", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}


@dataclass
class Outbound:
    deployment: Deployment
    receiver: Receiver
    sqs: Any
    stack: Stack

    def ingest_one(self, body: dict[str, Any]) -> None:
        self.deployment.post_webhook(body)
        assert self.deployment.source.invoke(self.deployment.source.batch()) == set()

    def outbound_batch(self, within: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.stack.outbound_queue_url, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if messages or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for m in messages:  # the event source mapping deletes what the handler did not report
            self.sqs.delete_message(QueueUrl=self.stack.outbound_queue_url, ReceiptHandle=m["ReceiptHandle"])
        return {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]}

    def deliveries(self) -> list[dict[str, Any]]:
        code, body = self.deployment.api("GET", "/webhook-deliveries")
        assert code == 200, body
        out: list[dict[str, Any]] = body["deliveries"]
        return out


@pytest.fixture(params=[0, 1], ids=["healthy", "fails-once"])
def outbound(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbound]:
    with receiver(fail_first=request.param) as r, mocked_aws(monkeypatch) as session:
        stack = create_stack(session, params={"maxAttempts": 2})
        clients = {"dynamodb": session.client("dynamodb"), "sqs": session.client("sqs"), "s3": session.client("s3")}
        settings = base_settings(
            tmp_path / "data",
            **stack.settings(),
            **subscribed(r.url),
            worker={"max_attempts": 2, "backoff_seconds": 0.0, "mass_delete_share": 1.0},
        )
        container: Container = build_container(
            settings, embedder=HashEmbedder(), qdrant_client=QdrantClient(location=":memory:"), aws=clients
        )
        handlers.set_container(container)
        try:
            d = Deployment(container, stack, EventSource(clients["sqs"], stack), clients["s3"], clients["dynamodb"])
            yield Outbound(d, r, clients["sqs"], stack)
        finally:
            handlers.set_container(None)
            container.close()


def test_settled_events_are_delivered_through_the_outbound_queue(outbound: Outbound) -> None:
    o = outbound
    o.ingest_one(file_event("created", "leave", path="hr/leave.md", content=DOC, version=2))
    batch = o.outbound_batch()
    (record,) = batch["Records"]
    (pending,) = o.deliveries()
    assert json.loads(record["body"]) == {"delivery_id": pending["delivery_id"]}
    assert handlers.outbound_handler(batch, LambdaContext())["batchItemFailures"] == []
    if o.receiver.fail_first:
        # The failed attempt is back on the queue with its (short) backoff delay.
        assert o.deliveries()[0]["status"] == "pending" and o.deliveries()[0]["last_status"] == 503
        handlers.outbound_handler(o.outbound_batch(), LambdaContext())
    (d,) = o.deliveries()
    assert d["status"] == "delivered" and d["attempts"] == 1 + o.receiver.fail_first
    payload = verified(o.receiver.received[-1])
    assert payload["type"] == "document.indexed" and payload["data"]["version"] == 2


def test_the_sweep_delivers_when_the_hand_off_was_lost(outbound: Outbound) -> None:
    o = outbound
    o.ingest_one(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
    o.outbound_batch()  # the hand-off message, lost (dropped unprocessed)
    assert o.receiver.received == []
    deadline = time.monotonic() + 20
    while o.deliveries()[0]["status"] != "delivered":  # a failed attempt is due again after its backoff
        assert time.monotonic() < deadline
        handlers.outbound_handler(SCHEDULED, LambdaContext())
    (d,) = o.deliveries()
    assert d["attempts"] == 1 + o.receiver.fail_first
    assert verified(o.receiver.received[-1])["data"]["file_id"] == "leave"


def test_a_subscriber_created_through_the_api_function_is_told_too(outbound: Outbound) -> None:
    """POST /webhook-subscriptions on the API function writes the subscriptions table; the ingest function
    routes to it, and the outbound function signs with its generated secret."""
    o = outbound
    code, created = o.deployment.api("POST", "/webhook-subscriptions", {"url": o.receiver.url + "/api", "id": "api"})
    assert code == 201, created
    o.ingest_one(file_event("created", "leave", path="hr/leave.md", content=DOC, version=1))
    deadline = time.monotonic() + 20
    while {d["status"] for d in o.deliveries()} != {"delivered"}:
        assert time.monotonic() < deadline
        handlers.outbound_handler(SCHEDULED, LambdaContext())
    assert {d["subscriber"] for d in o.deliveries()} == {"downstream", "api"}
    from standardwebhooks.webhooks import Webhook

    last = next(x for x in reversed(o.receiver.received) if x.path == "/hooks/api")
    assert Webhook(created["secret"]).verify(last.body, last.headers)["data"]["file_id"] == "leave"
