"""Answers a reader can check, end to end: the real model, Qdrant local mode, SQLite and the HTTP stack.

- extractive answers on hard-wrapped licence text quote one contiguous span, with the number asked for;
- the property (Hypothesis) that every extractive line is a span of a cited passage, through `/query`;
- `top_k` passages come back, and above the maximum the request is refused alike on `/query`, the agent,
  `/v1/chat/completions` and `eventrag ask`;
- every citation carries `similarity`, `keyword_score` and `rank_score`, and a passage only the keyword
  side finds still counts as relevant;
- a file without a version never shows "None".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.main import create_app
from retrieval.agent import Ask
from retrieval.answering import NOTES, Answer, Citation, extractive_answer
from retrieval.errors import TopKTooLargeError
from stores.embedding import SentenceTransformerEmbedder
from tests.conftest import KEY_ACME, Harness
from tests.fakes.embedder import CountingEmbedder
from tests.fakes.server import serve
from tests.fakes.webhooks import file_event
from tests.test_extracts import APACHE_REDISTRIBUTION, MPL_TERMINATION, assert_answer_quotes_its_passages, documents

README_SNIPPET = """eventrag keeps a search index that always equals the latest version of
every file, and answers questions with citations to the exact passages.
Webhooks are verified with Standard Webhooks signatures before anything
is stored. The worker retries a failed event five times, then marks it
failed; POST /events/{id}/retry queues it again.
"""


def quote_lines(answer: str) -> list[tuple[str, int]]:
    out = []
    for line in answer.split("\n"):
        if line in NOTES:
            continue
        m = re.fullmatch(r"(.*\S) \[(\d+)\]", line)
        assert m is not None, line
        out.append((m.group(1), int(m.group(2))))
    return out


def squeeze(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def licences(make_harness: Callable[..., Harness]) -> Harness:
    h = make_harness()
    for file_id, text in (("mpl", MPL_TERMINATION), ("apache", APACHE_REDISTRIBUTION), ("readme", README_SNIPPET)):
        r = h.post_event(
            file_event("created", file_id, path=f"{file_id}.txt", content=text, content_type="text/plain", version=2)
        )
        assert r.status_code == 202, r.text
    assert h.drain() == 3
    return h


DOCS = {"mpl": MPL_TERMINATION, "apache": APACHE_REDISTRIBUTION, "readme": README_SNIPPET}


def test_hard_wrapped_licence_answer_is_one_contiguous_quote_with_the_number(licences: Harness) -> None:
    res = licences.query(
        "How many days after receiving notice of non-compliance does a licensee have to become compliant?"
    ).json()
    assert res["mode"] == "extractive" and res["covered"] is True
    quotes = quote_lines(res["answer"])
    first, n = quotes[0]
    cited = res["citations"][n - 1]
    assert cited["file_id"] == "mpl"
    # The quote that leads the answer has the licence's number, and it is the document's own text at the
    # offsets its citation records: one span over several wrapped lines, nothing spliced in from elsewhere.
    assert "30 days after Your receipt of the notice" in first
    assert "60 days" not in first
    [(a, b)] = [(q["start"], q["end"]) for q in cited["quotes"]]
    assert squeeze(MPL_TERMINATION[a:b]) == first
    assert MPL_TERMINATION[a:b].count("\n") >= 3  # it really ran over wrapped lines
    for c in res["citations"]:
        assert DOCS[c["file_id"]][c["start"] : c["end"]] == c["text"]


def test_a_question_is_embedded_once_per_extractive_answer(
    make_harness: Callable[..., Harness], embedder: SentenceTransformerEmbedder
) -> None:
    """The extractor scores sentences against the vector the search made for the question: one model call
    for the question per answer, and the same quotes as when the extractor embeds the question itself."""
    counting = CountingEmbedder(embedder)
    h = make_harness(model=counting)
    for file_id, text in DOCS.items():
        h.post_event(file_event("created", file_id, path=f"{file_id}.txt", content=text, content_type="text/plain"))
    assert h.drain() == 3
    question = "How many days after receiving notice of non-compliance does a licensee have to become compliant?"
    counting.queries.clear()
    res = h.query(question, session_id="once").json()
    assert counting.queries == [question]
    assert res["mode"] == "extractive" and "30 days after Your receipt of the notice" in res["answer"]
    found = h.container.answerer.retrieve("acme", question, top_k=h.settings.top_k_default)
    assert [c["file_id"] for c in res["citations"]] == [hit.file_id for hit in found.hits]
    assert res["answer"] == extractive_answer(question, found.hits, h.container.answerer.extractor).answer
    # A follow-up searches with the previous question prepended, but quotes are scored against the question
    # as asked: two different texts, each embedded once.
    follow_up = "And how many times does the worker retry a failed event?"
    counting.queries.clear()
    again = h.query(follow_up, session_id="once").json()
    assert counting.queries == [f"{question} {follow_up}", follow_up]
    assert again["mode"] == "extractive" and again["covered"] is True


def test_a_list_item_is_quoted_whole_and_alone(licences: Harness) -> None:
    res = licences.query("What must Derivative Works include when the Work has a NOTICE text file?").json()
    quotes = quote_lines(res["answer"])
    quote, n = quotes[0]
    assert res["citations"][n - 1]["file_id"] == "apache"
    assert quote.startswith('(d) If the Work includes a "NOTICE" text file as part of its distribution')
    assert quote.endswith("excluding those notices that do not pertain to any part of the Derivative Works.")
    assert "(c)" not in quote and "You must retain" not in quote


def test_citations_carry_the_three_scores_in_every_mode(licences: Harness) -> None:
    question = "How many times does the worker retry a failed event?"
    for mode in ("dense", "sparse", "hybrid"):
        cits = licences.query(question, mode=mode, top_k=3).json()["citations"]
        assert cits, mode
        for c in cits:
            assert isinstance(c["similarity"], float) and -1.0 <= c["similarity"] <= 1.0, (mode, c)
            assert isinstance(c["keyword_score"], float) and c["keyword_score"] >= 0.0, (mode, c)
            assert isinstance(c["rank_score"], float), (mode, c)
        top = cits[0]
        assert top["file_id"] == "readme" and top["keyword_score"] > 0
        if mode == "dense":
            assert top["rank_score"] == pytest.approx(top["similarity"], abs=1e-5)
        if mode == "sparse":
            assert top["rank_score"] == pytest.approx(top["keyword_score"], abs=1e-5)
        if mode == "hybrid":
            assert top["rank_score"] <= 1.0  # a fused rank score, not a cosine nor a BM25 score


NAME = "Halvorsen"  # a surname: the embedding model cannot place it, BM25 matches it exactly
TOPICS = ["canteen menus", "parking rules", "holiday calendar", "printer setup", "bike storage", "key cards"]


def index_notes_and_a_licence(h: Harness) -> None:
    """Twenty-four short notes, and a licence whose copyright line alone names the maintainer."""
    for i in range(24):
        note = f"# Note {i}\n\nThis note is about {TOPICS[i % len(TOPICS)]}, item {i}.\n"
        h.post_event(file_event("created", f"n{i}", content=note, version=1))
    licence = MPL_TERMINATION + f"\nCopyright 2024 Ingrid {NAME} and contributors.\n"
    h.post_event(file_event("created", "licence", content=licence, content_type="text/plain", version=1))
    assert h.drain() == 25


@pytest.mark.parametrize(("mode", "top_k"), [("hybrid", 5), ("dense", 50)])
def test_a_passage_that_only_the_keyword_side_ranks_counts_as_relevant(
    make_harness: Callable[..., Harness], mode: str, top_k: int
) -> None:
    h = make_harness()
    index_notes_and_a_licence(h)
    res = h.query(NAME, mode=mode, top_k=top_k).json()
    found = [c for c in res["citations"] if c["file_id"] == "licence" and NAME in c["text"]]
    assert found, res
    # The cosine alone would drop it: its keyword score is what makes it relevant.
    assert found[0]["similarity"] < h.settings.min_score
    assert h.settings.min_keyword_score is not None
    assert found[0]["keyword_score"] >= h.settings.min_keyword_score
    if mode == "hybrid":
        assert res["citations"][0] == found[0]  # and the fused ranking puts it first
    assert NAME in res["answer"]
    # With the keyword bar off (cosine only, as before), the same query finds nothing relevant.
    cosine_only = make_harness(data_dir=h.settings.data_dir.parent / "cosine-only", min_keyword_score=None)
    index_notes_and_a_licence(cosine_only)
    again = cosine_only.query(NAME, mode=mode, top_k=top_k).json()
    assert again["covered"] is False and again["citations"] == []


def test_top_k_passages_come_back(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    for i in range(8):
        body = f"# Office {i}\n\nThe office in building {i} opens at {7 + i % 3} o'clock for visitors.\n"
        h.post_event(file_event("created", f"office-{i}", content=body, version=1))
    assert h.drain() == 8
    question = "When does the office open for visitors?"
    for top_k in (1, 5, 6, 8):
        res = h.query(question, top_k=top_k).json()
        assert len(res["citations"]) == top_k, (top_k, res)
        assert [c["n"] for c in res["citations"]] == list(range(1, top_k + 1))
    assert len(h.query(question, top_k=20).json()["citations"]) == 8  # every relevant passage, no more
    assert len(h.query(question).json()["citations"]) == h.settings.top_k_default


def test_top_k_above_the_maximum_is_refused_alike_everywhere(
    make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    h = make_harness(top_k_max=12)
    h.post_event(file_event("created", "faq", content="Support answers within one working day.", version=1))
    h.drain()
    question = "How fast does support answer?"

    for extra in ({}, {"stream": True}):
        r = h.query(question, top_k=13, **extra)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "top_k 13" in detail and "maximum of 12" in detail and "EVENTRAG_TOP_K_MAX" in detail
    assert h.query(question, top_k=12).status_code == 200

    with pytest.raises(TopKTooLargeError, match="maximum of 12"):
        h.container.agent.answer(Ask("acme", question, top_k=13))

    with serve(create_app(h.container, start_worker=False)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_ACME, max_retries=0)
        messages: Any = [{"role": "user", "content": question}]
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            client.chat.completions.create(model="eventrag", messages=messages, extra_body={"top_k": 13})
        assert "maximum of 12" in refused.value.message
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="eventrag", messages=messages, extra_body={"top_k": 13}, stream=True)
        ok = client.chat.completions.create(model="eventrag", messages=messages, extra_body={"top_k": 12})
        assert ok.model_extra is not None and len(ok.model_extra["citations"]) == 1


def test_files_without_a_version_never_show_none(make_harness: Callable[..., Harness], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    h = make_harness()
    h.post_event(file_event("created", "wiki", path="wiki/lunch.md", content="Lunch is served from noon to two."))
    h.drain()
    messages: Any = [{"role": "user", "content": "When is lunch?"}]
    with serve(create_app(h.container, start_worker=False)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_ACME, max_retries=0)
        reply = client.chat.completions.create(model="eventrag", messages=messages)
        text = reply.choices[0].message.content or ""
        assert "Sources:\n[1] wiki/lunch.md (characters 0-33)" in text
        assert "None" not in text
        chunks = list(client.chat.completions.create(model="eventrag", messages=messages, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "wiki/lunch.md (characters 0-33)" in streamed and "None" not in streamed

    # `eventrag ask` on a local store: files sent by `eventrag ingest` have no version.
    data = tmp_path / "cli-data"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "vpn.md").write_text("# VPN\nThe VPN client must be updated every quarter by the IT desk.\n")
    common = ["--server", "http://127.0.0.1:9", "--data-dir", str(data)]
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(folder), *common]).exit_code == 0
    out = runner.invoke(app, ["ask", "How often is the VPN client updated?", *common])
    assert out.exit_code == 0, out.output
    assert "vpn.md, chars 0-" in out.output and "None" not in out.output and "(v" not in out.output
    refused = runner.invoke(app, ["ask", "VPN?", "--top-k", "51", *common])
    assert refused.exit_code == 1 and "maximum of 50" in refused.output


# --- the property, end to end ------------------------------------------------------------------------------


def test_every_extractive_line_is_a_span_of_a_cited_passage_over_http(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(min_score=-1.0)  # every passage found counts: the property must hold for all of them
    sent: dict[str, str] = {}

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=documents(), words=st.lists(st.sampled_from(["notice", "days", "licence", "30", "You"]), min_size=1))
    def check(doc: str, words: list[str]) -> None:
        file_id = f"doc{len(sent)}"
        sent[file_id] = doc
        r = h.post_event(file_event("created", file_id, content=doc, content_type="text/plain", version=1))
        assert r.status_code == 202, r.text
        h.drain()
        res = h.query(" ".join(words), top_k=4, filters={"file_id": [file_id]}).json()
        answer = Answer(
            res["answer"],
            "extractive",
            [
                Citation(
                    c["n"],
                    c["file_id"],
                    c["path"],
                    c["version"],
                    c["start"],
                    c["end"],
                    c["text"],
                    c["rank_score"],
                    quotes=[(q["start"], q["end"]) for q in c["quotes"]],
                )
                for c in res["citations"]
            ],
        )
        if doc.strip():
            assert res["citations"], res
        assert_answer_quotes_its_passages(answer, sent)

    check()
