"""Extracts: the quotes an extractive answer is made of, each one contiguous span of one passage.

*Units* are `stores.units.units`: sentences, list-item sentences, headings, table rows, code lines.

*Choice.* Every unit is scored against the question: the share of the question's terms it holds (stemmed
BM25 tokens, each weighted by how rare it is among the candidate units), its cosine similarity to the
question (when an embedding function is given: the unit's vector stored with the passage at ingest,
pooled from the chunk's own token embeddings, or for passages indexed without them the unit embedded
here), and a bonus for a number when the question asks for an
amount or a date. A quote is the best unit plus the neighbours of its block that read with it: the
sentence before when the unit opens with a word that points back ("This", "However", "It"), and
neighbours that score almost as well (80% of its score), up to `max_units` units and `max_chars`
characters. Quotes never overlap (also across passages that share text: chunks of one file overlap), and a
passage gives at most `per_passage` quotes.

An extract is an offset range into its passage's text; `extract.text(passage)` shows it with runs of
whitespace as single spaces, which is the only liberty an extractive answer takes with a quote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from stores.ports import Embedder
from stores.sparse import Bm25Encoder
from stores.units import Layout, Unit, units

Term = str | int  # a word, or a BM25 term by its index
_DIGIT = re.compile(r"\d")
# Openers that point back at the sentence before: a quote starting with one reads wrong alone.
_POINTS_BACK = frozenset(
    """
    this these that those it its they their them such he she his her however thus therefore hence moreover
    furthermore also additionally consequently accordingly instead otherwise nevertheless nonetheless here
    there then finally similarly likewise conversely
    """.split()  # noqa: SIM905 -- as a list literal the formatter spreads it over 35 lines
)
# Questions that ask for an amount, a duration or a date: a unit with a number is likelier to answer.
_WANTS_NUMBER = re.compile(
    r"\b(how (many|much|long|often|old|far|big|large|soon|fast)|what (percentage|share|proportion|amount|"
    r"number|year|date|age|rate|dose|size)|when|which year|number of|percent)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Extract:
    """Quote `text[start:end]` of passage number `passage` (0-based, in the order given)."""

    passage: int
    start: int
    end: int
    score: float

    def text(self, passage_text: str) -> str:
        return " ".join(passage_text[self.start : self.end].split())


@dataclass(slots=True)
class _Candidate:
    passage: int
    unit: int  # index into that passage's units
    score: float


class Extractor:
    """Chooses the quotes that answer a question from the passages retrieved for it.

    `terms` tokenizes like the BM25 index (stemmed, stop words out); `embedder` (the index's own model)
    adds semantic similarity; without it, the choice is by terms and numbers only.
    """

    def __init__(
        self,
        *,
        terms: Bm25Encoder | None = None,
        embedder: Embedder | None = None,
        max_units: int = 3,
        max_chars: int = 600,
        per_passage: int = 1,
        dense_weight: float = 0.5,
        number_bonus: float = 0.1,
        context_share: float = 0.8,
    ) -> None:
        self.terms = terms
        self.embedder = embedder
        self.max_units = max_units
        self.max_chars = max_chars
        self.per_passage = per_passage
        self.dense_weight = dense_weight if embedder is not None else 0.0
        self.number_bonus = number_bonus
        self.context_share = context_share

    def tokens(self, text: str) -> AbstractSet[Term]:
        """The distinct terms of `text`: the BM25 index's (as their indices), or its lower-cased words."""
        if self.terms is not None:
            return self.terms.term_set(text)
        return {w for w in re.findall(r"[^\W_]+", text.lower())}

    def score_units(
        self,
        question: str,
        texts: Sequence[str],
        question_vector: Sequence[float] | None = None,
        known: Sequence[float | None] | None = None,
        known_terms: Sequence[Collection[Term] | None] | None = None,
    ) -> list[float]:
        """One score per unit text: term coverage, similarity and the number bonus, combined.
        `question_vector` is the question's embedding by `self.embedder` when the caller has it already
        (the search made it); without it the question is embedded here. `known[i]`: the cosine of
        `texts[i]`'s vector stored at ingest to `question_vector`, when there is one; only the other units
        are embedded here. `known_terms[i]`: the terms of `texts[i]` stored at ingest (`tokens` of it, by
        the same encoder), when there are."""
        if not texts:
            return []
        q_terms = set(self.tokens(question))
        given = known_terms if known_terms is not None else [None] * len(texts)
        # Each unit's terms that the question holds (stored terms are a sequence: distinct, in order).
        shared = [
            q_terms.intersection(ts if ts is not None else self.tokens(t)) for t, ts in zip(texts, given, strict=True)
        ]
        n = len(texts)
        df: dict[Term, int] = {}
        for found in shared:
            for t in found:
                df[t] = df.get(t, 0) + 1
        weight = {t: math.log(1.0 + n / (1.0 + df.get(t, 0))) for t in q_terms}
        total = math.fsum(weight.values()) or 1.0
        # fsum: exactly rounded, so the order a set gives its terms in never moves a score
        lexical = [math.fsum([weight[t] for t in found]) / total for found in shared]
        dense = [0.0] * n
        if self.embedder is not None and self.dense_weight > 0:
            q = np.asarray(
                question_vector if question_vector is not None else self.embedder.embed_query(question),
                dtype=np.float32,
            )
            similar: list[float | None] = list(known) if known is not None else [None] * n
            todo = [i for i, v in enumerate(similar) if v is None]
            if todo:
                vectors = np.asarray(self.embedder.embed_documents([texts[i] for i in todo]), dtype=np.float32)
                # Unit-length vectors (the index is cosine): the dot product is the cosine similarity.
                for i, v in zip(todo, (vectors @ q).tolist(), strict=True):
                    similar[i] = v
            dense = [v if v is not None else 0.0 for v in similar]
        wants_number = bool(_WANTS_NUMBER.search(question))
        scores = []
        for i, text in enumerate(texts):
            s = self.dense_weight * dense[i] + (1.0 - self.dense_weight) * lexical[i]
            if wants_number and _DIGIT.search(text):
                s += self.number_bonus
            scores.append(s)
        return scores

    def choose(
        self,
        question: str,
        passages: Sequence[str],
        max_quotes: int = 3,
        *,
        question_vector: Sequence[float] | None = None,
        unit_similarities: Sequence[Mapping[tuple[int, int], float] | None] | None = None,
        layouts: Sequence[Layout | None] | None = None,
    ) -> list[Extract]:
        """At most `max_quotes` non-overlapping extracts, best first; each one span of one passage.

        `passages` are the passage texts in rank order. Overlap is judged on the text: a sentence that two
        overlapping chunks of one file both hold is quoted once. `question_vector`: see `score_units`.
        `unit_similarities[p]`: the cosines to `question_vector` of the vectors the index stored for
        passage p's units, by span (`stores.units.stored_similarities`), if any.
        `layouts[p]`: passage p's units and their terms as the index stored them (`units(p)`), if any.
        """
        laid = layouts if layouts is not None else [None] * len(passages)
        space = self.terms.term_space if self.terms is not None else None
        per_passage = [list(lay.units) if lay is not None else units(p) for p, lay in zip(passages, laid, strict=True)]
        # Score each distinct unit text once: overlapping chunks repeat sentences.
        distinct: dict[str, int] = {}
        known: list[float | None] = []
        known_terms: list[Collection[Term] | None] = []
        slot: list[list[int]] = []  # slot[p][i]: where unit i of passage p is in `distinct`
        for n, (p, us) in enumerate(zip(passages, per_passage, strict=True)):
            given = unit_similarities[n] if unit_similarities is not None else None
            stored = given if given is not None else {}
            lay = laid[n]
            terms = lay.terms_in(space) if lay is not None else None
            slots = []
            for i, u in enumerate(us):
                key = " ".join(p[u.start : u.end].split())
                at = distinct.setdefault(key, len(distinct))
                if at == len(known):
                    known.append(None)
                    known_terms.append(None)
                if known[at] is None:
                    known[at] = stored.get((u.start, u.end))
                if known_terms[at] is None and terms is not None:
                    known_terms[at] = terms[i]
                slots.append(at)
            slot.append(slots)
        scores = self.score_units(question, list(distinct), question_vector, known, known_terms)
        # A heading names a topic; it rarely answers.
        by_unit = [
            [scores[at] * 0.5 if u.kind == "heading" else scores[at] for u, at in zip(us, slots, strict=True)]
            for us, slots in zip(per_passage, slot, strict=True)
        ]

        candidates = [_Candidate(p, i, score) for p, scored in enumerate(by_unit) for i, score in enumerate(scored)]
        # Best first; ties go to the better-ranked passage, then the earlier unit.
        candidates.sort(key=lambda c: (-c.score, c.passage, c.unit))
        chosen: list[Extract] = []
        quoted: list[str] = []  # the normalised text of every quote so far
        taken: dict[int, int] = {}
        for c in candidates:
            if len(chosen) >= max_quotes:
                break
            if taken.get(c.passage, 0) >= self.per_passage:
                continue
            text, us = passages[c.passage], per_passage[c.passage]
            alone = Extract(c.passage, us[c.unit].start, us[c.unit].end, c.score)
            if _overlaps(alone.text(text), quoted):
                continue
            first, last = self._window(text, us, c.unit, by_unit[c.passage])
            extract = Extract(c.passage, us[first].start, us[last].end, c.score)
            if _overlaps(extract.text(text), quoted):
                extract = alone  # widened into text already quoted: the unit alone
            chosen.append(extract)
            quoted.append(extract.text(text))
            taken[c.passage] = taken.get(c.passage, 0) + 1
        return chosen

    def _window(self, text: str, us: Sequence[Unit], best: int, scores: Sequence[float]) -> tuple[int, int]:
        """The units [first, last] around `best`: its block's neighbours that belong with it."""
        first = last = best
        bar = scores[best] * self.context_share

        def fits(a: int, b: int) -> bool:
            return b - a + 1 <= self.max_units and us[b].end - us[a].start <= self.max_chars

        def same_block(i: int) -> bool:
            return 0 <= i < len(us) and us[i].block == us[best].block and us[i].kind == us[best].kind

        # The sentence before, when this one points back at it.
        opener = re.match(r"[^\W\d_]+", text[us[best].start : us[best].end])
        if opener and opener.group().lower() in _POINTS_BACK and same_block(best - 1) and fits(best - 1, last):
            first = best - 1
        while True:
            grown = False
            if same_block(last + 1) and fits(first, last + 1) and scores[last + 1] >= bar:
                last += 1
                grown = True
            if same_block(first - 1) and fits(first - 1, last) and scores[first - 1] >= bar:
                first -= 1
                grown = True
            if not grown:
                return first, last


def _overlaps(text: str, quoted: Sequence[str]) -> bool:
    return any(text in q or q in text for q in quoted)


_FOLD = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "\u00a0": " "})


def _squeezed(text: str, fold: bool) -> tuple[str, list[int]]:
    """`text` with runs of whitespace as one space (none at the ends), and each kept char's offset."""
    chars: list[str] = []
    offsets: list[int] = []
    pending_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            pending_space = bool(chars)
            continue
        if pending_space:
            chars.append(" ")
            offsets.append(i - 1)
            pending_space = False
        chars.append(ch)
        offsets.append(i)
    squeezed = "".join(chars)
    if fold:
        squeezed = squeezed.translate(_FOLD).casefold()
    return squeezed, offsets


def locate(text: str, quote: str, *, fold: bool = False) -> tuple[int, int] | None:
    """Where `quote` sits in `text` with whitespace runs counted as one space: (start, end) offsets of the
    span of `text`, trimmed, or None. `fold` also ignores case and typographic quotes/apostrophes (how a
    model retyping a quote may differ from it without changing a word)."""
    haystack, offsets = _squeezed(text, fold)
    needle, _ = _squeezed(quote, fold)
    if not needle or len(haystack) != len(offsets):
        # casefold can change lengths (German ß): fall back to an exact-case search, which keeps them.
        haystack, offsets = _squeezed(text, False)
        needle, _ = _squeezed(quote, False)
        if not needle:
            return None
    at = haystack.find(needle)
    if at < 0:
        return None
    return offsets[at], offsets[at + len(needle) - 1] + 1
