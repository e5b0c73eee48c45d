"""Counting many spans of one text in one tokenization (`stores.token_spans`) gives exactly the counts of
tokenizing each span alone: for the ONNX and the torch tokenizer, on text built to break it (control
characters BERT drops, separators Python calls whitespace, accents, CJK, special-token text, long words),
cut anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from stores.embedding import SentenceTransformerEmbedder
from stores.onnx_embedding import OnnxEmbedder
from stores.token_spans import SpanCounter

PIECES = [
    "cells",
    "Mitochondria",
    "IL-6",
    "p53",
    "(see",
    "Fig.",
    "3).",
    "café",
    "cafe\u0301",  # a combining accent, stripped
    "\u0301",
    "東京",  # CJK: a token each
    "[MASK]",
    "[SEP]x",
    "x" * 120,  # longer than WordPiece's 100 characters: [UNK]
    "naïve",
    "😀",
    "\x00",
    "\x07",  # control characters BERT drops
    "\ufffd",
]
SEPARATORS = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\x1c", "\u2028", "\xa0", "\u3000", "", "-", ".", " \x1c "]

texts = st.lists(st.tuples(st.sampled_from(PIECES), st.sampled_from(SEPARATORS)), min_size=1, max_size=30).map(
    lambda parts: "".join(p + s for p, s in parts)
)


@pytest.fixture(scope="module")
def onnx(onnx_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(onnx_dir)


def spans_of(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pairs = list(zip(points, points[1:], strict=False))
    return pairs + [(0, len(text)), (0, 0), (points[len(points) // 2], len(text))]  # overlapping too


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=12))
def test_onnx_spans_count_as_each_span_alone(onnx: OnnxEmbedder, text: str, cuts: list[int]) -> None:
    spans = spans_of(text, cuts)
    assert onnx.count_spans(text, spans) == onnx.count_tokens([text[a:b] for a, b in spans])


def test_a_cut_inside_a_word_is_counted_alone(onnx: OnnxEmbedder) -> None:
    # "Mitochondria" is mit ##och ##ond ##ria: cut after "Mitoch", the rest alone is 3 tokens, not the 2 of
    # the whole word's that lie there (a cut between two of a word's tokens is no cut between words).
    text = "The Mitochondria of cells"
    spans = [(4, 10), (10, 16), (4, 16), (0, 25)]
    assert onnx.count_spans(text, spans) == onnx.count_tokens([text[a:b] for a, b in spans])
    assert onnx.count_spans(text, [(10, 16)]) == [2 + 3]


def test_the_bert_tokenizers_count_spans_in_one_tokenization(
    onnx: OnnxEmbedder, embedder: SentenceTransformerEmbedder
) -> None:
    # Both tokenizers are all-MiniLM-L6-v2's BERT WordPiece: the one-tokenization path must be the one taken.
    counter, _ = onnx._tokenizers()
    assert SpanCounter.of(counter, onnx.count_tokens) is not None
    assert embedder._span_counter() is not None
    counter.enable_truncation(16)  # a tokenizer that truncates cannot count spans this way
    try:
        assert SpanCounter.of(counter, onnx.count_tokens) is None
    finally:
        counter.no_truncation()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_torch_spans_count_as_each_span_alone(
    embedder: SentenceTransformerEmbedder, text: str, cuts: list[int]
) -> None:
    spans = spans_of(text, cuts)
    assert embedder.count_spans(text, spans) == embedder.count_tokens([text[a:b] for a, b in spans])


def test_chunks_are_the_same_counted_either_way(onnx: OnnxEmbedder) -> None:
    text = (
        "# Vaccination\n\nMitochondria are the powerhouse of the cell. They make ATP from glucose (see Fig. 3). " * 12
        + "\n\n## Results\n\n"
        + "In 2020, 35% of the cells\x1cwere studied; naïve café 東京 [MASK] results. " * 20
        + "x" * 900
    )

    def chunker(count_spans: bool) -> Chunker:
        return Chunker(
            count_tokens=onnx.count_tokens,
            token_offsets=onnx.token_offsets,
            count_spans=onnx.count_spans if count_spans else None,
            chunk_tokens=64,
            overlap_tokens=16,
        )

    assert chunker(True).chunk(text) == chunker(False).chunk(text)
