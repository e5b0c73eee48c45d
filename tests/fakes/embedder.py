"""A fast, deterministic stand-in for the embedding model (the consistency tests need speed, not meaning), and
a wrapper that counts what the real model is asked to embed.

Words are hashed into a fixed number of dimensions; the vector is L2-normalised, so texts sharing words are
close. Token counting splits on words and punctuation and adds two special tokens, like a BERT tokenizer.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Sequence

import numpy as np

from stores.embedding import TORCH_CALL_TOKENS
from stores.ports import Embedder
from stores.units import UnitVectors

_TOKEN = re.compile(r"\w+|[^\w\s]")


class HashEmbedder:
    def __init__(
        self, dimension: int = 64, max_tokens: int = 256, model_id: str = "test/hash-embedder", runs: int = 1
    ) -> None:
        self._dimension = dimension
        self._max_tokens = max_tokens
        self._model_id = model_id
        self._runs = runs
        self._lock = threading.Lock()
        self.embedded_texts = 0  # how many texts went through `embed_documents` (for the cache tests)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def call_tokens(self) -> int:
        return TORCH_CALL_TOKENS  # priced like the model it stands in for

    @property
    def runs(self) -> int:
        return self._runs

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_TOKEN.findall(t)) + 2 for t in texts]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        return self.count_tokens([text[a:b] for a, b in spans])

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self._dimension
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v[h % self._dimension] += 1.0 if (h >> 32) & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        if norm == 1.0 and not any(v):
            v[0] = 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:  # (`runs` > 1: called from several threads at once)
            self.embedded_texts += len(texts)
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        """Span vectors are the spans' own hash vectors (the real models pool token embeddings)."""
        vectors = self.embed_documents(texts)
        pooled: list[UnitVectors | None] = []
        for text, text_spans in zip(texts, spans, strict=True):
            rows = np.asarray([self._vector(text[a:b]) for a, b in text_spans], dtype=np.float32)
            pooled.append(UnitVectors(tuple(text_spans), rows.reshape(len(text_spans), self._dimension)))
        return vectors, pooled


class CountingEmbedder:
    """A real embedder that records every text it is asked to embed as a query (how often a question is
    embedded per answer); everything else is the wrapped model's."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.queries: list[str] = []
        self.documents: list[str] = []  # texts embedded as documents (outside a forward pass for units)

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    @property
    def call_tokens(self) -> int:
        return self.inner.call_tokens

    @property
    def runs(self) -> int:
        return self.inner.runs

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self.inner.token_offsets(text)

    def count_spans(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        return self.inner.count_spans(text, spans)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self.inner.embed_query(text)

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        return self.inner.embed_with_units(texts, spans)
