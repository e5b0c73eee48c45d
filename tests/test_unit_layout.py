"""A chunk's units and their terms are found at ingest and stored with it (`stores.units.Layout`), so an
extractive answer neither splits its passages into sentences again nor tokenizes them per question.

- a layout comes back from its payload exactly (units, blocks, kinds, each unit's terms);
- quoting from stored layouts chooses exactly the extracts that finding the units anew chooses;
- a malformed layout, or one whose terms are of another term space, is not trusted: the units or their
  terms are found again;
- the index stores one with every chunk, and `/query` then tokenizes its question and nothing else.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.answering import extractive_answer
from retrieval.extracts import Extractor
from stores.sparse import Bm25Encoder
from stores.units import LAYOUT_FORMAT, Layout, units
from tests.conftest import Harness
from tests.test_extracts import MPL_TERMINATION, SETUPS, documents, hit_for, word
from tests.test_unit_vectors import index_licences, licence_chunks

ENGLISH = Bm25Encoder()


@settings(max_examples=150, deadline=None)
@given(text=documents())
def test_a_layout_comes_back_from_its_payload_exactly(text: str) -> None:
    found = units(text)
    layout = Layout.of(text, found, ENGLISH)
    back = Layout.from_payload(layout.to_payload(), len(text))
    assert back == layout
    assert back is not None and list(back.units) == found
    assert back.terms == tuple(tuple(sorted(ENGLISH.term_set(text[u.start : u.end]))) for u in found)
    bare = Layout.from_payload(Layout.of(text, found, None).to_payload(), len(text))
    assert bare is not None and list(bare.units) == found and bare.terms is None


@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(documents(), min_size=1, max_size=3),
    question=st.lists(word, min_size=1, max_size=8).map(" ".join),
    chunk_tokens=st.sampled_from(sorted(SETUPS)),
)
def test_stored_layouts_choose_exactly_the_extracts_found_without_them(
    docs: list[str], question: str, chunk_tokens: int
) -> None:
    setup = SETUPS[chunk_tokens]
    hits = [hit_for(doc, c.start, c.end, n=c.index) for doc in docs for c in setup.chunker.chunk(doc)][:6]
    laid = [replace(h, layout=Layout.of(h.text, units(h.text), ENGLISH).to_payload()) for h in hits]
    with_layouts = extractive_answer(question, laid, setup.extractor)
    without = extractive_answer(question, hits, setup.extractor)
    assert with_layouts == without


def _payload(text: str) -> dict[str, Any]:
    return Layout.of(text, units(text), ENGLISH).to_payload()


def _packed(values: list[int]) -> str:
    return base64.b64encode(b"".join(v.to_bytes(4, "little") for v in values)).decode()


TEXT = "# Leave\n\nStaff get 30 days. Managers approve it.\n\n- one item"
FLAT = [x for u in units(TEXT) for x in (u.start, u.end, u.block)]
BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "another format": lambda p: p.update(format=LAYOUT_FORMAT + 1),
    "units not base64": lambda p: p.update(units="not base64!"),
    "units a number": lambda p: p.update(units=7),
    "a unit short": lambda p: p.update(units=_packed(FLAT[:-3])),
    "units out of order": lambda p: p.update(units=_packed(FLAT[3:6] + FLAT[0:3] + FLAT[6:])),
    "a unit past the text": lambda p: p.update(units=_packed([*FLAT[:-2], len(TEXT) + 5, FLAT[-1]])),
    "an empty unit": lambda p: p.update(units=_packed([FLAT[0], FLAT[0], *FLAT[2:]])),
    "an unknown kind": lambda p: p.update(kinds="x" + p["kinds"][1:]),
    "kinds a list": lambda p: p.update(kinds=list(p["kinds"])),
    "term counts that do not add up": lambda p: p.update(term_counts=[c + 1 for c in p["term_counts"]]),
    "a negative term count": lambda p: p.update(term_counts=[-1, *p["term_counts"][1:]]),
    "terms cut mid-number": lambda p: p.update(terms=base64.b64encode(base64.b64decode(p["terms"])[:-1]).decode()),
    "no terms beside a term space": lambda p: p.pop("terms"),
}


@pytest.mark.parametrize("why", sorted(BROKEN))
def test_a_malformed_layout_is_not_trusted(why: str) -> None:
    good = _payload(TEXT)
    assert Layout.from_payload(good, len(TEXT)) is not None
    bad = dict(good)
    BROKEN[why](bad)
    assert Layout.from_payload(bad, len(TEXT)) is None


def test_a_layout_of_a_longer_text_does_not_fit_a_shorter_one() -> None:
    assert Layout.from_payload(_payload(TEXT), len(TEXT) - 3) is None


class CountingTerms(Bm25Encoder):
    def __init__(self, language: str = "english") -> None:
        super().__init__(language=language)
        self.asked: list[str] = []

    def term_set(self, text: str) -> set[int]:
        self.asked.append(text)
        return super().term_set(text)


def test_terms_of_another_term_space_are_found_again() -> None:
    question = "How many days after the notice does a licensee have to become compliant?"
    hits = [hit_for(MPL_TERMINATION, 0, len(MPL_TERMINATION))]
    laid = [replace(hits[0], layout=_payload(MPL_TERMINATION))]  # English terms
    english = CountingTerms()
    assert extractive_answer(question, laid, Extractor(terms=english)).answer
    assert english.asked == [question]  # the units' terms came from the layout
    german = CountingTerms("german")
    assert german.term_space != english.term_space
    answer = extractive_answer(question, laid, Extractor(terms=german))
    assert len(german.asked) == 1 + len(units(MPL_TERMINATION))  # found again, in German
    assert answer == extractive_answer(question, hits, Extractor(terms=Bm25Encoder(language="german")))


def test_the_index_stores_a_layout_and_a_query_tokenizes_only_its_question(
    make_harness: Callable[..., Harness],
) -> None:
    h = make_harness()
    index_licences(h)
    for hit in licence_chunks(h):
        assert Layout.from_payload(hit.layout, len(hit.text)) == Layout.of(hit.text, units(hit.text), ENGLISH)
    extractor = h.container.agent.answerer.extractor
    counting = CountingTerms()
    extractor.terms = counting
    question = "How many days after receiving notice of non-compliance does a licensee have to become compliant?"
    res = h.query(question).json()
    assert res["mode"] == "extractive" and "30 days after Your receipt of the notice" in res["answer"]
    assert counting.asked == [question]
