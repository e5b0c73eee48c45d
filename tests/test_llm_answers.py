"""The LLM path: eventrag's real `openai` client against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from app.container import build_container
from app.settings import Settings
from retrieval.llm import OpenAIChatModel
from tests.conftest import Harness, base_settings
from tests.fakes.llm_server import Error, Reply, ScriptedLLM, Slow
from tests.fakes.webhooks import file_event

POLICY = """# Remote work
Employees may work remotely up to three days per week. Remote work from abroad needs HR approval.
"""


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


def chat_model(llm: ScriptedLLM, *, timeout: float = 10.0, max_retries: int = 2) -> OpenAIChatModel:
    client = openai.OpenAI(base_url=llm.base_url, api_key="test", timeout=timeout, max_retries=max_retries)
    return OpenAIChatModel("gpt-test", client=client)


@pytest.fixture
def h(make_harness: Callable[..., Harness], llm: ScriptedLLM) -> Harness:
    harness = make_harness(chat=chat_model(llm))
    harness.post_event(file_event("created", "remote", path="policies/remote.md", content=POLICY, version=4))
    harness.drain()
    return harness


def test_llm_answer_keeps_real_citations_and_drops_invented_ones(h: Harness, llm: ScriptedLLM) -> None:
    llm.push(Reply("Up to three days per week [1], and abroad only with approval [1][7]."))
    r = h.query("How many days can I work from home?")
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["mode"] == "llm"
    assert res["invented_citations"] == 1
    assert "[7]" not in res["answer"] and "[1]" in res["answer"]
    assert [c["n"] for c in res["citations"]] == [1]
    cit = res["citations"][0]
    assert cit["file_id"] == "remote" and cit["version"] == 4 and POLICY[cit["start"] : cit["end"]] == cit["text"]

    sent = llm.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and "untrusted data" in sent[0]["content"]
    user = sent[-1]["content"]
    assert (
        "<passages>" in user
        and "three days per week" in user
        and user.rstrip().endswith("Question: How many days can I work from home?")
    )


def test_llm_not_called_when_nothing_is_relevant(h: Harness, llm: ScriptedLLM) -> None:
    before = len(llm.requests)
    res = h.query("What is the melting point of tungsten carbide?").json()
    assert res["covered"] is False and res["citations"] == []
    assert len(llm.requests) == before


def test_rate_limit_then_success_is_retried(h: Harness, llm: ScriptedLLM) -> None:
    llm.push(Error(429, "slow down", retry_after=0), Reply("Three days [1]."))
    res = h.query("remote work days per week").json()
    assert res["answer"] == "Three days [1]."


def test_server_errors_become_a_clear_502_or_an_extractive_fallback(h: Harness, llm: ScriptedLLM) -> None:
    llm.default = Error(500, "boom")
    r = h.query("remote work days per week")
    assert r.status_code == 502 and "language model" in r.json()["detail"]
    r = h.query("remote work days per week", llm_fallback="extractive")
    assert r.status_code == 200
    res = r.json()
    assert res["mode"] == "extractive" and res["fallback_reason"] and res["citations"][0]["file_id"] == "remote"


def test_timeout_is_a_504(make_harness: Callable[..., Harness], llm: ScriptedLLM) -> None:
    h = make_harness(chat=chat_model(llm, timeout=0.3, max_retries=0))
    h.post_event(file_event("created", "remote", content=POLICY, version=1))
    h.drain()
    llm.push(Slow(5, Reply("late")))
    r = h.query("remote work days per week")
    assert r.status_code == 504 and "in time" in r.json()["detail"]


def test_llm_configured_from_environment(
    tmp_path,
    llm: ScriptedLLM,
    embedder,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("EVENTRAG_LLM_MODEL", "served-model")
    settings = Settings(**base_settings(tmp_path / "d").model_dump(exclude={"llm_model"}))
    assert settings.llm_model == "served-model"
    c = build_container(settings, embedder=embedder)
    try:
        assert c.chat is not None
        llm.push(Reply("ok"))
        assert c.chat.complete([{"role": "user", "content": "hi"}]).text == "ok"
        assert llm.requests[-1]["model"] == "served-model"
    finally:
        c.close()


def test_quotes_the_model_makes_up_are_flagged(h: Harness, llm: ScriptedLLM) -> None:
    llm.push(
        Reply(
            'The policy says "Employees may work remotely up to three days per week" [1], and that work from'
            ' abroad is "never allowed" [1].'
        )
    )
    res = h.query("How many days can I work from home?").json()
    # The first quotation is the passage's own text; the second is in no passage: it is flagged.
    assert res["unverified_quotes"] == ["never allowed"]
    [cit] = res["citations"]
    [span] = cit["quotes"]
    assert POLICY[span["start"] : span["end"]] == "Employees may work remotely up to three days per week"
    llm.push(Reply("Three days a week [1]."))
    assert h.query("remote work days per week").json()["unverified_quotes"] == []
