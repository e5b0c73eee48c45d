"""Fuzz the whole API from its live OpenAPI document with schemathesis: every operation, a bounded number
of generated requests each (`EVENTRAG_FUZZ_EXAMPLES`, 25 by default), against three checks: no server
error, no status code the document does not declare, no response that breaks its declared schema.

`POST /webhooks` documents its body (`WebhookBody`) and its Standard Webhooks headers; each generated body
is signed with a workspace's secret here, so the body itself is fuzzed past the signature check instead of
being refused with a 401. Every request carries an API key (a missing key is a documented 401 elsewhere).
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from qdrant_client import QdrantClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from app.container import build_container
from app.main import create_app
from tests.conftest import KEY_ACME, SECRET_ACME, base_settings
from tests.fakes.embedder import HashEmbedder
from tests.fakes.webhooks import file_event, sign

EXAMPLES = int(os.environ.get("EVENTRAG_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]

DOCS = {
    "leave": ("handbook/leave.md", "# Leave\n\nEveryone gets 25 days of annual leave.", {"team": "hr", "n": 1}),
    "vpn": ("it/vpn.md", "# VPN\n\nThe VPN requires two-factor login.", {"team": "it", "weight": 1.5}),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data = Path(tmp_path_factory.mktemp("fuzz"))
    # A source folder per workspace: a generated body without content names a path, which is then accepted
    # (and fails in the worker, which this test does not run), so the fuzz reaches past the body checks.
    container = build_container(
        base_settings(data, worker={"mass_delete_share": 1.0}, source_root=str(data / "sources" / "{workspace}")),
        embedder=HashEmbedder(),
        qdrant_client=QdrantClient(location=":memory:"),
    )
    application = create_app(container, start_worker=False)
    with TestClient(application) as client:
        for file_id, (path, text, metadata) in DOCS.items():
            raw, headers = sign(
                SECRET_ACME, file_event("created", file_id, path=path, content=text, version=1, metadata=metadata)
            )
            assert client.post("/webhooks", content=raw, headers=headers).status_code == 202
        assert container.loop is not None
        container.loop.drain()
        yield application
    container.close()


def call(case: Any, seen: Counter[int]) -> None:
    headers = {"X-API-Key": KEY_ACME}
    if case.method == "POST" and case.path == "/webhooks":
        # Sign exactly the bytes sent: the body is fuzzed, the signature is always right.
        raw = json.dumps(case.body).encode()
        _, signed = sign(SECRET_ACME, raw, event_id=f"fuzz_{uuid.uuid4().hex}", sent=datetime.now(UTC))
        response = case.call_and_validate(headers=headers | signed, data=raw, checks=CHECKS)
    else:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
    seen[response.status_code] += 1


def fuzz_operation(operation: Any, seen: Counter[int]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=operation.as_strategy())
    def fuzz(case: Any) -> None:
        call(case, seen)

    fuzz()


def test_the_api_answers_every_generated_request_as_documented(app: Any) -> None:
    # schemathesis's pytest plugin (`from_fixture`) does not run under pytest 9, so each operation gets its
    # own Hypothesis test here, from the operation's strategy.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [f"{o.method} {o.path}" for o in operations]
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for operation in operations:
        seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", Counter())
        try:
            fuzz_operation(operation, seen)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
    # The webhook body was fuzzed past the signature: accepted bodies and refused ones, no 401.
    webhooks = statuses["POST /webhooks"]
    assert webhooks[202] > 0 and webhooks[422] > 0 and webhooks[401] == 0, webhooks
