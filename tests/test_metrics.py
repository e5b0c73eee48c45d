"""Ranking metrics checked against arithmetic done by hand in the comments.

Shared example: ranked = [d3, d1, d7], qrels = {d1: 1, d7: 2}.
    log2(2) = 1, log2(3) = 1.5849625, log2(4) = 2, so 1/log2(3) = 0.6309298.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest

from app.evaluation.metrics import RetrievalScores, mean, mrr_at_k, ndcg_at_k, recall_at_k, score_run

RANKED = ["d3", "d1", "d7"]
QRELS = {"d1": 1, "d7": 2}


class TestNdcg:
    def test_graded_gain_with_log2_discount(self) -> None:
        # DCG  = 0/log2(2) + 1/log2(3) + 2/log2(4) = 0 + 0.6309298 + 1.0 = 1.6309298
        # IDCG = 2/log2(2) + 1/log2(3)             = 2 + 0.6309298       = 2.6309298
        # nDCG = 1.6309298 / 2.6309298 = 0.6199062
        assert ndcg_at_k(RANKED, QRELS, k=10) == pytest.approx(0.6199062, abs=1e-6)

    def test_cutoff_at_k(self) -> None:
        # top 2 = [d3, d1]: DCG = 0 + 1/log2(3) = 0.6309298
        # IDCG@2 = 2 + 0.6309298 = 2.6309298      -> 0.6309298 / 2.6309298 = 0.2398125
        assert ndcg_at_k(RANKED, QRELS, k=2) == pytest.approx(0.2398125, abs=1e-6)
        # top 1 = [d3], not relevant -> DCG 0
        assert ndcg_at_k(RANKED, QRELS, k=1) == 0.0

    def test_ideal_is_cut_at_k_too(self) -> None:
        # three relevant, k = 2: IDCG@2 = 1/1 + 1/log2(3); the ranking achieves exactly that -> 1.0
        assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1, "c": 1}, k=2) == pytest.approx(1.0)

    def test_ideal_order_scores_one(self) -> None:
        assert ndcg_at_k(["d7", "d1", "d3"], QRELS) == pytest.approx(1.0)

    def test_duplicates_count_once_and_do_not_use_up_a_rank(self) -> None:
        # [d1, d1, d7] dedups to [d1, d7]; top 2: DCG = 1/1 + 2/log2(3) = 1 + 1.2618595 = 2.2618595
        # IDCG@2 = 2.6309298 -> 0.8597187 (counting the copy would give [d1, d1] -> 1.6309298 / 2.6309298)
        assert ndcg_at_k(["d1", "d1", "d7"], QRELS, k=2) == pytest.approx(0.8597187, abs=1e-6)

    def test_no_relevant_retrieved(self) -> None:
        assert ndcg_at_k(["d3", "d4"], QRELS) == 0.0

    def test_no_relevant_judged(self) -> None:
        assert ndcg_at_k(["d1"], {"d1": 0}) == 0.0
        assert ndcg_at_k(["d1"], {}) == 0.0

    def test_negative_grade_counts_as_zero(self) -> None:
        # [d1, d2], qrels {d1: -1, d2: 1}: DCG = 0 + 1/log2(3) = 0.6309298, IDCG = 1/1 = 1
        assert ndcg_at_k(["d1", "d2"], {"d1": -1, "d2": 1}) == pytest.approx(0.6309298, abs=1e-6)


class TestRecall:
    def test_recall(self) -> None:
        # relevant = {d1, d7}; top 3 holds both -> 2/2; top 2 = [d3, d1] holds d1 -> 1/2
        assert recall_at_k(RANKED, QRELS, k=3) == 1.0
        assert recall_at_k(RANKED, QRELS, k=2) == 0.5
        assert recall_at_k(RANKED, QRELS, k=1) == 0.0

    def test_zero_grade_is_not_relevant(self) -> None:
        # relevant = {d1} only (d3 judged 0): top 1 = [d3] -> 0/1; top 2 -> 1/1
        assert recall_at_k(["d3", "d1"], {"d1": 1, "d3": 0}, k=1) == 0.0
        assert recall_at_k(["d3", "d1"], {"d1": 1, "d3": 0}, k=2) == 1.0

    def test_duplicates_count_once(self) -> None:
        # [d1, d1, d7] dedups to [d1, d7] -> both relevant in the top 2 -> 2/2 (not 1/2)
        assert recall_at_k(["d1", "d1", "d7"], QRELS, k=2) == 1.0

    def test_partial(self) -> None:
        # 3 relevant, 2 retrieved -> 2/3
        assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 2, "c": 1}) == pytest.approx(2 / 3)

    def test_no_relevant(self) -> None:
        assert recall_at_k(["d3"], QRELS) == 0.0
        assert recall_at_k(["d3"], {"d3": 0}) == 0.0


class TestMrr:
    def test_first_relevant_rank(self) -> None:
        # first relevant is d1 at rank 2 -> 1/2
        assert mrr_at_k(RANKED, QRELS) == 0.5

    def test_cutoff(self) -> None:
        # top 1 = [d3] holds nothing relevant
        assert mrr_at_k(RANKED, QRELS, k=1) == 0.0

    def test_duplicates_count_once(self) -> None:
        # [d3, d3, d1] dedups to [d3, d1]: d1 at rank 2 -> 1/2 (not 1/3), and inside k = 2
        assert mrr_at_k(["d3", "d3", "d1"], QRELS, k=2) == 0.5

    def test_no_relevant(self) -> None:
        assert mrr_at_k(["d3", "d4"], QRELS) == 0.0


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, mrr_at_k])
def test_k_must_be_positive(metric: Callable[[Sequence[str], Mapping[str, int], int], float]) -> None:
    with pytest.raises(ValueError):
        metric(RANKED, QRELS, 0)


def test_mean() -> None:
    assert mean([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert mean(iter([0.5])) == 0.5
    with pytest.raises(ValueError):
        mean([])


class TestScoreRun:
    def test_averages_over_judged_queries(self) -> None:
        run = {
            "q1": RANKED,
            "q2": ["x"],
            "q9": ["d1"],  # no qrels: ignored
        }
        qrels = {
            "q1": QRELS,
            "q2": {"x": 1},
            "q3": {"y": 1},  # judged but not in the run: counts as 0
            "q4": {},  # no judgments: not a judged query
        }
        # judged queries: q1, q2, q3 -> 3
        # nDCG@10:    q1 0.6199062, q2 1.0 (x at rank 1, only relevant), q3 0 -> 1.6199062 / 3 = 0.5399687
        # Recall@100: q1 1.0,       q2 1.0,                               q3 0 -> 2 / 3       = 0.6666667
        # MRR@10:     q1 0.5,       q2 1.0,                               q3 0 -> 1.5 / 3     = 0.5
        scores = score_run(run, qrels)
        assert scores.queries == 3
        assert scores.ndcg_at_10 == pytest.approx(0.5399687, abs=1e-6)
        assert scores.recall_at_100 == pytest.approx(2 / 3)
        assert scores.mrr_at_10 == pytest.approx(0.5)

    def test_query_with_only_zero_grades_counts_as_zero(self) -> None:
        # q1 = 1.0 on all three; q2 judged but nothing relevant -> 0; mean = 0.5
        scores = score_run({"q1": ["a"], "q2": ["b"]}, {"q1": {"a": 1}, "q2": {"b": 0}})
        assert scores == RetrievalScores(ndcg_at_10=0.5, recall_at_100=0.5, mrr_at_10=0.5, queries=2)

    def test_no_judged_queries(self) -> None:
        assert score_run({"q1": ["a"]}, {}) == RetrievalScores(0.0, 0.0, 0.0, queries=0)
