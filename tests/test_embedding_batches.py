"""How `embed_with_cache` cuts the texts it embeds into model calls (`stores.embedding.padded_batches`).

- the cut is the cheapest grouping of the texts into batches of at most `batch_size` (padded tokens plus a
  price per call), checked against every grouping on small inputs; on any order, the cheapest consecutive cut;
- it never pads more than the fixed cut into full batches, and puts a short batch where it saves the most;
- through `embed_with_cache`: every batch fits, every missing text is embedded exactly once and its vector
  comes back to its place, `whole_batches_only` still embeds the first texts in input order, a multiple of
  `batch_size`, and the real model gives the same vectors cut either way.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stores.embedding import TORCH_CALL_TOKENS, SentenceTransformerEmbedder, embed_with_cache, padded_batches
from stores.onnx_embedding import OnnxEmbedder
from stores.ports import Embedder
from stores.units import UnitVectors
from tests.fakes.embedder import CountingEmbedder, HashEmbedder

lengths_st = st.lists(st.integers(1, 300), max_size=6)


def batch_cost(batch: Sequence[int], overhead: int) -> int:
    return len(batch) * max(batch) + overhead


def cut(lengths: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    starts = list(itertools.accumulate(sizes, initial=0))
    return [list(lengths[a:b]) for a, b in itertools.pairwise(starts)]


def fixed_cut(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - b) for b in range(0, n, batch_size)]


def padded(lengths: Sequence[int], sizes: Sequence[int]) -> int:
    return sum(len(b) * max(b) for b in cut(lengths, sizes))


def groupings(items: list[int]) -> Iterator[list[list[int]]]:
    """Every partition of `items` into non-empty groups."""
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for part in groupings(rest):
        yield [[head], *part]
        for g in range(len(part)):
            yield [*part[:g], [head, *part[g]], *part[g + 1 :]]


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, batch_size=st.integers(1, 4), overhead=st.integers(0, 600))
def test_the_cut_is_the_cheapest_grouping_of_the_sorted_texts(
    lengths: list[int], batch_size: int, overhead: int
) -> None:
    ordered = sorted(lengths, reverse=True)
    sizes = padded_batches(ordered, batch_size, overhead)
    assert sum(sizes) == len(ordered) and all(1 <= s <= batch_size for s in sizes)
    best = min(
        (
            sum(batch_cost(g, overhead) for g in part)
            for part in groupings(ordered)
            if all(len(g) <= batch_size for g in part)
        ),
        default=0,
    )
    assert sum(batch_cost(b, overhead) for b in cut(ordered, sizes)) == best


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, batch_size=st.integers(1, 4), overhead=st.integers(0, 600))
def test_on_any_order_the_cut_is_the_cheapest_consecutive_one(
    lengths: list[int], batch_size: int, overhead: int
) -> None:
    n = len(lengths)
    sizes = padded_batches(lengths, batch_size, overhead)
    every_cut = (
        [b - a for a, b in itertools.pairwise([0, *inner, n])]
        for k in range(n)
        for inner in itertools.combinations(range(1, n), k)
    )
    best = min(
        (sum(batch_cost(b, overhead) for b in cut(lengths, s)) for s in every_cut if max(s) <= batch_size),
        default=0,
    )
    assert sum(batch_cost(b, overhead) for b in cut(lengths, sizes)) == best


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 256), max_size=200),
    batch_size=st.integers(1, 40),
    overhead=st.sampled_from([0, 1, 64, TORCH_CALL_TOKENS, 10_000]),
)
def test_the_cut_pads_no_more_than_full_batches(lengths: list[int], batch_size: int, overhead: int) -> None:
    ordered = sorted(lengths, reverse=True)
    sizes = padded_batches(ordered, batch_size, overhead)
    fixed = fixed_cut(len(ordered), batch_size)
    assert padded(ordered, sizes) <= padded(ordered, fixed)
    # ... and costs no more with its extra calls counted: a cut is made only where it saves their price.
    assert padded(ordered, sizes) + overhead * len(sizes) <= padded(ordered, fixed) + overhead * len(fixed)


def test_the_short_batch_goes_where_it_saves_the_most() -> None:
    # 33 texts in batches of 32: the fixed cut pads 31 texts to the longest and calls once more for the
    # shortest; the same two calls with the longest alone pad nothing.
    lengths = [200, *([100] * 32)]
    assert padded_batches(lengths, 32, TORCH_CALL_TOKENS) == [1, 32]
    assert padded(lengths, [1, 32]) == 3_400 < padded(lengths, fixed_cut(33, 32)) == 6_500
    # A cut that saves less padding than a call costs is not made; one that saves more is.
    assert padded_batches([120, *([100] * 31)], 32, call_overhead=700) == [32]
    assert padded_batches([130, *([100] * 31)], 32, call_overhead=700) == [1, 31]
    assert padded_batches([], 8, TORCH_CALL_TOKENS) == []
    with pytest.raises(ValueError, match="batch_size"):
        padded_batches([10], 0, TORCH_CALL_TOKENS)
    with pytest.raises(ValueError, match="call_overhead"):
        padded_batches([10], 4, call_overhead=-1)


class BatchRecorder(CountingEmbedder):
    """An embedder that records the texts of every model call it passes on to `inner`."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self.batches: list[list[str]] = []

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.batches.append(list(texts))
        return super().embed_documents(texts)

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        self.batches.append(list(texts))
        return super().embed_with_units(texts, spans)


def random_texts(rng: random.Random, n: int) -> list[str]:
    """Texts of 1 to 250 words, most short and a few long (lognormal), one in ten a repeat."""
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.1:
            texts.append(rng.choice(texts))
        else:
            words = min(250, int(rng.lognormvariate(3.5, 1.0)) + 1)
            texts.append(" ".join(f"w{rng.randrange(10_000)}" for _ in range(words)))
    return texts


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batch_size", [1, 8, 32])
def test_every_missing_text_is_embedded_once_in_batches_that_fit(seed: int, batch_size: int) -> None:
    rng = random.Random(seed)
    hashed = HashEmbedder(max_tokens=256)
    texts = random_texts(rng, rng.randrange(1, 150))
    recorder = BatchRecorder(hashed)
    vectors, stats = embed_with_cache(recorder, None, texts, batch_size=batch_size)
    sent = [t for b in recorder.batches for t in b]
    assert sorted(sent) == sorted(set(texts)) and stats.embedded == len(set(texts))
    assert all(1 <= len(b) <= batch_size for b in recorder.batches)
    # Each text's own vector, at its own place (the cut reorders texts; the answer must not).
    assert [v.vector if v is not None else None for v in vectors] == [hashed.embed_query(t) for t in texts]
    # No more padding than the fixed cut of the same texts, longest first, into full batches.
    lengths = [min(n, 256) for n in hashed.count_tokens(sent)]
    sizes = [len(b) for b in recorder.batches]
    assert lengths == sorted(lengths, reverse=True)
    assert padded(lengths, sizes) <= padded(lengths, fixed_cut(len(sent), batch_size))


@pytest.mark.parametrize("seed", range(6))
def test_whole_batches_only_embeds_the_first_texts_a_multiple_of_the_batch(seed: int) -> None:
    rng = random.Random(seed)
    texts = list(dict.fromkeys(random_texts(rng, rng.randrange(1, 120))))  # distinct: one text, one place
    recorder = BatchRecorder(HashEmbedder(max_tokens=256))
    vectors, stats = embed_with_cache(recorder, None, texts, batch_size=8, whole_batches_only=True)
    whole = len(texts) - len(texts) % 8
    # The first `whole` texts in input order, whatever their lengths; the rest wait.
    assert [v is not None for v in vectors] == [i < whole for i in range(len(texts))]
    assert sorted(t for b in recorder.batches for t in b) == sorted(texts[:whole]) and stats.embedded == whole
    assert all(1 <= len(b) <= 8 for b in recorder.batches)


def test_a_text_longer_than_the_window_pads_its_batch_to_the_window() -> None:
    # Counted 1,000 tokens, truncated to 256 by the model: alone, it would save the others no padding.
    texts = ["a " * 998, *(" ".join(["b"] * 250) + f" {i}" for i in range(7))]
    recorder = BatchRecorder(HashEmbedder(max_tokens=256))
    embed_with_cache(recorder, None, texts, batch_size=8)
    assert [len(b) for b in recorder.batches] == [8]


def test_the_real_model_gives_the_same_vectors_cut_either_way(embedder: SentenceTransformerEmbedder) -> None:
    short = [f"Visitors park on level {n}." for n in ("one", "two", "three", "four", "five", "six", "seven")]
    long = " ".join(["The mitochondrion makes ATP from glucose and oxygen in the cell."] * 18)
    texts = [short[0], long, *short[1:]]
    assert embedder.count_tokens([long])[0] >= embedder.max_tokens  # padding the short ones to it is dear
    recorder = BatchRecorder(embedder)
    vectors, _ = embed_with_cache(recorder, None, texts, batch_size=8)
    assert [len(b) for b in recorder.batches] == [1, 7] and recorder.batches[0] == [long]
    got = np.asarray([v.vector for v in vectors if v is not None])
    assert got.shape == (len(texts), embedder.dimension)
    # The fixed cut (all eight in one call, padded to the long one) and each text alone agree with it.
    assert np.allclose(got, np.asarray(embedder.embed_documents(texts)), atol=1e-5)
    assert np.allclose(got, np.asarray([embedder.embed_documents([t])[0] for t in texts]), atol=1e-5)


class MeetingEmbedder(BatchRecorder):
    """The first `runs` model calls each wait for the others to be running at the same time (a barrier):
    calls made one after the other never meet, and the barrier breaks."""

    def __init__(self, inner: Embedder) -> None:
        super().__init__(inner)
        self.meeting = threading.Barrier(inner.runs, timeout=10)
        self._calls = itertools.count()

    def _meet(self) -> None:
        if next(self._calls) < self.meeting.parties:
            self.meeting.wait()

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self._meet()
        return super().embed_documents(texts)

    def embed_with_units(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> tuple[list[list[float]], list[UnitVectors | None]]:
        self._meet()
        return super().embed_with_units(texts, spans)


@pytest.mark.parametrize("seed", range(4))
def test_runs_embed_their_batches_at_once_and_every_vector_comes_back_to_its_place(seed: int) -> None:
    rng = random.Random(seed)
    texts = [" ".join(f"w{rng.randrange(10_000)}" for _ in range(40)) + f" {n}" for n in range(32)]  # 4 x 8
    together = MeetingEmbedder(HashEmbedder(max_tokens=256, runs=2))
    vectors, stats = embed_with_cache(together, None, texts, batch_size=8)
    assert sorted(len(b) for b in together.batches) == [8, 8, 8, 8] and not together.meeting.broken
    alone = [v.vector for v in embed_with_cache(HashEmbedder(max_tokens=256), None, texts, batch_size=8)[0] if v]
    assert [v.vector for v in vectors if v] == alone and stats.embedded == len(texts)


def test_a_failing_call_among_runs_fails_the_embedding() -> None:
    class Failing(HashEmbedder):
        def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
            if any(t.startswith("bad") for t in texts):
                raise RuntimeError("out of memory")
            return super().embed_documents(texts)

    texts = [f"good text {n}" for n in range(8)] + [f"bad text {n}" for n in range(8)]
    with pytest.raises(RuntimeError, match="out of memory"):
        embed_with_cache(Failing(max_tokens=256, runs=2), None, texts, batch_size=8)


def test_the_onnx_model_gives_the_same_vectors_in_two_runs(onnx_dir: Path) -> None:
    texts = [f"Visitors park on level {n}; the lift is by the east door." * (1 + n % 5) for n in range(24)]
    spans = [[(0, 8), (9, len(t))] for t in texts]
    one = OnnxEmbedder(onnx_dir, quantized=True, batch_size=8)
    two = OnnxEmbedder(onnx_dir, quantized=True, batch_size=8, runs=2)
    assert two.runs == 2 and two._threads == max(1, (os.cpu_count() or 1) // 2)
    want, _ = embed_with_cache(one, None, texts, batch_size=8, spans=spans)
    got, _ = embed_with_cache(MeetingEmbedder(two), None, texts, batch_size=8, spans=spans)
    for w, g in zip(want, got, strict=True):
        assert w is not None and g is not None and w.units is not None and g.units is not None
        assert np.allclose(w.vector, g.vector, atol=1e-6)
        assert np.allclose(w.units.vectors, g.units.vectors, atol=1e-6)
