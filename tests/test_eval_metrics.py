"""`eventrag eval` on a tiny made-up BEIR dataset, its figures checked against arithmetic done by hand.

Sparse (BM25) rankings are predictable by hand: a document that shares no term with the query is never
returned, and one that shares every query term ranks above one that shares a single term. So the sparse
figures are exact; dense and hybrid rank every document of a tiny corpus, so their recall@100 is 1.

The dataset (query -> judged documents, grades):

- q1 "Where do zebras migrate?" -> z1 (grade 2), z2 (grade 1). Only z1 mentions zebras or migration, so
  sparse returns [z1]:        DCG = 2/log2(2) = 2;  IDCG = 2 + 1/log2(3) = 2.6309298
                              nDCG@10 = 0.7601872;  recall@100 = 1/2;  MRR@10 = 1
- q2 "volcano eruption lava" -> v2 (grade 1). v1 has all three terms, v2 only "lava", so sparse returns
  [v1, v2]:                   nDCG@10 = (1/log2(3)) / 1 = 0.6309298;  recall@100 = 1;  MRR@10 = 1/2
- q3 "quantum entanglement experiments" -> c1. No document has any of the terms: nothing is returned,
  every metric is 0.
- q4 has no judgments in the split: it is not scored.

Means over the three judged queries: nDCG@10 = (0.7601872 + 0.6309298 + 0) / 3 = 0.4637057,
recall@100 = (0.5 + 1 + 0) / 3 = 0.5, MRR@10 = (1 + 0.5 + 0) / 3 = 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.evaluation.runner import DatasetFormatError, load_beir

CORPUS = [
    {"_id": "z1", "title": "Zebra migration", "text": "Zebras migrate across the Serengeti plains every year."},
    {"_id": "z2", "title": "Savanna grasslands", "text": "Grass grows quickly after the rainy season."},
    {"_id": "v1", "title": "Volcano eruptions", "text": "An eruption sends lava down the slopes of the volcano."},
    {"_id": "v2", "title": "Basalt", "text": "Basalt forms when lava cools quickly."},
    {"_id": "c1", "title": "Coffee brewing", "text": "Espresso forces hot water through finely ground coffee."},
]
QUERIES = [
    {"_id": "q1", "text": "Where do zebras migrate?"},
    {"_id": "q2", "text": "volcano eruption lava"},
    {"_id": "q3", "text": "quantum entanglement experiments"},
    {"_id": "q4", "text": "How is espresso brewed?"},
]
QRELS = [("q1", "z1", 2), ("q1", "z2", 1), ("q2", "v2", 1), ("q3", "c1", 1)]

Q1 = (0.7601872, 0.5, 1.0)
Q2 = (0.6309298, 1.0, 0.5)


def write_dataset(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    rows = "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def run_eval(tmp_path: Path, *args: str) -> dict[str, Any]:
    dataset = write_dataset(tmp_path / "tiny")
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, ["eval", str(dataset), "--split", "test", "--json", str(out), *args])
    assert result.exit_code == 0, result.output
    assert "nDCG@10" in result.output  # the table
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def figures(report: dict[str, Any], mode: str, variant: str = "chunked") -> tuple[float, float, float]:
    (v,) = [v for v in report["variants"] if v["variant"] == variant]
    (m,) = [m for m in v["modes"] if m["mode"] == mode]
    s = m["scores"]
    return s["ndcg_at_10"], s["recall_at_100"], s["mrr_at_10"]


def test_eval_figures_match_hand_computed_values(tmp_path: Path) -> None:
    report = run_eval(tmp_path)
    assert report["queries"] == 3 and report["documents"] == 5 and report["split"] == "test"
    assert report["variants"][0]["documents"] == 5 and report["variants"][0]["chunks"] == 5

    expected = [(a + b + 0.0) / 3 for a, b in zip(Q1, Q2, strict=True)]
    assert figures(report, "sparse") == pytest.approx(expected, abs=1e-6)
    for mode in ("dense", "hybrid"):
        ndcg, recall, mrr = figures(report, mode)
        assert recall == pytest.approx(1.0)  # every document of the corpus is in the top 100
        assert 0.0 < ndcg <= 1.0 and 0.0 < mrr <= 1.0


def test_eval_limits_and_modes(tmp_path: Path) -> None:
    # The first judged query only; its judged documents (z1, z2) fill the two documents allowed.
    report = run_eval(tmp_path, "--modes", "sparse", "--limit-queries", "1", "--limit-docs", "2")
    assert report["queries"] == 1 and report["documents"] == 2
    assert [m["mode"] for m in report["variants"][0]["modes"]] == ["sparse"]
    assert figures(report, "sparse") == pytest.approx(Q1, abs=1e-6)


def test_eval_rejects_an_unknown_mode_and_a_missing_split(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "tiny")
    runner = CliRunner()
    bad_mode = runner.invoke(app, ["eval", str(dataset), "--split", "test", "--modes", "dense,fuzzy"])
    assert bad_mode.exit_code == 2 and "fuzzy" in bad_mode.output
    no_split = runner.invoke(app, ["eval", str(dataset), "--split", "dev"])
    assert no_split.exit_code == 2 and "test" in no_split.output  # names the splits that exist


def test_load_beir_names_the_broken_line(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "tiny")
    with (dataset / "queries.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DatasetFormatError, match=r"queries\.jsonl:5"):
        load_beir(dataset, "test")


def test_two_runs_order_tied_documents_the_same_way(tmp_path: Path) -> None:
    """Equal scores are ordered by point id, and a point's id comes from the event that wrote it: the
    evaluation's events say the same time in every run, so a tie (twelve identical abstracts here) is
    ranked the same way by two indexes of the same corpus, and the figures repeat run after run."""
    from app.cli.evaluate import eval_store_factory
    from app.evaluation.runner import CHUNKED, BeirDocument, index_corpus, rank_documents
    from stores.ports import SearchMode
    from tests.conftest import base_settings
    from tests.fakes.embedder import HashEmbedder

    corpus = [BeirDocument(f"d{n:02d}", "Basalt", "Lava from the volcano cools into basalt.") for n in range(12)]
    embedder = HashEmbedder(dimension=64, max_tokens=256)
    rankings = []
    for run in range(2):
        store = eval_store_factory(base_settings(tmp_path / f"base{run}"), embedder, 4, embedder)(
            tmp_path / f"run{run}", CHUNKED
        )
        try:
            index_corpus(store, corpus)
            rankings.append([rank_documents(store.searcher, "basalt lava", m) for m in SearchMode])
        finally:
            store.close()
    assert all(sorted(r) == sorted(d.doc_id for d in corpus) for r in rankings[0])  # every one found
    assert rankings[0] == rankings[1]
