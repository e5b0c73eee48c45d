"""Ranking metrics over BEIR-style runs and relevance judgments (pure functions, no I/O).

Shapes, as BEIR loads them:

- a ranked list is document ids, best first;
- `qrels` for one query maps document id -> graded relevance; a document is relevant when its grade is
  > 0, and an unjudged document counts as grade 0;
- a run maps query id -> ranked list; the full qrels map query id -> that query's qrels.

Shared conventions:

- A document id repeated in a ranked list counts only at its first (best) position; later copies are
  dropped *before* the cut at k, so they neither earn gain twice nor use up a rank.
- nDCG uses linear gain, `DCG = sum(rel_i / log2(i + 2))` for 0-based rank i, the trec_eval `ndcg_cut`
  convention that pytrec_eval (and so BEIR) reports. Negative grades count as 0.
- A query with no relevant document scores 0.0 on every metric (rather than an undefined 0/0).
- k must be >= 1; anything else raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def _top_k_unique(ranked: Sequence[str], k: int) -> list[str]:
    """First k distinct ids of `ranked`, each at its first position."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: set[str] = set()
    top: list[str] = []
    for doc_id in ranked:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        top.append(doc_id)
        if len(top) == k:
            break
    return top


def _gain(qrels: Mapping[str, int], doc_id: str) -> int:
    return max(qrels.get(doc_id, 0), 0)


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Normalised DCG of the top k: DCG over the ideal DCG of the top k grades in `qrels`."""
    top = _top_k_unique(ranked, k)
    ideal_gains = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    if ideal == 0:
        return 0.0
    dcg = sum(_gain(qrels, doc_id) / math.log2(i + 2) for i, doc_id in enumerate(top))
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    """Share of the query's relevant documents that appear in the top k."""
    top = _top_k_unique(ranked, k)
    relevant = {doc_id for doc_id, grade in qrels.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(top)) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank (1-based) of the first relevant document in the top k; 0.0 if there is none."""
    for rank, doc_id in enumerate(_top_k_unique(ranked, k), start=1):
        if _gain(qrels, doc_id) > 0:
            return 1.0 / rank
    return 0.0


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (math.fsum, so long runs do not drift). Raises ValueError when empty."""
    items = list(values)
    if not items:
        raise ValueError("mean of no values")
    return math.fsum(items) / len(items)


@dataclass(frozen=True, slots=True)
class RetrievalScores:
    """Metrics averaged over `queries` judged queries (all 0.0 when `queries` is 0)."""

    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> RetrievalScores:
    """Average nDCG@10, Recall@100 and MRR@10 over every query with a non-empty qrels entry.

    A judged query missing from `run` counts as an empty ranking (0.0 on all three), so a retriever cannot
    raise its score by skipping hard queries. Run entries for queries without qrels are ignored. A judged
    query whose grades are all 0 is counted, scoring 0.0.
    """
    judged = [query_id for query_id, judgments in qrels.items() if judgments]
    if not judged:
        return RetrievalScores(ndcg_at_10=0.0, recall_at_100=0.0, mrr_at_10=0.0, queries=0)
    rankings = [(run.get(query_id, ()), qrels[query_id]) for query_id in judged]
    return RetrievalScores(
        ndcg_at_10=mean(ndcg_at_k(ranked, judgments, 10) for ranked, judgments in rankings),
        recall_at_100=mean(recall_at_k(ranked, judgments, 100) for ranked, judgments in rankings),
        mrr_at_10=mean(mrr_at_k(ranked, judgments, 10) for ranked, judgments in rankings),
        queries=len(judged),
    )
