"""The chat-model port and its adapter for any OpenAI-compatible endpoint (the `openai` package)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stores.errors import EventragError
from stores.telemetry import LLM_ERRORS


class LLMError(EventragError):
    """The model could not answer. `status_code` is what the API should answer with (502/503/504)."""

    status_code = 502


class LLMTimeoutError(LLMError):
    status_code = 504


class LLMUnavailableError(LLMError):
    """Rate limited or overloaded past the retry budget."""

    status_code = 503


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ChatReply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


class ChatModel(Protocol):
    """One completion of a conversation. Raises `LLMError` subclasses, never the client's own errors."""

    @property
    def model(self) -> str: ...

    def complete(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> ChatReply: ...

    def stream(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> Iterator[str | ChatReply]:
        """Text deltas as they arrive, then one final `ChatReply` (whole text and any tool calls)."""
        ...


class OpenAIChatModel:
    """Adapter over `openai.OpenAI`; the client reads OPENAI_API_KEY / OPENAI_BASE_URL unless given one.

    The SDK's own retry loop handles 429 (honouring Retry-After), 5xx and timeouts with exponential backoff
    (`max_retries`); whatever is left after that budget is mapped to an `LLMError`.
    """

    def __init__(
        self,
        model: str,
        *,
        client: Any | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        api_key: str | None = None,
    ) -> None:
        import openai

        self._model = model
        self._openai = openai
        # api_key None: the client reads OPENAI_API_KEY (and OPENAI_BASE_URL) itself.
        self.client = client or openai.OpenAI(timeout=timeout, max_retries=max_retries, api_key=api_key)

    @property
    def model(self) -> str:
        return self._model

    def _map(self, exc: Exception) -> LLMError:
        error = self._classify(exc)
        LLM_ERRORS.labels(type(error).__name__).inc()
        return error

    def _classify(self, exc: Exception) -> LLMError:
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return LLMTimeoutError(f"the language model did not answer in time: {exc}")
        if isinstance(exc, o.RateLimitError):
            return LLMUnavailableError(f"the language model is rate limited (429) after retries: {exc}")
        if isinstance(exc, o.APIStatusError) and exc.status_code in (502, 503, 529):
            return LLMUnavailableError(f"the language model is unavailable ({exc.status_code}): {exc}")
        if isinstance(exc, o.APIConnectionError):
            return LLMUnavailableError(f"cannot reach the language model: {exc}")
        return LLMError(f"the language model failed: {exc}")

    def complete(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> ChatReply:
        kwargs: dict[str, Any] = {"model": self._model, "messages": list(messages), "temperature": 0}
        if tools:
            kwargs["tools"] = list(tools)
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except self._openai.OpenAIError as exc:
            raise self._map(exc) from exc
        msg = resp.choices[0].message
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
            for c in (msg.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        return ChatReply(text=msg.content or "", tool_calls=calls)

    def stream(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> Iterator[str | ChatReply]:
        kwargs: dict[str, Any] = {
            "model": self._model,
            "messages": list(messages),
            "temperature": 0,
            "stream": True,
        }
        if tools:
            kwargs["tools"] = list(tools)
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        try:
            for chunk in self.client.chat.completions.create(**kwargs):
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta is None:
                    continue
                if delta.content:
                    text.append(delta.content)
                    yield delta.content
                # Tool calls arrive in fragments keyed by index: the id and name first, then the arguments.
                for tc in delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
        except self._openai.OpenAIError as exc:
            raise self._map(exc) from exc
        yield ChatReply(
            text="".join(text),
            tool_calls=[ToolCall(c["id"], c["name"], c["arguments"] or "{}") for _, c in sorted(calls.items())],
        )
