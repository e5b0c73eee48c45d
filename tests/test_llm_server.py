"""The scripted LLM server speaks the wire protocol the real `openai` SDK parses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.llm_server import MODEL_ID, Echo, Error, Reply, ScriptedLLM, Slow, ToolCall

QUESTION_TEXT = "Where is the Eiffel tower?"
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION_TEXT}]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def client(llm: ScriptedLLM) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
        yield sdk


def ask(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=QUESTION, **kwargs)


def test_plain_reply(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Reply("In Paris [1]."))

    completion = ask(client)

    choice = completion.choices[0]
    assert choice.message.content == "In Paris [1]."
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.model == "gpt-test"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3


def test_streamed_reply_reassembles_to_the_text(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    text = "The tower stands  on the Champ de Mars\nin Paris."
    llm.push(Reply(text))

    chunks = list(ask(client, stream=True))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) > 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}


def test_streamed_usage_when_asked(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Reply("two words"))

    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


def test_tool_call_non_streamed(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Reply("", tool_calls=[ToolCall("search", {"query": "eiffel tower", "k": 3})]))

    choice = ask(client).choices[0]

    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id == "call_scripted_1_0"
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"query": "eiffel tower", "k": 3}


def test_tool_calls_streamed_accumulate(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    calls = [
        ToolCall("search", {"query": "eiffel tower", "filters": {"lang": "fr"}}, id="call_a"),
        ToolCall("fetch", {"url": "https://example.com/tower"}, id="call_b"),
    ]
    llm.push(Reply("Let me look.", tool_calls=calls))

    text = ""
    accumulated: dict[int, dict[str, str]] = {}
    fragments = 0
    finish_reasons = []
    for chunk in ask(client, stream=True):
        delta = chunk.choices[0].delta
        finish_reasons.append(chunk.choices[0].finish_reason)
        text += delta.content or ""
        for part in delta.tool_calls or []:
            slot = accumulated.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            if part.id:
                slot["id"] = part.id
            if part.function and part.function.name:
                slot["name"] = part.function.name
            if part.function and part.function.arguments:
                slot["arguments"] += part.function.arguments
                fragments += 1

    assert text == "Let me look."
    assert [accumulated[i]["id"] for i in sorted(accumulated)] == ["call_a", "call_b"]
    assert [accumulated[i]["name"] for i in sorted(accumulated)] == ["search", "fetch"]
    assert json.loads(accumulated[0]["arguments"]) == calls[0].arguments
    assert json.loads(accumulated[1]["arguments"]) == calls[1].arguments
    assert fragments > len(calls)  # arguments really arrive in pieces
    assert finish_reasons[-1] == "tool_calls"


def test_rate_limit_then_next_reply_succeeds(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Error(429, "slow down", retry_after=2), Reply("ok now"))

    with pytest.raises(openai.RateLimitError) as raised:
        ask(client)

    assert raised.value.response.headers["retry-after"] == "2"
    assert raised.value.body == {
        "message": "slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert ask(client).choices[0].message.content == "ok now"


def test_error_on_a_streamed_request_raises_before_iteration(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Error(429))

    with pytest.raises(openai.RateLimitError):
        ask(client, stream=True)


def test_server_error(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Error(500, "boom"))

    with pytest.raises(openai.InternalServerError) as raised:
        ask(client)

    assert "boom" in str(raised.value)


def test_slow_reply_trips_the_client_timeout(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Slow(30, then=Reply("too late")), Reply("on time"))

    with pytest.raises(openai.APITimeoutError):
        ask(client.with_options(timeout=0.2))

    # The server is still serving, and the slow reply was not left queued.
    assert ask(client).choices[0].message.content == "on time"


def test_slow_reply_answers_after_the_delay(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(Slow(0.05, then=Reply("eventually")))

    assert ask(client).choices[0].message.content == "eventually"


def test_requests_are_recorded_in_order(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.default = Reply("fine")
    follow_up: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "Sure?"},
    ]

    ask(client)
    client.chat.completions.create(model="gpt-other", messages=follow_up, stream=True).close()

    assert [r["model"] for r in llm.requests] == ["gpt-test", "gpt-other"]
    assert llm.requests[0]["messages"] == QUESTION
    assert llm.requests[1]["messages"] == follow_up
    assert llm.requests[1]["stream"] is True


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL_ID]


def test_empty_script_without_default_is_a_500(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match="no scripted response"):
        ask(client)


def test_echo_default_replies_with_the_last_user_message(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.default = Echo()
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "part"}]},
    ]

    completion = client.chat.completions.create(model="gpt-test", messages=messages)
    streamed = ask(client, stream=True)

    assert completion.choices[0].message.content == "second part"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == QUESTION_TEXT


def test_callable_step_computes_the_reply_from_the_request(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    llm.push(lambda body: Reply(f"{len(body['messages'])} message(s) to {body['model']}"))

    assert ask(client).choices[0].message.content == "1 message(s) to gpt-test"


def test_a_raising_callable_step_surfaces_as_a_500(llm: ScriptedLLM, client: openai.OpenAI) -> None:
    def broken(body: dict[str, Any]) -> Reply:
        raise KeyError("missing")

    llm.push(broken)

    with pytest.raises(openai.InternalServerError, match="KeyError"):
        ask(client)


def test_stop_closes_the_port() -> None:
    llm = ScriptedLLM().start()
    llm.default = Echo()
    with openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as client:
        assert ask(client).choices[0].message.content == QUESTION_TEXT
        llm.stop()
        with pytest.raises(openai.APIConnectionError):
            ask(client)


def test_stop_does_not_wait_out_a_slow_step() -> None:
    # stop() ends the 60 s delay instead of waiting it out; the caller gets an answer, not a hang.
    llm = ScriptedLLM().start()
    llm.push(Slow(60, then=Reply("never")))
    outcome: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0) as sdk:
            try:
                ask(sdk)
            except openai.APIError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10
    while not llm.requests and time.monotonic() < deadline:
        time.sleep(0.005)
    assert llm.requests, "the slow request never reached the server"

    llm.stop()
    caller.join(10)

    assert not caller.is_alive()
    assert [type(e) for e in outcome] == [openai.InternalServerError]
