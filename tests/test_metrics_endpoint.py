"""GET /metrics, parsed with prometheus-client's own parser; counters must move with the work done. And the
JSON log lines: event id, workspace and file id on every line about an event, one line per settled event."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.logs import configure_logging
from app.settings import LogFormat
from tests.conftest import Harness
from tests.fakes.webhooks import file_event

METRICS_KEY = "metrics-key-0123456789abcdef"
DOC = "# Travel\n\nTrain tickets are refunded within 30 days. Flights need approval from a manager."


def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = h.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_events_searches_and_answers(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(metrics_api_key=METRICS_KEY, source_root=str(Path(__file__).parent / "events" / "{workspace}"))
    before = scrape(h)
    h.post_event(file_event("created", "travel", path="policies/travel.md", content=DOC, version=1))
    assert value(scrape(h), "eventrag_queue_depth") == 1
    h.drain()
    assert h.query("How are train tickets refunded?").status_code == 200
    after = scrape(h)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("eventrag_events_received_total", type="file.created") == 1
    assert moved("eventrag_events_applied_total", type="file.created", result="indexed") == 1
    assert moved("eventrag_ingest_lag_seconds_count") == 1
    chunks = h.get("/documents/travel").json()["chunk_count"]
    assert moved("eventrag_chunks_total", source="embedded") + moved("eventrag_chunks_total", source="reused") == chunks
    assert moved("eventrag_embedding_batch_size_count") >= 1
    assert moved("eventrag_embedding_batch_size_sum") == moved("eventrag_chunks_total", source="embedded")
    assert moved("eventrag_embedding_seconds_count") >= 1
    assert moved("eventrag_search_seconds_count", mode="hybrid") == 1
    assert moved("eventrag_answer_seconds_count", mode="extractive") == 1
    assert value(after, "eventrag_queue_depth") == 0
    assert value(after, "eventrag_oldest_queued_event_age_seconds") == 0

    # A failure counts too (the file is not in the source root).
    h.post_event(file_event("created", "gone", path="nowhere/gone.md", version=1))
    h.drain()
    final = scrape(h)
    assert (
        value(final, "eventrag_events_failed_total", type="file.created")
        - value(after, "eventrag_events_failed_total", type="file.created")
        == 1
    )


def test_metrics_need_the_key_outside_loopback_single_user_mode(make_harness: Callable[..., Harness]) -> None:
    keyed = make_harness(metrics_api_key=METRICS_KEY)
    assert keyed.client.get("/metrics").status_code == 401
    assert keyed.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # A workspace API key is not the metrics key: the figures cover every workspace.
    assert keyed.get("/metrics").status_code == 401
    assert keyed.client.get("/metrics", headers={"X-API-Key": METRICS_KEY}).status_code == 200


def test_metrics_without_a_key_only_in_single_user_mode(make_harness: Callable[..., Harness]) -> None:
    public = make_harness()
    resp = public.client.get("/metrics")
    assert resp.status_code == 403 and "EVENTRAG_METRICS_API_KEY" in resp.json()["detail"]


def test_metrics_on_loopback_single_user_and_off(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    local = make_harness(api_keys={}, anonymous_workspace="default", data_dir=tmp_path / "local")
    assert local.client.get("/metrics").status_code == 200
    off = make_harness(metrics_enabled=False, metrics_api_key=METRICS_KEY, data_dir=tmp_path / "off")
    assert off.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).status_code == 404


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger set up as `EVENTRAG_LOG_FORMAT=json` does, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers = []
    out = io.StringIO()
    from app.settings import Settings

    configure_logging(Settings(log_format=LogFormat.JSON, log_level="INFO"), stream=out)
    try:
        yield out
    finally:
        root.handlers, root.level = saved


def test_json_logs_carry_the_event_fields_and_one_line_per_settled_event(
    make_harness: Callable[..., Harness], json_log: io.StringIO
) -> None:
    h = make_harness()
    event_id = h.post_event(file_event("created", "travel", path="policies/travel.md", content=DOC, version=3)).json()[
        "event_id"
    ]
    h.drain()
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    about = [x for x in lines if x.get("event_id") == event_id]
    settled = [x for x in about if x["message"].startswith("indexed policies/travel.md v3:")]
    assert len(settled) == 1
    line = settled[0]
    assert line["level"] == "INFO" and line["workspace"] == "acme" and line["file_id"] == "travel"
    assert " chunks, " in line["message"] and " embedded, " in line["message"] and line["message"].endswith(" s")
    assert {"time", "logger"} <= set(line)


def test_llm_errors_and_llm_answer_latency_are_counted(make_harness: Callable[..., Harness]) -> None:
    import openai

    from retrieval.llm import OpenAIChatModel
    from tests.fakes.llm_server import Error, Reply, ScriptedLLM

    with ScriptedLLM() as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="test", timeout=10, max_retries=0)
        h = make_harness(chat=OpenAIChatModel("gpt-test", client=client), metrics_api_key=METRICS_KEY)
        h.post_event(file_event("created", "travel", path="policies/travel.md", content=DOC, version=1))
        h.drain()
        before = scrape(h)
        llm.push(Error(500, "boom"), Reply("Within 30 days [1]."))
        assert h.query("How are train tickets refunded?").status_code == 502
        assert h.query("How are train tickets refunded?").status_code == 200
        after = scrape(h)
    assert (
        value(after, "eventrag_llm_errors_total", kind="LLMError")
        - value(before, "eventrag_llm_errors_total", kind="LLMError")
        == 1
    )
    assert (
        value(after, "eventrag_answer_seconds_count", mode="llm")
        - value(before, "eventrag_answer_seconds_count", mode="llm")
        == 1
    )
