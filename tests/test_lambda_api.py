"""`api_handler`: the same app under Mangum, driven with API Gateway HTTP API v2 and Function URL events."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import handlers
from tests.conftest import KEY_ACME, SECRET_ACME, Harness
from tests.fakes.webhooks import file_event, sign

EVENTS = Path(__file__).parent / "events"


class LambdaContext:
    """The attributes of the Lambda runtime's context object that code may read."""

    function_name = "eventrag-api"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-2:123456789012:function:eventrag-api"
    memory_limit_in_mb = 3008
    aws_request_id = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    log_group_name = "/aws/lambda/eventrag-api"
    log_stream_name = "2020/03/10/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def http_event(
    sample: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    event = copy.deepcopy(json.loads((EVENTS / sample).read_text()))
    event["rawPath"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["headers"].update({k.lower(): v for k, v in (headers or {}).items()})
    event["body"] = body.decode()
    event["isBase64Encoded"] = False
    return event


@pytest.fixture
def lambda_app(harness: Harness) -> Iterator[Harness]:
    handlers.set_container(harness.container)
    yield harness
    handlers.set_container(None)


@pytest.mark.parametrize("sample", ["apigw_http_v2.json", "function_url.json"])
def test_webhook_and_query_through_lambda(lambda_app: Harness, sample: str) -> None:
    ctx = LambdaContext()
    r = handlers.api_handler(http_event(sample, "GET", "/healthz"), ctx)
    assert r["statusCode"] == 200 and json.loads(r["body"]) == {"status": "ok", "checks": {}}

    raw, headers = sign(
        SECRET_ACME, file_event("created", "faq", content="Our support line is open from 9 to 5.", version=1)
    )
    r = handlers.api_handler(http_event(sample, "POST", "/webhooks", raw, headers), ctx)
    assert r["statusCode"] == 202, r["body"]
    event_id = json.loads(r["body"])["event_id"]
    assert lambda_app.drain() == 1

    r = handlers.api_handler(http_event(sample, "GET", f"/events/{event_id}", headers={"x-api-key": KEY_ACME}), ctx)
    assert json.loads(r["body"])["status"] == "done"

    q = json.dumps({"question": "When is the support line open?"}).encode()
    r = handlers.api_handler(
        http_event(sample, "POST", "/query", q, {"x-api-key": KEY_ACME, "content-type": "application/json"}),
        ctx,
    )
    assert r["statusCode"] == 200
    res = json.loads(r["body"])
    assert res["citations"][0]["file_id"] == "faq"

    r = handlers.api_handler(http_event(sample, "POST", "/query", q, {"content-type": "application/json"}), ctx)
    assert r["statusCode"] == 401


def test_question_routes_work_inline_under_lambda_and_in_the_thread_pool_under_a_server(
    lambda_app: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An execution environment runs one invocation at a time, so the API function answers on the event
    loop's own thread; `eventrag serve`'s app (the harness's) keeps the loop free for other requests."""
    raw, headers = sign(SECRET_ACME, file_event("created", "faq", content="Support is open from 9 to 5.", version=1))
    assert lambda_app.client.post("/webhooks", content=raw, headers=headers).status_code == 202
    assert lambda_app.drain() == 1
    on_loop: list[bool] = []
    agent = lambda_app.container.agent
    answer = agent.answer

    def recording(ask: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return answer(ask)

    monkeypatch.setattr(agent, "answer", recording)
    q = json.dumps({"question": "When is support open?"}).encode()
    chat = json.dumps({"model": "eventrag", "messages": [{"role": "user", "content": "When is support open?"}]})
    key = {"x-api-key": KEY_ACME, "content-type": "application/json"}
    for path, body in (("/query", q), ("/v1/chat/completions", chat.encode())):
        r = handlers.api_handler(http_event("apigw_http_v2.json", "POST", path, body, key), LambdaContext())
        assert r["statusCode"] == 200, r["body"]
        assert "faq" in r["body"]
    assert lambda_app.query("When is support open?").json()["citations"][0]["file_id"] == "faq"
    assert on_loop == [True, True, False]


def test_ingest_handler_runs_the_same_worker(lambda_app: Harness, make_harness: Callable[..., Harness]) -> None:
    r = lambda_app.post_event(file_event("created", "doc-1", content="The VPN requires two-factor login.", version=1))
    event_id = r.json()["event_id"]
    sqs = json.loads((EVENTS / "sqs_batch.json").read_text())
    sqs["Records"][0]["body"] = json.dumps({"workspace": "acme", "event_id": event_id})
    bad = copy.deepcopy(sqs["Records"][0])
    bad["messageId"] = "poison-1"
    bad["body"] = "not json"
    sqs["Records"].append(bad)
    out = handlers.ingest_handler(sqs, LambdaContext())
    assert out == {"batchItemFailures": [{"itemIdentifier": "poison-1"}]}
    assert lambda_app.get(f"/events/{event_id}").json()["status"] == "done"
