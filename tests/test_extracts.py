"""Extractive answers are quotes: units, choice, and the property that every answer line is a span of a passage.

These run the extractor and the answerer on passages cut by the real chunker, with the deterministic hash
embedder (`tests/fakes`): fast enough for Hypothesis to try many documents. `tests/test_answers.py` runs the
same checks end to end through HTTP with the real model.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from retrieval.answering import NOT_ANSWERED, NOTES, Answer, extractive_answer
from retrieval.extracts import Extractor, locate, units
from stores.ports import Hit
from stores.sparse import Bm25Encoder
from tests.fakes.embedder import HashEmbedder

MPL_TERMINATION = """5. Termination
--------------

5.1. The rights granted under this License will terminate automatically
if You fail to comply with any of its terms. However, if You become
compliant, then the rights granted under this License from a particular
Contributor are reinstated (a) provisionally, unless and until such
Contributor explicitly and finally terminates Your grants, and (b) on an
ongoing basis, if such Contributor fails to notify You of the
non-compliance by some reasonable means prior to 60 days after You have
come back into compliance. Moreover, Your grants from a particular
Contributor are reinstated on an ongoing basis if such Contributor
notifies You of the non-compliance by some reasonable means, this is the
first time You have received notice of non-compliance with this License
from such Contributor, and You become compliant prior to 30 days after
Your receipt of the notice.

5.2. If You initiate litigation against any entity by asserting a patent
infringement claim (excluding declaratory judgment actions,
counter-claims, and cross-claims) alleging that a Contributor Version
directly or indirectly infringes any patent, then the rights granted to
You by any and all Contributors for the Covered Software under Section
2.1 of this License shall terminate.
"""

APACHE_REDISTRIBUTION = """4. Redistribution. You may reproduce and distribute copies of the
   Work or Derivative Works thereof in any medium, with or without
   modifications, and in Source or Object form, provided that You
   meet the following conditions:

   (a) You must give any other recipients of the Work or
       Derivative Works a copy of this License; and

   (b) You must cause any modified files to carry prominent notices
       stating that You changed the files; and

   (c) You must retain, in the Source form of any Derivative Works
       that You distribute, all copyright, patent, trademark, and
       attribution notices from the Source form of the Work,
       excluding those notices that do not pertain to any part of
       the Derivative Works; and

   (d) If the Work includes a "NOTICE" text file as part of its
       distribution, then any Derivative Works that You distribute must
       include a readable copy of the attribution notices contained
       within such NOTICE file, excluding those notices that do not
       pertain to any part of the Derivative Works.
"""


def squeeze(text: str) -> str:
    return " ".join(text.split())


def hit_for(doc: str, start: int, end: int, n: int = 0, file_id: str = "f") -> Hit:
    return Hit(f"p{n}", 1.0, "ws", file_id, f"{file_id}.txt", "r1", None, n, start, end, doc[start:end])


def test_hard_wrapped_paragraph_sentences_span_lines() -> None:
    shown = [squeeze(MPL_TERMINATION[u.start : u.end]) for u in units(MPL_TERMINATION)]
    assert shown[0] == "5. Termination"  # a setext heading, not a sentence "5."
    moreover = next(s for s in shown if s.startswith("Moreover"))
    # One sentence over five wrapped lines, in the document's words and order.
    assert moreover.endswith("You become compliant prior to 30 days after Your receipt of the notice.")
    assert "60 days" not in moreover
    # "2.1 of this License" starts a wrapped line, not a list item.
    assert shown[-1].endswith("under Section 2.1 of this License shall terminate.")


def test_list_items_headings_and_rows_are_units_of_their_own() -> None:
    shown = [squeeze(APACHE_REDISTRIBUTION[u.start : u.end]) for u in units(APACHE_REDISTRIBUTION)]
    items = [s for s in shown if re.match(r"\([a-d]\)", s)]
    assert [s[:3] for s in items] == ["(a)", "(b)", "(c)", "(d)"]
    assert items[3].startswith('(d) If the Work includes a "NOTICE" text file as part of its distribution, then')
    assert items[3].endswith("pertain to any part of the Derivative Works.")
    table = "# Fees\n\n| Plan | Price |\n|---|---|\n| Basic | 10 EUR |\n- first point\n- second point\n"
    kinds = [(t.kind, squeeze(table[t.start : t.end])) for t in units(table)]
    assert kinds == [
        ("heading", "Fees"),
        ("row", "| Plan | Price |"),
        ("row", "|---|---|"),
        ("row", "| Basic | 10 EUR |"),
        ("sentence", "first point"),
        ("sentence", "second point"),
    ]


def test_the_quote_with_the_number_is_one_contiguous_span() -> None:
    extractor = Extractor(terms=Bm25Encoder())
    question = "How many days after receiving notice does a licensee have to become compliant again?"
    best = extractor.choose(question, [MPL_TERMINATION], max_quotes=1)[0]
    quote = best.text(MPL_TERMINATION)
    assert "30 days after Your receipt of the notice" in quote
    assert "60 days" not in quote
    # Contiguous: the quote is exactly the document's text at its offsets, line breaks shown as spaces.
    assert quote == squeeze(MPL_TERMINATION[best.start : best.end])
    assert locate(MPL_TERMINATION, quote) == (best.start, best.end)


def test_an_answer_says_so_when_no_passage_answers() -> None:
    hits = [hit_for(MPL_TERMINATION, 0, len(MPL_TERMINATION))]
    extractor = Extractor(terms=Bm25Encoder(), embedder=HashEmbedder())
    off_topic = extractive_answer("Which city hosts the zoo's giraffes?", hits, extractor)
    assert off_topic.answer.split("\n")[0] == NOT_ANSWERED
    assert len(off_topic.answer.split("\n")) == 2  # the note, then the closest quote all the same
    on_topic = extractive_answer("When do the rights granted under this License terminate?", hits, extractor)
    assert NOT_ANSWERED not in on_topic.answer


def test_locate_ignores_whitespace_and_optionally_case_and_quote_marks() -> None:
    text = "He said:\n  “Don’t   stop”\tnow."
    assert locate(text, "Don’t stop") == (text.index("Don"), text.index("”"))
    assert locate(text, "don't stop\" now", fold=True) == (text.index("Don"), len(text) - 1)
    assert locate(text, "don't stop") is None
    assert locate(text, "   ") is None


# --- the property ----------------------------------------------------------------------------------------

WORDS = ["leave", "days", "notice", "30", "licence", "The", "You", "Section", "2.1", "e.g.", "Dr.", "cure"]
word = st.one_of(st.sampled_from(WORDS), st.text(alphabet="abcdefgXYZ0123456789", min_size=1, max_size=8))
sentence = st.builds(
    lambda ws, end: " ".join(ws) + end, st.lists(word, min_size=1, max_size=14), st.sampled_from([".", "?", "!", ""])
)
line_prefix = st.sampled_from(["", "", "", "- ", "* ", "1. ", "(a) ", "# ", "## ", "| ", "    ", "\t"])
separator = st.sampled_from([" ", "\n", "\n", "\n\n", "  \n", "\n\n\n", " \t "])


@st.composite
def documents(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 25))):
        parts.append(draw(line_prefix) + draw(sentence) + draw(separator))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), "```\ncode line. Another\n```\n")
    return draw(st.sampled_from(["", "  ", "\n"])) + "".join(parts)


@dataclass
class Setup:
    extractor: Extractor
    chunker: Chunker


def make_setup(chunk_tokens: int) -> Setup:
    embedder = HashEmbedder()
    chunker = Chunker(count_tokens=embedder.count_tokens, chunk_tokens=chunk_tokens, overlap_tokens=8)
    return Setup(Extractor(terms=Bm25Encoder(), embedder=embedder), chunker)


SETUPS = {n: make_setup(n) for n in (40, 200)}


def assert_answer_quotes_its_passages(answer: Answer, documents_by_id: dict[str, str]) -> None:
    """The property: every line is a note or `<quote> [n]`, the quote a whitespace-normalised span of
    citation n's passage, in the passage's order; every citation's text is the document at its offsets, and
    every recorded quote range holds exactly the quote."""
    for c in answer.citations:
        assert c.text == documents_by_id[c.file_id][c.start : c.end]
    by_n = {c.n: c for c in answer.citations}
    seen_quotes: dict[int, list[str]] = {}
    for line in answer.answer.split("\n"):
        if line in NOTES:
            continue
        m = re.fullmatch(r"(.*\S) \[(\d+)\]", line)
        assert m is not None, f"not a quote line: {line!r}"
        quote, n = m.group(1), int(m.group(2))
        assert n in by_n, line
        assert quote == squeeze(quote)
        assert quote in squeeze(by_n[n].text), (quote, by_n[n].text)
        seen_quotes.setdefault(n, []).append(quote)
    for n, quotes in seen_quotes.items():
        c = by_n[n]
        doc = documents_by_id[c.file_id]
        assert [squeeze(doc[a:b]) for a, b in c.quotes] == quotes
        assert all(c.start <= a < b <= c.end for a, b in c.quotes)
        assert [a for a, _ in c.quotes] == sorted(a for a, _ in c.quotes)  # the passage's own order


@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(documents(), min_size=1, max_size=3),
    question=st.lists(word, min_size=1, max_size=8).map(" ".join),
    chunk_tokens=st.sampled_from(sorted(SETUPS)),
    top_k=st.integers(1, 8),
    rng=st.randoms(use_true_random=False),
)
def test_every_extractive_line_is_a_span_of_a_cited_passage(
    docs: list[str], question: str, chunk_tokens: int, top_k: int, rng: random.Random
) -> None:
    setup = SETUPS[chunk_tokens]
    by_id = {f"doc{i}": doc for i, doc in enumerate(docs)}
    hits = [
        hit_for(doc, c.start, c.end, n=c.index, file_id=file_id)
        for file_id, doc in by_id.items()
        for c in setup.chunker.chunk(doc)
    ]
    if not hits:
        return
    # Any ranking will do: the property holds for whatever passages search returns.
    rng.shuffle(hits)
    hits = hits[:top_k]
    answer = extractive_answer(question, hits, setup.extractor)
    assert len(answer.citations) == len(hits)  # every passage is cited
    assert [c.n for c in answer.citations] == list(range(1, len(hits) + 1))
    assert_answer_quotes_its_passages(answer, by_id)
