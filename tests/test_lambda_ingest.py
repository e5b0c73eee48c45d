"""The Lambda functions as deployed: DynamoDB and SQS FIFO (moto, from serverless.yml), Qdrant in memory.

The webhook route stores and queues, and nothing else; `ingest_handler` gets SQS batches shaped like the
event source mapping's (tests/events/sqs_batch.json) and reports only the records to deliver again;
`s3_handler` maps S3 notifications (tests/events/s3_notification.json) onto the same queue. `EventSource`
below does what the event source mapping does with a batch: receive, invoke, delete what succeeded.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from app import cli, handlers
from app.container import Container, build_container
from retrieval.search import SearchRequest
from stores.ports import DocumentStatus, SearchFilter, SearchMode
from tests.conftest import KEY_ACME, SECRET_ACME, base_settings
from tests.fakes.aws import Stack, create_stack, mocked_aws
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event, sign
from tests.test_lambda_api import LambdaContext, http_event

EVENTS = Path(__file__).parent / "events"
BUCKET = "eventrag-test-src"
MAX_ATTEMPTS = 2  # serverless.yml's maxAttempts: the DLQ's maxReceiveCount and the worker's attempts


@dataclass
class EventSource:
    """The SQS event source mapping, one batch at a time."""

    sqs: Any
    stack: Stack

    def batch(self, within: float = 5.0) -> dict[str, Any]:
        """Receive up to 10 messages (waiting for some until `within`) as a Lambda SQS event."""
        template = json.loads((EVENTS / "sqs_batch.json").read_text())["Records"][0]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.stack.queue_url, AttributeNames=["QueueArn"])
        arn = attributes["Attributes"]["QueueArn"]
        deadline = time.monotonic() + within
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=self.stack.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
            ).get("Messages", [])
            if messages or time.monotonic() > deadline:
                break
        records = []
        for m in messages:
            record = copy.deepcopy(template)
            record.update(
                messageId=m["MessageId"],
                receiptHandle=m["ReceiptHandle"],
                body=m["Body"],
                md5OfBody=m["MD5OfBody"],
                eventSourceARN=arn,
                awsRegion="us-east-1",
            )
            record["attributes"] = {k: m["Attributes"][k] for k in template["attributes"] if k in m["Attributes"]}
            records.append(record)
        return {"Records": records}

    def invoke(self, batch: dict[str, Any]) -> set[str]:
        """Run the handler; delete the records it did not report, as the mapping does. Returns the reported."""
        out = handlers.ingest_handler(batch, LambdaContext())
        failed = {f["itemIdentifier"] for f in out["batchItemFailures"]}
        for record in batch["Records"]:
            if record["messageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.stack.queue_url, ReceiptHandle=record["receiptHandle"])
        return failed

    def count(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


@dataclass
class Deployment:
    container: Container
    stack: Stack
    source: EventSource
    s3: Any
    dynamodb: Any

    def post_webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        raw, headers = sign(SECRET_ACME, body)
        r = handlers.api_handler(http_event("apigw_http_v2.json", "POST", "/webhooks", raw, headers), LambdaContext())
        assert r["statusCode"] == 202, r["body"]
        out: dict[str, Any] = json.loads(r["body"])
        return out

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {"x-api-key": KEY_ACME, "content-type": "application/json"}
        r = handlers.api_handler(http_event("apigw_http_v2.json", method, path, raw, headers), LambdaContext())
        return r["statusCode"], json.loads(r["body"])

    def status(self, event_id: str) -> str:
        code, body = self.api("GET", f"/events/{event_id}")
        assert code == 200, body
        return str(body["status"])

    def searchable(self, file_id: str, query: str) -> set[int | None]:
        hits = self.container.searcher.search(
            SearchRequest("acme", query, top_k=20, mode=SearchMode.DENSE, flt=SearchFilter(file_ids=(file_id,)))
        )
        return {hit.version for hit in hits}


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session, params={"maxAttempts": MAX_ATTEMPTS})
        s3 = session.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        clients = {"dynamodb": session.client("dynamodb"), "sqs": session.client("sqs"), "s3": s3}
        settings = base_settings(
            tmp_path / "data",
            **stack.settings(),
            source_bucket=BUCKET,
            s3_workspace="acme",
            worker={"max_attempts": MAX_ATTEMPTS, "backoff_seconds": 0.0, "mass_delete_share": 1.0},
        )
        container = build_container(
            settings, embedder=HashEmbedder(), qdrant_client=QdrantClient(location=":memory:"), aws=clients
        )
        handlers.set_container(container)
        try:
            yield Deployment(container, stack, EventSource(clients["sqs"], stack), s3, clients["dynamodb"])
        finally:
            handlers.set_container(None)
            container.close()


def test_webhook_only_enqueues_and_the_queue_handler_indexes(deployment: Deployment) -> None:
    d = deployment
    text = "Annual leave is 25 days per calendar year; unused days expire in March."
    event_id = d.post_webhook(file_event("created", "leave", content=text, version=1))["event_id"]

    # The route stored and queued the event, and did nothing else.
    item = d.dynamodb.get_item(
        TableName=d.stack.events_table, Key={"workspace": {"S": "acme"}, "event_id": {"S": event_id}}
    )["Item"]
    assert (item["status"]["S"], item["group_key"]["S"]) == ("queued", "acme/leave")
    assert d.source.count(d.stack.queue_url) == 1
    assert d.container.index.revision_counts("acme") == {}

    batch = d.source.batch()
    (record,) = batch["Records"]
    assert json.loads(record["body"]) == {"workspace": "acme", "event_id": event_id}
    assert record["attributes"]["MessageGroupId"] == "acme/leave"
    assert d.source.invoke(batch) == set()

    assert d.status(event_id) == "done"
    assert d.searchable("leave", "how many days of annual leave") == {1}
    code, doc = d.api("GET", "/documents/leave")
    assert code == 200 and (doc["status"], doc["version"]) == ("indexed", 1)
    code, answer = d.api("POST", "/query", {"question": "How many days of annual leave per year?"})
    assert code == 200 and {c["file_id"] for c in answer["citations"]} == {"leave"}
    assert d.source.count(d.stack.queue_url) == 0


def test_two_events_of_one_file_in_one_batch_keep_the_newest(deployment: Deployment) -> None:
    d = deployment
    new = d.post_webhook(file_event("updated", "f", content="Version two of the policy text.", version=2))
    old = d.post_webhook(file_event("created", "f", content="Version one of the policy text.", version=1))
    batch = d.source.batch()
    assert [json.loads(r["body"])["event_id"] for r in batch["Records"]] == [new["event_id"], old["event_id"]]
    assert d.source.invoke(batch) == set()
    assert (d.status(new["event_id"]), d.status(old["event_id"])) == ("done", "superseded")
    assert d.searchable("f", "policy text version") == {2}


def test_failures_are_reported_dead_lettered_and_redriven(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = deployment
    ok = d.post_webhook(file_event("created", "ok", content="The office opens at nine.", version=1))["event_id"]
    # Accepted (the s3 source exists) but the object is not there: a permanent error for the worker.
    url = f"s3://{BUCKET}/missing.md"
    failing = d.post_webhook(file_event("created", "missing", url=url, version=1, content_type=None))["event_id"]
    d.source.sqs.send_message(
        QueueUrl=d.stack.queue_url, MessageBody="not json", MessageGroupId="poison", MessageDeduplicationId="p1"
    )

    batch = d.source.batch()
    by_event = {
        json.loads(r["body"]).get("event_id") if r["body"].startswith("{") else "poison": r["messageId"]
        for r in batch["Records"]
    }
    assert set(by_event) == {ok, failing, "poison"}
    assert d.source.invoke(batch) == {by_event[failing], by_event["poison"]}  # only those two
    assert d.status(ok) == "done"
    code, event = d.api("GET", f"/events/{failing}")
    assert event["status"] == "failed" and "does not exist" in event["error"]
    code, doc = d.api("GET", "/documents/missing")
    assert doc["status"] == "failed" and "does not exist" in doc["last_error"]

    # Made visible again at once: redelivered, reported failed again, then moved to the dead-letter queue.
    redelivered = d.source.batch()
    assert {r["messageId"] for r in redelivered["Records"]} == {by_event[failing], by_event["poison"]}
    assert all(r["attributes"]["ApproximateReceiveCount"] == "2" for r in redelivered["Records"])
    assert d.source.invoke(redelivered) == {by_event[failing], by_event["poison"]}
    deadline = time.monotonic() + 5
    while d.source.count(d.stack.dead_letter_url) < 2 and time.monotonic() < deadline:
        assert d.source.batch(within=0)["Records"] == []  # the receive that moves them delivers nothing
    assert d.source.count(d.stack.dead_letter_url) == 2
    assert d.source.count(d.stack.queue_url) == 0
    assert d.status(failing) == "failed"

    # The cause is fixed; the operator moves the event back with a fresh attempt budget.
    d.s3.put_object(Bucket=BUCKET, Key="missing.md", Body=b"# Found\n\nThe file is here now.")
    for name, value in {**_environment(d.stack), "EVENTRAG_DATA_DIR": str(d.container.settings.data_dir)}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli.app, ["redrive"])
    assert result.exit_code == 0, result.output
    assert "moved 1 message(s)" in result.output and failing in result.output
    assert d.source.count(d.stack.dead_letter_url) == 1  # the unreadable message stays for a human
    rec = d.container.state.get_event("acme", failing)
    assert rec is not None and (rec.status.value, rec.attempts) == ("queued", 0)

    assert d.source.invoke(d.source.batch()) == set()
    assert d.status(failing) == "done"
    assert d.searchable("missing", "the file is here now") == {1}


def _environment(stack: Stack) -> dict[str, str]:
    """What docs/deploy.md tells the operator to set for `eventrag redrive`."""
    return {f"EVENTRAG_{k.upper()}": str(v) for k, v in stack.settings().items()}


def test_redrive_without_a_dead_letter_queue_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTRAG_SQS_DLQ_URL", raising=False)
    monkeypatch.setenv("EVENTRAG_QUEUE_BACKEND", "local")
    result = CliRunner().invoke(cli.app, ["redrive"])
    assert result.exit_code == 2 and "EVENTRAG_SQS_DLQ_URL" in result.output


def s3_notification(event_name: str, key: str, sequencer: str) -> dict[str, Any]:
    """AWS's sample notification for our bucket; S3 sends the key form-encoded."""
    event = json.loads((EVENTS / "s3_notification.json").read_text())
    record = event["Records"][0]
    record["eventName"] = event_name
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{BUCKET}"
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), sequencer=sequencer)
    if event_name.startswith("ObjectRemoved"):
        for gone in ("size", "eTag"):
            record["s3"]["object"].pop(gone, None)
    return event


def test_s3_notifications_are_queued_indexed_and_deleted(deployment: Deployment) -> None:
    d = deployment
    key = "handbook/annual leave.md"
    file_id = f"s3://{BUCKET}/{key}"
    d.s3.put_object(Bucket=BUCKET, Key=key, Body=b"# Leave\n\nEveryone gets 25 days of annual leave.")
    created = s3_notification("ObjectCreated:Put", key, "0055AED6DCD90281E5")
    assert handlers.s3_handler(created, LambdaContext()) == {"accepted": 1}
    assert handlers.s3_handler(created, LambdaContext()) == {"accepted": 1}  # Lambda's retry: same event
    (event,) = d.container.state.list_events("acme", file_id=file_id)
    assert (event.status.value, event.event.path, event.event.type.value) == ("queued", key, "file.updated")
    assert d.source.count(d.stack.queue_url) == 1
    assert d.container.index.revision_counts("acme") == {}

    assert d.source.invoke(d.source.batch()) == set()
    doc = d.container.state.get_document("acme", file_id)
    assert doc is not None and (doc.status, doc.path) == (DocumentStatus.INDEXED, key)
    assert d.searchable(file_id, "days of annual leave") == {None}  # S3 objects carry no version number

    removed = s3_notification("ObjectRemoved:Delete", key, "0055AED6DCD90281E6")
    assert handlers.s3_handler(removed, LambdaContext()) == {"accepted": 1}
    # A late notification from before the delete: recorded as superseded, the file stays deleted.
    late = s3_notification("ObjectCreated:Put", key, "0055AED6DCD90281E4")
    assert handlers.s3_handler(late, LambdaContext()) == {"accepted": 1}
    while d.source.count(d.stack.queue_url):
        assert d.source.invoke(d.source.batch()) == set()
    doc = d.container.state.get_document("acme", file_id)
    assert doc is not None and (doc.status, doc.revision) == (DocumentStatus.DELETED, None)
    assert d.searchable(file_id, "days of annual leave") == set()
    statuses = sorted(e.status.value for e in d.container.state.list_events("acme", file_id=file_id))
    assert statuses == ["done", "done", "superseded"]


def test_s3_test_events_and_other_records_are_ignored(deployment: Deployment) -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2019-09-03T19:37:27.192Z",
        "Bucket": BUCKET,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3",
    }
    assert handlers.s3_handler(test_event, LambdaContext()) == {"accepted": 0}
    restore = s3_notification("ObjectRestore:Completed", "a.md", "0055AED6DCD90281E5")
    folder = s3_notification("ObjectCreated:Put", "handbook/", "0055AED6DCD90281E5")
    assert handlers.s3_handler({"Records": restore["Records"] + folder["Records"]}, LambdaContext()) == {"accepted": 0}
    assert deployment.source.count(deployment.stack.queue_url) == 0


def test_s3_handler_on_its_own_builds_only_the_state_store_and_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The s3 function (512 MB) never builds the index or loads the embedding model."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        for name, value in {**_environment(stack), "EVENTRAG_S3_WORKSPACE": "handbooks"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("EVENTRAG_DATA_DIR", str(tmp_path / "data"))
        handlers.set_container(None)
        try:
            created = s3_notification("ObjectCreated:Put", "policies/travel.md", "0055AED6DCD90281E5")
            assert handlers.s3_handler(created, LambdaContext()) == {"accepted": 1}
            assert handlers._container is None  # no full container: no Qdrant, no torch
            item = session.client("dynamodb").scan(TableName=stack.events_table)["Items"][0]
            assert (item["workspace"]["S"], item["status"]["S"], item["file_id"]["S"]) == (
                "handbooks",
                "queued",
                f"s3://{BUCKET}/policies/travel.md",
            )
        finally:
            handlers.set_container(None)


def test_secrets_come_from_ssm_at_cold_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The template holds parameter names only; the composition root reads the values from SSM."""
    from tests.conftest import SECRET_BETA

    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        ssm = session.client("ssm")
        ssm.put_parameter(
            Name="/eventrag/test/webhook-secrets",
            Type="SecureString",
            Value=json.dumps({"acme": [SECRET_ACME], "beta": [SECRET_BETA]}),
        )
        ssm.put_parameter(Name="/eventrag/test/api-keys", Type="SecureString", Value=json.dumps({KEY_ACME: "acme"}))
        clients = {"dynamodb": session.client("dynamodb"), "sqs": session.client("sqs"), "s3": session.client("s3")}
        settings = base_settings(
            tmp_path / "data",
            **stack.settings(),
            webhook_secrets={},
            api_keys={},
            webhook_secrets_ssm_parameter="/eventrag/test/webhook-secrets",
            api_keys_ssm_parameter="/eventrag/test/api-keys",
            source_bucket="bucket",
            s3_workspace="acme",
        )
        c = build_container(
            settings, embedder=HashEmbedder(), qdrant_client=QdrantClient(location=":memory:"), aws=clients
        )
        handlers.set_container(c)
        try:
            raw, headers = sign(SECRET_ACME, file_event("created", "x", content="hello there", version=1))
            r = handlers.api_handler(
                http_event("apigw_http_v2.json", "POST", "/webhooks", raw, headers), LambdaContext()
            )
            assert r["statusCode"] == 202, r["body"]
            r = handlers.api_handler(
                http_event("apigw_http_v2.json", "GET", "/documents", headers={"x-api-key": KEY_ACME}), LambdaContext()
            )
            assert r["statusCode"] == 200
            # Another workspace may not point at the shared S3 source bucket.
            raw, headers = sign(
                SECRET_BETA,
                file_event("created", "y", workspace="beta", url="s3://bucket/secret.md", version=1, content_type=None),
            )
            r = handlers.api_handler(
                http_event("apigw_http_v2.json", "POST", "/webhooks", raw, headers), LambdaContext()
            )
            assert r["statusCode"] == 422 and "reserved to workspace 'acme'" in r["body"]
        finally:
            handlers.set_container(None)
            c.close()


def test_the_container_makes_one_boto3_client_per_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state store, the sessions, the job queue and the outbox share the container's clients (one per
    service, from one session), instead of a session and a client each on every cold start."""
    with mocked_aws(monkeypatch) as session:
        stack = create_stack(session)
        settings = base_settings(tmp_path / "data", **stack.settings())
        c = build_container(settings, embedder=HashEmbedder(), qdrant_client=QdrantClient(location=":memory:"))
        try:
            state, sessions, outbox = c.state, c.sessions, c.outbox
            ddb = c.aws.get("dynamodb")
            assert state.client is ddb and sessions.client is ddb
            assert outbox.client is ddb
            assert c.queue.client is c.aws.get("sqs") is c.aws.get("sqs")
        finally:
            c.close()
