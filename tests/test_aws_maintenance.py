"""On AWS: the scheduled sweep and reconcile, and S3 notifications of versioned buckets and lifecycle rules,
read as S3 means them. DynamoDB, SQS and S3 from moto (the tables and queues of serverless.yml)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import pytest

from app import handlers
from retrieval.search import SearchRequest
from stores.events import EventStatus, EventType, FileEvent
from stores.ports import DocumentStatus
from tests.test_lambda_api import LambdaContext
from tests.test_lambda_ingest import BUCKET, EVENTS, Deployment, deployment  # noqa: F401 (the fixture)

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def stored_not_queued(d: Deployment, event_id: str, *, age: timedelta) -> None:
    """An event stored by a function that died before queueing it, `age` ago."""
    event = FileEvent(
        event_id=event_id,
        workspace="acme",
        type=EventType.CREATED,
        file_id=event_id,
        path=f"{event_id}.md",
        timestamp=T0,
        version=1,
        content="# Stranded\n\nThis event was stored but never queued.",
        content_type="text/markdown",
    )
    d.container.state.add_event(event, EventStatus.RECEIVED)
    then = f"{time.time() - age.total_seconds():.6f}"
    d.dynamodb.update_item(
        TableName=d.stack.events_table,
        Key={"workspace": {"S": "acme"}, "event_id": {"S": event_id}},
        UpdateExpression="SET received_at = :t",
        ExpressionAttributeValues={":t": {"N": then}},
    )


def test_the_scheduled_sweep_queues_events_stored_but_never_queued(deployment: Deployment) -> None:  # noqa: F811
    d = deployment
    stored_not_queued(d, "stranded", age=timedelta(minutes=10))
    stored_not_queued(d, "fresh", age=timedelta(seconds=1))  # may still be on its way to the queue
    assert handlers.sweep_handler({"source": "aws.events"}, LambdaContext()) == {"queued": 1}
    assert d.status("stranded") == "queued" and d.status("fresh") == "received"
    assert d.source.invoke(d.source.batch()) == set()
    assert d.status("stranded") == "done"
    assert d.searchable("stranded", "stored but never queued") == {1}
    assert handlers.sweep_handler({}, LambdaContext()) == {"queued": 0}


def test_the_scheduled_reconcile_reports_and_repairs_only_when_asked(deployment: Deployment) -> None:  # noqa: F811
    d = deployment
    d.post_webhook(
        {
            "type": "file.created",
            "timestamp": T0.isoformat(),
            "data": {"file_id": "leave", "path": "leave.md", "version": 1, "content": "# Leave\n\n25 days."},
        }
    )
    assert d.source.invoke(d.source.batch()) == set()
    d.container.index.delete_file("acme", "leave")  # the index lost the file's points

    report = handlers.reconcile_handler({"source": "aws.events"}, LambdaContext())
    (acme,) = [w for w in report["workspaces"] if w["workspace"] == "acme"]
    assert report["repair"] is False and acme["clean"] is False and acme["repaired"] == 0
    assert d.source.count(d.stack.queue_url) == 0  # report only: nothing re-queued

    d.container.settings.reconcile_repair = True  # EVENTRAG_RECONCILE_REPAIR=true
    report = handlers.reconcile_handler({}, LambdaContext())
    (acme,) = [w for w in report["workspaces"] if w["workspace"] == "acme"]
    assert report["repair"] is True and acme["repaired"] == 1
    assert d.source.invoke(d.source.batch()) == set()  # the worker writes the lost points again
    assert d.searchable("leave", "days of leave") == {1}
    (acme,) = [w for w in handlers.reconcile_handler({}, LambdaContext())["workspaces"] if w["workspace"] == "acme"]
    assert acme["clean"] is True


# S3 as S3 means it ------------------------------------------------------------------------------------
def notification(event_name: str, key: str, sequencer: str, at: int, version_id: str | None) -> dict[str, Any]:
    event = json.loads((EVENTS / "s3_notification.json").read_text())
    record = event["Records"][0]
    record["eventName"] = event_name
    record["eventTime"] = (T0 + timedelta(seconds=at)).isoformat().replace("+00:00", "Z")
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), sequencer=sequencer)
    if version_id is not None:
        record["s3"]["object"]["versionId"] = version_id
    if not event_name.startswith("ObjectCreated"):
        for gone in ("size", "eTag"):
            record["s3"]["object"].pop(gone, None)
    return event


def deliver(d: Deployment, event: dict[str, Any]) -> None:
    assert handlers.s3_handler(event, LambdaContext()) == {"accepted": 1}
    while d.source.count(d.stack.queue_url):
        assert d.source.invoke(d.source.batch()) == set()


@pytest.fixture
def versioned(deployment: Deployment) -> Deployment:  # noqa: F811
    deployment.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return deployment


def put(d: Deployment, key: str, text: str, at: int, sequencer: str) -> str:
    version_id: str = d.s3.put_object(Bucket=BUCKET, Key=key, Body=text.encode())["VersionId"]
    deliver(d, notification("ObjectCreated:Put", key, sequencer, at, version_id))
    return version_id


def state_of(d: Deployment, key: str) -> tuple[DocumentStatus, set[int | None]]:
    doc = d.container.state.get_document("acme", f"s3://{BUCKET}/{key}")
    assert doc is not None
    return doc.status, d.searchable(f"s3://{BUCKET}/{key}", "annual leave days")


def test_removing_a_noncurrent_version_keeps_the_file(versioned: Deployment) -> None:
    d, key = versioned, "leave.md"
    first = put(d, key, "# Leave\n\nEveryone gets 20 days of annual leave.", 0, "0055AED6DCD90281E1")
    put(d, key, "# Leave\n\nEveryone gets 25 days of annual leave.", 10, "0055AED6DCD90281E2")
    d.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=first)  # an old version goes for good
    deliver(d, notification("ObjectRemoved:Delete", key, "0055AED6DCD90281E3", 20, first))
    assert state_of(d, key) == (DocumentStatus.INDEXED, {None})
    hits = d.container.searcher.search(SearchRequest("acme", "annual leave days", top_k=5))
    assert hits and all("25 days" in h.text for h in hits)


def test_a_delete_marker_deletes_and_removing_it_brings_the_file_back(versioned: Deployment) -> None:
    d, key = versioned, "leave.md"
    put(d, key, "# Leave\n\nEveryone gets 25 days of annual leave.", 0, "0055AED6DCD90281E1")
    marker = d.s3.delete_object(Bucket=BUCKET, Key=key)["VersionId"]  # versioned: a delete marker
    deliver(d, notification("ObjectRemoved:DeleteMarkerCreated", key, "0055AED6DCD90281E2", 10, marker))
    assert state_of(d, key) == (DocumentStatus.DELETED, set())
    d.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=marker)  # the marker goes: the object is back
    deliver(d, notification("ObjectRemoved:Delete", key, "0055AED6DCD90281E3", 20, marker))
    assert state_of(d, key) == (DocumentStatus.INDEXED, {None})


def test_removing_the_current_version_brings_the_previous_one_back(versioned: Deployment) -> None:
    d, key = versioned, "leave.md"
    put(d, key, "# Leave\n\nEveryone gets 20 days of annual leave.", 0, "0055AED6DCD90281E1")
    latest = put(d, key, "# Leave\n\nEveryone gets 25 days of annual leave.", 10, "0055AED6DCD90281E2")
    d.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=latest)
    deliver(d, notification("ObjectRemoved:Delete", key, "0055AED6DCD90281E3", 20, latest))
    hits = d.container.searcher.search(SearchRequest("acme", "annual leave days", top_k=5))
    assert hits and all("20 days" in h.text for h in hits)


def test_removing_the_last_version_deletes_the_file(versioned: Deployment) -> None:
    d, key = versioned, "leave.md"
    only = put(d, key, "# Leave\n\nEveryone gets 25 days of annual leave.", 0, "0055AED6DCD90281E1")
    d.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=only)
    deliver(d, notification("ObjectRemoved:Delete", key, "0055AED6DCD90281E2", 10, only))
    assert state_of(d, key) == (DocumentStatus.DELETED, set())


@pytest.mark.parametrize(
    ("event_name", "versioning"),
    [("LifecycleExpiration:Delete", False), ("LifecycleExpiration:DeleteMarkerCreated", True)],
)
def test_lifecycle_expirations_leave_the_index(
    deployment: Deployment,  # noqa: F811
    event_name: str,
    versioning: bool,
) -> None:
    d, key = deployment, "old.md"
    if versioning:
        d.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    version = d.s3.put_object(Bucket=BUCKET, Key=key, Body=b"# Old\n\nAnnual leave was 18 days.").get("VersionId")
    deliver(d, notification("ObjectCreated:Put", key, "0055AED6DCD90281E1", 0, version if versioning else None))
    assert state_of(d, key)[0] is DocumentStatus.INDEXED
    # The lifecycle rule expires the object (unversioned: deleted; versioned: a delete marker).
    marker = d.s3.delete_object(Bucket=BUCKET, Key=key).get("VersionId") if versioning else None
    if not versioning:
        d.s3.delete_object(Bucket=BUCKET, Key=key)
    deliver(d, notification(event_name, key, "0055AED6DCD90281E2", 10, marker))
    assert state_of(d, key) == (DocumentStatus.DELETED, set())
