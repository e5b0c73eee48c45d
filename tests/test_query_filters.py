"""Filters, workspace isolation, score thresholds and document grouping, through POST /query.

The real model, Qdrant local mode and the real HTTP stack; hybrid search unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import KEY_BETA, SECRET_BETA, Harness
from tests.fakes.webhooks import file_event

RARE = "zyxomorphic"  # a made-up word: in beta's document only

DOCS: list[dict[str, Any]] = [
    {
        "file_id": "leave",
        "path": "handbook/leave.md",
        "metadata": {"team": "hr", "year": 2026},
        "content": "# Leave policy\n\nEvery employee gets 25 days of paid annual leave per calendar year.\n",
    },
    {
        "file_id": "travel",
        "path": "handbook/travel.md",
        "metadata": {"team": "finance", "year": 2025},
        "content": "# Travel policy\n\nTrain tickets are reimbursed in second class. Flights need approval.\n",
    },
    {
        "file_id": "deploy",
        "path": "engineering/deploy.md",
        "metadata": {"team": "platform", "year": 2026},
        "content": "# Deployment policy\n\nProduction deploys happen on weekdays before 3 pm, never on Fridays.\n",
    },
    {
        "file_id": "oncall",
        "path": "engineering/oncall.html",
        "metadata": {"team": "platform", "year": 2026},
        "content_type": "text/html",
        "content": "<html><head><title>On-call policy</title></head><body><p>The on-call engineer answers"
        " pages within 15 minutes, day and night.</p></body></html>",
    },
    {
        "file_id": "handover",
        "path": "handbook-archive/handover.md",
        "metadata": {"team": "hr", "year": 2020},
        "content": "# Handover policy\n\nBefore leave, hand your open tasks over to a named colleague.\n",
    },
]

QUESTION = "What does the policy say?"


@pytest.fixture
def indexed(make_harness: Callable[..., Harness]) -> Harness:
    """Five acme documents and one beta document that alone contains the rare word.

    The answerer's relevance bar is off (min_score -1), so what comes back is decided by search and its
    filters alone: an extractive answer cites every passage found, up to `top_k`.
    """
    h = make_harness(min_score=-1.0)
    for doc in DOCS:
        extra = {k: v for k, v in doc.items() if k not in ("file_id", "content")}
        extra.setdefault("content_type", "text/markdown")
        r = h.post_event(file_event("created", doc["file_id"], content=doc["content"], version=1, **extra))
        assert r.status_code == 202, r.text
    r = h.post_event(
        file_event(
            "created",
            "beta-secret",
            workspace="beta",
            version=1,
            path="handbook/secret.md",
            content=f"# Secret policy\n\nThe {RARE} reactor is calibrated every Tuesday with {RARE} crystals.\n",
        ),
        secret=SECRET_BETA,
    )
    assert r.status_code == 202, r.text
    assert h.drain() == len(DOCS) + 1
    return h


def file_ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.text
    return {c["file_id"] for c in response.json()["citations"]}


@pytest.mark.parametrize("mode", ["hybrid", "sparse"])
def test_a_term_only_in_another_workspace_never_comes_back(indexed: Harness, mode: str) -> None:
    question = f"How is the {RARE} reactor calibrated with {RARE} crystals?"
    # The owner finds it, so the word is indexed and matchable...
    assert "beta-secret" in file_ids(indexed.query(question, key=KEY_BETA, mode=mode, top_k=10))
    # ...but for acme it is not there: nothing of beta's, and sparse search (terms only) finds nothing at all.
    acme = indexed.query(question, mode=mode, top_k=50)
    assert "beta-secret" not in file_ids(acme)
    assert RARE not in acme.text
    if mode == "sparse":
        assert acme.json()["citations"] == [] and acme.json()["covered"] is False
    # Filters that would match beta's document by path or metadata do not open a way in either.
    for filters in ({"path_prefix": "handbook/secret.md"}, {"file_id": ["beta-secret"]}):
        res = indexed.query(question, mode=mode, top_k=50, filters=filters)
        assert res.json()["citations"] == [], filters


@pytest.mark.parametrize(
    ("filters", "allowed"),
    [
        ({"path_prefix": "engineering/"}, {"deploy", "oncall"}),
        ({"path_prefix": "engineering"}, {"deploy", "oncall"}),  # a folder with or without the slash
        ({"path_prefix": "handbook/"}, {"leave", "travel"}),  # not handbook-archive/: folders, not strings
        ({"path_prefix": "handbook/travel.md"}, {"travel"}),  # an exact path
        ({"content_type": ["text/html"]}, {"oncall"}),
        ({"content_type": ["text/markdown"]}, {"leave", "travel", "deploy", "handover"}),
        ({"file_id": ["leave", "deploy"]}, {"leave", "deploy"}),
        ({"metadata": {"team": "hr"}}, {"leave", "handover"}),
        ({"metadata": {"team": ["hr", "finance"]}}, {"leave", "travel", "handover"}),
        ({"metadata": {"team": "platform", "year": 2026}}, {"deploy", "oncall"}),
        ({"metadata": {"year": 2020}}, {"handover"}),
        ({"path_prefix": "handbook/", "metadata": {"team": "hr"}}, {"leave"}),  # filters combine with AND
    ],
)
def test_filters_restrict_hybrid_results(indexed: Harness, filters: dict[str, Any], allowed: set[str]) -> None:
    found = file_ids(indexed.query(QUESTION, mode="hybrid", top_k=20, filters=filters))
    assert found == allowed  # top_k 20: every allowed document is cited, nothing else


def test_filters_apply_in_every_mode(indexed: Harness) -> None:
    for mode in ("dense", "sparse", "hybrid"):
        found = file_ids(indexed.query(QUESTION, mode=mode, top_k=20, filters={"metadata": {"team": "platform"}}))
        assert found == {"deploy", "oncall"}, mode


def test_a_filter_matching_nothing_finds_nothing(indexed: Harness) -> None:
    res = indexed.query(QUESTION, mode="hybrid", filters={"metadata": {"team": "legal"}})
    assert res.json()["citations"] == [] and res.json()["covered"] is False


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_score_threshold_drops_weaker_passages(indexed: Harness, mode: str) -> None:
    """The threshold applies to `rank_score`, the mode's own score: cosine, BM25, or the fused score."""
    question = "How many days of paid annual leave do employees get?"
    everything = indexed.query(question, mode=mode, top_k=20).json()["citations"]
    scores = [c["rank_score"] for c in everything]
    assert len(scores) >= 2 and scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    threshold = (scores[0] + scores[1]) / 2
    kept = indexed.query(question, mode=mode, top_k=20, score_threshold=threshold).json()["citations"]
    assert [c["file_id"] for c in kept] == ["leave"]
    assert kept[0]["rank_score"] >= threshold
    # Above every score: nothing is left, and the answer says the documents do not cover it.
    none = indexed.query(question, mode=mode, score_threshold=scores[0] + 1.0).json()
    assert none["citations"] == [] and none["covered"] is False


def test_group_by_document_keeps_the_best_passage_of_each_file(make_harness: Callable[..., Harness]) -> None:
    # Small chunks, so one file about the question has several passages.
    h = make_harness(chunking={"chunk_tokens": 40, "overlap_tokens": 0})
    long_doc = "# Annual leave\n\n" + "\n\n".join(
        f"Rule {i}: annual leave requests for {month} are approved by your manager within {i + 2} working days."
        for i, month in enumerate(["January", "February", "March", "April", "May", "June"])
    )
    h.post_event(file_event("created", "long", path="leave-rules.md", content=long_doc, version=1))
    h.post_event(
        file_event(
            "created",
            "short",
            path="leave-summary.md",
            version=1,
            content="# Leave summary\n\nAnnual leave requests need a manager's approval.",
        )
    )
    assert h.drain() == 2
    assert h.get("/documents/long").json()["chunk_count"] >= 4
    question = "Who approves annual leave requests?"

    passages = h.query(question, mode="hybrid", top_k=5).json()["citations"]
    assert [c["file_id"] for c in passages].count("long") >= 2

    grouped = h.query(question, mode="hybrid", top_k=5, group_by_document=True).json()["citations"]
    ids = [c["file_id"] for c in grouped]
    assert sorted(ids) == ["long", "short"]
    # The passage kept for a file is its best one: the first of that file in the ungrouped ranking.
    best_long = next(c for c in passages if c["file_id"] == "long")
    kept_long = next(c for c in grouped if c["file_id"] == "long")
    assert (kept_long["start"], kept_long["end"]) == (best_long["start"], best_long["end"])
