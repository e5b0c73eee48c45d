"""The synthetic sparse vectors of `bench.search` (and of the online optimize bench): valid vectors of each
shape, and a text shape that keeps the statistics its docstring states it was calibrated to (a change to
its constants that moved them would make the search figures of docs/performance.md mean something else)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bench.__main__ import parse_args
from bench.search import QUERY_TERMS, TERM_SHAPES, VOCAB, Terms


@pytest.mark.parametrize("shape", TERM_SHAPES)
def test_every_shape_gives_valid_sparse_vectors(shape: str) -> None:
    terms = Terms(shape)
    rng = np.random.default_rng(1)
    for indices, values in [*terms.documents(rng, 300), *(terms.query(rng) for _ in range(100))]:
        assert indices and len(indices) == len(values)
        assert all(a < b for a, b in zip(indices, indices[1:], strict=False))
        assert all(0 <= i < VOCAB for i in indices) and all(v > 0 for v in values)


def test_the_text_shape_has_the_statistics_it_was_calibrated_to() -> None:
    terms, rng, n = Terms("text"), np.random.default_rng(3), 3000
    docs = terms.documents(rng, n)
    queries = [terms.query(rng) for _ in range(300)]
    df = Counter(i for indices, _ in docs for i in indices)
    by_rank = [c / n for _, c in df.most_common()]
    assert 60 <= np.mean([len(indices) for indices, _ in docs]) <= 76  # 68 stated
    assert 0.45 <= by_rank[0] <= 0.60 and 0.05 <= by_rank[99] <= 0.11  # 54% and 8% stated
    assert 0.6 <= np.mean([sum(df[i] for i in q) / n for q, _ in queries]) <= 0.9  # 0.74 stated
    assert all(QUERY_TERMS[0] <= len(q) <= QUERY_TERMS[1] for q, _ in queries)
    assert all(v == 1.0 for _, values in queries for v in values)
    # BM25 values, not one weight for all: chunks rarely tie on a term.
    values = [v for _, vs in docs for v in vs]
    assert len(set(values)) > 500 and np.percentile(values, 95) > 1.5 * np.percentile(values, 5)


def test_the_flat_shape_gives_every_term_one_weight() -> None:
    docs = Terms("flat").documents(np.random.default_rng(2), 200)
    assert {v for _, values in docs for v in values} == {1.0}


def test_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown term shape 'bm25'"):
        Terms("bm25")
    with pytest.raises(SystemExit):
        parse_args(["--terms", "bm25"])
    assert parse_args([])[0].terms == "text"
