"""Counting many spans of one text in one tokenization (`stores.token_spans`) gives exactly the counts of
tokenizing each span alone: for the ONNX and the torch tokenizer, on text built to break it (control
characters BERT drops, separators Python calls whitespace, accents, CJK, special-token text, long words),
cut anywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from stores.embedding import SentenceTransformerEmbedder
from stores.onnx_embedding import OnnxEmbedder
from stores.token_spans import SpanCounter, SpanTokens
from tests.conftest import Harness
from tests.fakes.embedder import CountingEmbedder
from tests.fakes.webhooks import file_event

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


PREFIXES = st.sampled_from(["notes.md", "Vaccination (papers/vax.md)", "Café 東京 (x/y.txt)", "a\x07b", "x" * 120])


def _encoded(onnx: OnnxEmbedder, text: str) -> SpanTokens:
    _, encoder = onnx._tokenizers()
    encoder.no_padding()
    try:
        e = encoder.encode(text)
    finally:
        encoder.enable_padding(pad_id=onnx._pad_id, pad_token="[PAD]")
    return SpanTokens(list(e.ids), [(int(a), int(b)) for a, b in e.offsets])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=12), prefix=PREFIXES)
def test_span_tokens_are_what_the_encoder_gives_for_the_embedded_text(
    onnx: OnnxEmbedder, text: str, cuts: list[int], prefix: str
) -> None:
    spans = spans_of(text, cuts)
    given_tokens = onnx.span_tokens(text, spans, prefix)
    assert len(given_tokens) == len(spans)
    for (a, b), tokens in zip(spans, given_tokens, strict=True):
        if tokens is not None:  # (None: the encoder tokenizes that one itself)
            assert tokens == _encoded(onnx, f"{prefix}\n{text[a:b]}")


def test_span_tokens_are_given_for_cuts_at_whitespace_and_not_inside_a_word(onnx: OnnxEmbedder) -> None:
    text = "The Mitochondria of cells"
    tokens = onnx.span_tokens(text, [(0, 3), (4, 16), (4, 10), (0, 25)], "cells.md")
    assert [t is not None for t in tokens] == [True, True, False, True]
    # Longer than the window once the prefix is added: the encoder would truncate, so none is given.
    long = "word " * 300
    assert onnx.span_tokens(long, [(0, len(long))], "p") == [None]


def test_vectors_from_span_tokens_are_bit_for_bit_those_of_the_encoder(onnx: OnnxEmbedder) -> None:
    text = (
        "# Vaccination\n\nMitochondria are the powerhouse of the cell. They make ATP (see Fig. 3).\n\n"
        "In 2020, 35% of the naïve café 東京 cells were studied.\tResults differ. " * 3
    )
    cuts = [0, 15, 88, 150, 260, len(text)]
    spans = list(zip(cuts, cuts[1:], strict=False))
    prefix = "Vaccination (vax.md)"
    tokens = onnx.span_tokens(text, spans, prefix)
    assert all(t is not None for t in tokens)
    embedded = [f"{prefix}\n{text[a:b]}" for a, b in spans]
    units = [[(len(prefix) + 1, len(prefix) + 1 + b - a)] for a, b in spans]
    reused, reused_units = onnx.embed_tokens_with_units(embedded, units, tokens)
    fresh, fresh_units = onnx.embed_with_units(embedded, units)
    assert np.array_equal(np.asarray(reused), np.asarray(fresh))
    for r, f in zip(reused_units, fresh_units, strict=True):
        assert r is not None and f is not None and r.spans == f.spans
        assert np.array_equal(r.vectors, f.vectors)


class _Recording(OnnxEmbedder):
    """The real ONNX embedder, remembering what it gave each text, and how many batches came with tokens."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.out: dict[str, tuple[list[float], Any]] = {}
        self.given = 0

    def embed_tokens_with_units(self, texts: Any, spans: Any, tokens: Any) -> Any:
        self.given += sum(t is not None for t in tokens)
        vectors, pooled = super().embed_tokens_with_units(texts, spans, tokens)
        self.out.update(zip(texts, zip(vectors, pooled, strict=True), strict=True))
        return vectors, pooled


class _Hidden(CountingEmbedder):
    """The same model without `TokenReuse`: every chunk is tokenized by the encoder."""

    def __init__(self, inner: _Recording) -> None:
        super().__init__(inner)
        self.recording = inner

    def embed_with_units(self, texts: Any, spans: Any) -> Any:
        return self.recording.embed_tokens_with_units(texts, spans, [None] * len(texts))


def test_the_worker_embeds_from_the_documents_tokens_and_indexes_the_same_vectors(
    make_harness: Callable[..., Harness], onnx_dir: Path, tmp_path: Path
) -> None:
    docs = {
        "vax": "# Vaccination\n\nMitochondria are the powerhouse of the cell. They make ATP (see Fig. 3).\n\n" * 4,
        "cafe": "Naïve café 東京 results.\tIn 2020, 35% of the cells\x1cwere studied. " * 30,
        "long": "Results differ between cohorts, as the tables show. " * 80,
    }
    runs = []
    for hide in (False, True):
        model = _Recording(onnx_dir)
        h = make_harness(
            model=_Hidden(model) if hide else model, embedding_backend="onnx", data_dir=tmp_path / f"hidden-{hide}"
        )
        for file_id, text in docs.items():
            assert h.post_event(file_event("created", file_id, path=f"{file_id}.md", content=text)).status_code == 202
        h.drain()
        runs.append(model)
    reused, fresh = runs
    assert reused.given > 0 and fresh.given == 0
    assert reused.given == len(reused.out)  # every chunk of these came with its tokens
    assert reused.out.keys() == fresh.out.keys()
    for text, (vector, units) in reused.out.items():
        assert vector == fresh.out[text][0]
        assert units.spans == fresh.out[text][1].spans and np.array_equal(units.vectors, fresh.out[text][1].vectors)
