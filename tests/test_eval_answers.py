"""`eventrag eval --answers`: the answer figures on a tiny made-up dataset, checked against counts by hand;
and the checks the figures rest on (what counts as a faithful quote, a quoted rationale, a cited document).

The dataset: three abstracts, four claims, three of them with rationales.

- q1 "Zebras migrate across the Serengeti every year." Its rationale is that very sentence of z1, which the
  answer quotes (it is the best-matching sentence there is): quoted, z1 cited.
- q2 "Lava cools into basalt rock." Its rationale in v1 is the *other* sentence of the abstract,
  "Eruptions are hard to predict.", which shares no word with the claim: v1 is cited, its lava sentence
  quoted, the rationale not.
- q3 "Quantum entanglement experiments." Its rationale is in c1 (coffee), but no passage of the corpus is
  relevant to the claim (no shared term, low similarity): "not covered", nothing cited, nothing quoted.
- q4 has no rationale: it is not asked.

So: claims 3; faithful 3/3 = 1.0 (two answers of quotes, one "not covered" note); rationale_recall 1/3;
cited_rationale_doc 2/3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.evaluation.answers import (
    Rationale,
    RationaleFormatError,
    cites_a_rationale_document,
    is_faithful,
    load_rationales,
    quote_lines,
    quotes_a_rationale,
)
from retrieval.answering import NOT_ANSWERED, NOT_COVERED, Answer, Citation

CORPUS = [
    {
        "_id": "z1",
        "title": "Zebra migration",
        "text": "Zebras migrate across the Serengeti every year. The herds follow the rains.",
    },
    {
        "_id": "v1",
        "title": "Volcanoes",
        "text": "Lava from the volcano cools into basalt. Eruptions are hard to predict.",
    },
    {"_id": "c1", "title": "Coffee", "text": "Espresso forces hot water through ground beans. Milk is steamed apart."},
]
QUERIES = [
    {"_id": "q1", "text": "Zebras migrate across the Serengeti every year."},
    {"_id": "q2", "text": "Lava cools into basalt rock."},
    {"_id": "q3", "text": "Quantum entanglement experiments."},
    {"_id": "q4", "text": "How is espresso made?"},
]
QRELS = [("q1", "z1", 1), ("q2", "v1", 1), ("q3", "c1", 1), ("q4", "c1", 1)]
RATIONALES = [
    {"query_id": "q1", "doc_id": "z1", "label": "SUPPORT", "sentence_ids": [0],
     "sentences": ["Zebras migrate across the Serengeti every year."]},
    {"query_id": "q2", "doc_id": "v1", "label": "SUPPORT", "sentence_ids": [1],
     "sentences": ["Eruptions are hard to predict."]},
    {"query_id": "q3", "doc_id": "c1", "label": "CONTRADICT", "sentence_ids": [1],
     "sentences": ["Milk is steamed apart."]},
]  # fmt: skip


def write_dataset(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "rationales").mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    rows = "".join(f"{q}\t{d}\t{g}\n" for q, d, g in QRELS)
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    (folder / "rationales" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RATIONALES))
    return folder


def test_eval_answers_figures_match_the_hand_count(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "tiny")
    out = tmp_path / "answers.json"
    result = CliRunner().invoke(app, ["eval", str(dataset), "--split", "dev", "--answers", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "rationale_recall" in result.output and "nDCG@10" not in result.output  # answers only
    report: dict[str, Any] = json.loads(out.read_text())
    answers = report["answers"]
    assert answers["claims"] == 3
    assert answers["faithful"] == 1.0
    assert answers["rationale_recall"] == 1 / 3
    assert answers["cited_rationale_doc"] == 2 / 3
    assert answers["seconds"] >= 0 and answers["top_k"] == 5 and answers["mode"] == "hybrid"
    assert report["variants"][0]["modes"] == []


def test_eval_answers_with_modes_scores_retrieval_too(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "tiny")
    out = tmp_path / "both.json"
    result = CliRunner().invoke(
        app, ["eval", str(dataset), "--split", "dev", "--answers", "--modes", "sparse", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [m["mode"] for m in report["variants"][0]["modes"]] == ["sparse"]
    assert report["queries"] == 4  # every judged claim is scored for retrieval; the three with evidence asked
    assert report["answers"]["claims"] == 3


def test_eval_answers_needs_the_rationales(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "tiny")
    (dataset / "rationales" / "dev.jsonl").unlink()
    result = CliRunner().invoke(app, ["eval", str(dataset), "--split", "dev", "--answers"])
    assert result.exit_code == 2
    assert "rationales/dev.jsonl is missing" in result.output


def test_a_malformed_rationale_line_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "tiny" / "rationales"
    folder.mkdir(parents=True)
    good = json.dumps({"query_id": "1", "doc_id": "d", "sentences": ["A."]})
    for bad, says in (
        ("{not json", "not JSON"),
        (json.dumps({"query_id": "1", "doc_id": "d"}), "expected a JSON object with query_id, doc_id, sentences"),
        (json.dumps({"query_id": "1", "doc_id": "d", "sentences": "A."}), "sentences must be a list"),
    ):
        (folder / "dev.jsonl").write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(RationaleFormatError, match=rf"dev\.jsonl:3: {says}"):
            load_rationales(tmp_path / "tiny", "dev")
    (folder / "dev.jsonl").write_text(good + "\n")
    assert load_rationales(tmp_path / "tiny", "dev") == {"1": [Rationale("1", "d", ("A.",))]}


# --- the checks --------------------------------------------------------------------------------------------

PASSAGE = (
    "The rights terminate.\nHowever, if You become\ncompliant within 30 days, they are reinstated. Notice applies."
)


def cite(n: int, text: str, file_id: str = "mpl") -> Citation:
    return Citation(n, file_id, f"{file_id}.txt", 1, 0, len(text), text, 1.0)


def answer(text: str, *citations: Citation) -> Answer:
    return Answer(text, "extractive", list(citations))


def test_a_quote_is_faithful_only_as_one_span_of_the_passage_it_cites() -> None:
    c = cite(1, PASSAGE)
    # Line breaks shown as spaces: still the passage's own text.
    assert is_faithful(answer("However, if You become compliant within 30 days, they are reinstated. [1]", c))
    # Two lines spliced across a gap (what the old extractor did) is not a quote.
    assert not is_faithful(answer("The rights terminate. compliant within 30 days, they are reinstated. [1]", c))
    # A word changed, a passage that does not hold it, or a marker with no citation.
    assert not is_faithful(answer("The rights terminate at once. [1]", c))
    assert not is_faithful(answer("Notice applies. [2]", c, cite(2, "Something else.")))
    assert not is_faithful(answer("Notice applies. [3]", c))
    # Quotes of one passage in its own order; notes are not quotes; any other line is not allowed.
    assert is_faithful(answer("The rights terminate. [1]\nNotice applies. [1]", c))
    assert not is_faithful(answer("Notice applies. [1]\nThe rights terminate. [1]", c))
    assert is_faithful(answer(f"{NOT_ANSWERED}\nNotice applies. [1]", c))
    assert is_faithful(answer(NOT_COVERED))
    assert not is_faithful(answer("In short: 30 days.\nNotice applies. [1]", c))
    # A passage's own bracketed reference stays part of the quote.
    ref = cite(1, "Shown before [12] in mice.")
    assert quote_lines("Shown before [12] in mice. [1]") is not None
    assert is_faithful(answer("Shown before [12] in mice. [1]", ref))


def test_rationale_quoted_whole_from_its_own_document() -> None:
    r = [Rationale("q", "mpl", ("However, if You become compliant within 30 days, they are reinstated.",))]
    c = cite(1, PASSAGE)
    assert quotes_a_rationale(answer("However, if You become compliant within 30 days, they are reinstated. [1]", c), r)
    # Part of it is not enough; the same words cited from another document do not count.
    assert not quotes_a_rationale(answer("compliant within 30 days, they are reinstated. [1]", c), r)
    other = cite(1, PASSAGE, file_id="copy")
    assert not quotes_a_rationale(
        answer("However, if You become compliant within 30 days, they are reinstated. [1]", other), r
    )
    assert cites_a_rationale_document(answer("x [1]", c), r)
    assert not cites_a_rationale_document(answer("x [1]", other), r)
