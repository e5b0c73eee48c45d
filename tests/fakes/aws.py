"""AWS in-process (moto), with the queues and tables that `serverless.yml` declares, created from it.

The stand-in is built from the deployment template itself, so a table key, an index, a TTL attribute or a
redrive policy changed there is what the tests run against; a property this module does not know fails
loudly instead of being skipped.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

SERVERLESS_YML = Path(__file__).resolve().parents[2] / "serverless.yml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
STACK_STAGE = "test"

TABLES = {
    "events": "EventsTable",
    "documents": "DocumentsTable",
    "sessions": "SessionsTable",
    "outbox": "OutboxTable",
    "subscriptions": "SubscriptionsTable",
}


@dataclass(frozen=True)
class Intrinsic:
    """A CloudFormation short-form function (`!Ref`, `!GetAtt`, `!Sub`, ...) kept as written."""

    name: str
    value: Any


class _TemplateLoader(yaml.SafeLoader):
    pass


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Intrinsic:
    if isinstance(node, yaml.ScalarNode):
        return Intrinsic(suffix, loader.construct_scalar(node))
    if isinstance(node, yaml.SequenceNode):
        return Intrinsic(suffix, loader.construct_sequence(node, deep=True))
    assert isinstance(node, yaml.MappingNode)
    return Intrinsic(suffix, loader.construct_mapping(node, deep=True))


_TemplateLoader.add_multi_constructor("!", _intrinsic)

_VARIABLE = re.compile(r"\$\{(param|self|sls):([^}]+)\}")


def load_serverless(params: dict[str, Any] | None = None, stage: str = STACK_STAGE) -> dict[str, Any]:
    """serverless.yml with `${param:...}`, `${self:service}` and `${sls:stage}` resolved (the framework's
    own variables; CloudFormation intrinsics stay `Intrinsic`s)."""
    doc: dict[str, Any] = yaml.load(SERVERLESS_YML.read_text(), Loader=_TemplateLoader)  # noqa: S506
    values = {**doc["params"]["default"], **(params or {})}

    def lookup(match: re.Match[str]) -> Any:
        kind, name = match.groups()
        if kind == "param" and name in values:
            return values[name]
        if kind == "sls" and name == "stage":
            return stage
        if kind == "self" and name == "service":
            return doc["service"]
        return match.group(0)  # e.g. ${param:imageUri}, ${self:custom...}: not needed for queues and tables

    def resolve(node: Any) -> Any:
        if isinstance(node, str):
            whole = _VARIABLE.fullmatch(node)
            if whole:  # a whole-value variable keeps its type (maxReceiveCount: 5, not "5")
                return lookup(whole)
            return _VARIABLE.sub(lambda m: str(lookup(m)), node)
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        if isinstance(node, Intrinsic):
            return Intrinsic(node.name, resolve(node.value))
        return node

    resolved: dict[str, Any] = resolve(doc)
    return resolved


@dataclass(frozen=True)
class Stack:
    events_table: str
    documents_table: str
    sessions_table: str
    outbox_table: str
    subscriptions_table: str
    queue_url: str
    dead_letter_url: str
    outbound_queue_url: str
    max_receive_count: int

    def settings(self) -> dict[str, Any]:
        """The EVENTRAG_* values the deployment gives the functions, as Settings fields."""
        return {
            "state_backend": "dynamodb",
            "queue_backend": "sqs",
            "dynamodb_events_table": self.events_table,
            "dynamodb_documents_table": self.documents_table,
            "dynamodb_sessions_table": self.sessions_table,
            "dynamodb_outbox_table": self.outbox_table,
            "dynamodb_subscriptions_table": self.subscriptions_table,
            "outbound_queue_url": self.outbound_queue_url,
            "sqs_queue_url": self.queue_url,
            "sqs_dlq_url": self.dead_letter_url,
        }


def _pseudo(text: str, stack_name: str) -> str:
    return (
        text.replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", REGION)
        .replace("${AWS::AccountId}", ACCOUNT)
        .replace("${AWS::StackName}", stack_name)
    )


def _plain(value: Any, attributes: dict[str, str], stack_name: str) -> Any:
    """Intrinsics -> values: `!GetAtt X.Arn` from the resources made so far, `!Sub` of pseudo parameters."""
    if isinstance(value, Intrinsic):
        if value.name == "GetAtt":
            return attributes[value.value]
        if value.name == "Sub" and isinstance(value.value, str):
            return _pseudo(value.value, stack_name)
        raise NotImplementedError(f"!{value.name} {value.value!r} in a queue or table definition")
    if isinstance(value, dict):
        return {k: _plain(v, attributes, stack_name) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, attributes, stack_name) for v in value]
    return value


def _queue_attribute(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def create_stack(session: boto3.session.Session, *, params: dict[str, Any] | None = None) -> Stack:
    """Create the ingest queue, its DLQ and the three tables of serverless.yml in the (mocked) account."""
    doc = load_serverless(params)
    resources = doc["resources"]["Resources"]
    stack_name = f"{doc['service']}-{STACK_STAGE}"
    attributes: dict[str, str] = {}
    ddb = session.client("dynamodb")
    sqs = session.client("sqs")

    table_names = {}
    for role, logical_id in TABLES.items():
        props = dict(resources[logical_id]["Properties"])
        name = f"{stack_name}-{logical_id}"  # CloudFormation names a table <stack>-<logical id>-<suffix>
        ttl = props.pop("TimeToLiveSpecification", None)
        recovery = props.pop("PointInTimeRecoverySpecification", None)
        ddb.create_table(TableName=name, **props)  # an unknown property fails here
        if ttl:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
        if recovery:
            ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification=recovery)
        table_names[role] = name

    urls = {}
    # The dead-letter queue first: the ingest queue's redrive policy names its ARN.
    for logical_id in ("IngestDeadLetterQueue", "IngestQueue", "OutboundQueue"):
        props = _plain(resources[logical_id]["Properties"], attributes, stack_name)
        name = props.pop("QueueName")
        # CloudFormation property names are the SQS attribute names.
        queue_attributes = {k: _queue_attribute(v) for k, v in props.items()}
        url = sqs.create_queue(QueueName=name, Attributes=queue_attributes)["QueueUrl"]
        urls[logical_id] = url
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes[f"{logical_id}.Arn"] = arn

    redrive = resources["IngestQueue"]["Properties"]["RedrivePolicy"]
    return Stack(
        events_table=table_names["events"],
        documents_table=table_names["documents"],
        sessions_table=table_names["sessions"],
        outbox_table=table_names["outbox"],
        subscriptions_table=table_names["subscriptions"],
        queue_url=urls["IngestQueue"],
        dead_letter_url=urls["IngestDeadLetterQueue"],
        outbound_queue_url=urls["OutboundQueue"],
        max_receive_count=int(redrive["maxReceiveCount"]),
    )


@contextmanager
def mocked_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.session.Session]:
    """moto for every AWS call in the block, with dummy credentials so nothing can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    _one_request_at_a_time(monkeypatch)
    with mock_aws():
        yield boto3.session.Session(region_name=REGION)


def _one_request_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS applies each request atomically (a conditional put, a transaction); moto's in-memory backend is not
    thread-safe (a transaction deep-copies a table another thread is writing). Requests from racing threads
    are served one at a time, so a race test races the store's own calls, as it would against AWS."""
    lock = threading.RLock()
    process = BotocoreStubber.process_request

    def serially(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return process(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", serially)
