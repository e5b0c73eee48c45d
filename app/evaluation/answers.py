"""Answer quality on rationale-annotated claims (SciFact's evidence sentences), checked against the answer text.

`eventrag eval DATASET --answers` asks every claim that has rationales through the production answer path
(`Agent.answer`, extractive) on a corpus indexed by the production worker, and scores each answer by
reading it as a user would, not by trusting how it was built:

- *quotes*: every line of an extractive answer is either a known note (`retrieval.answering.NOTES`) or a
  quote followed by its markers, `<quote> [n]`. The quote is *faithful* when, whitespace aside, it is a
  contiguous span of the passage of citation `n`, and quotes of one passage appear in its own order.
- `faithful`: the share of answers all of whose lines are faithful (an answer saying "not covered" with no
  quote is faithful: it quotes nothing).
- `rationale_recall`: the share of claims with at least one rationale sentence inside one quote whole,
  quoted from the rationale's own document.
- `cited_rationale_doc`: the share of claims whose citations include a document with a rationale.

Rationales are one JSON object a line in `rationales/<split>.jsonl`:
`{"query_id", "doc_id", "label", "sentence_ids", "sentences"}`; `sentences` are verbatim substrings of the
document's text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.evaluation.jsonl import read_jsonl
from app.evaluation.metrics import mean
from retrieval.answering import NOT_ANSWERED, NOTES, Answer

if TYPE_CHECKING:
    from rich.progress import Progress


class RationaleFormatError(ValueError):
    """`rationales/<split>.jsonl` is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Rationale:
    query_id: str
    doc_id: str
    sentences: tuple[str, ...]


def load_rationales(folder: Path, split: str = "train") -> dict[str, list[Rationale]]:
    """query id -> its rationales, from `rationales/<split>.jsonl`. Raises RationaleFormatError."""
    path = folder / "rationales" / f"{split}.jsonl"
    fields = ["query_id", "doc_id", "sentences"]
    missing = ": --answers needs the evidence sentences of each claim"
    out: dict[str, list[Rationale]] = {}
    for line_no, row in read_jsonl(path, fields=fields, error=RationaleFormatError, missing=missing):
        sentences = row["sentences"]
        if not isinstance(sentences, list):
            raise RationaleFormatError(f"{path}:{line_no}: sentences must be a list of strings")
        rationale = Rationale(str(row["query_id"]), str(row["doc_id"]), tuple(str(s) for s in sentences))
        out.setdefault(rationale.query_id, []).append(rationale)
    return out


# reading an answer ------------------------------------------------------------------------------------

# A quote line ends with its markers: "<quote> [1]" or "<quote> [1][2]". Brackets inside the quote (a
# passage's own "[12]" reference) stay part of the quote: only the trailing run counts.
_QUOTE_LINE = re.compile(r"^(?P<quote>.*?\S)\s*(?P<markers>(?:\[\d{1,3}\])+)$")
_MARKER = re.compile(r"\[(\d{1,3})\]")


def normalise_space(text: str) -> str:
    """Runs of whitespace (line breaks included) as one space, no space at either end."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class QuoteLine:
    text: str  # as shown, whitespace-normalised
    markers: tuple[int, ...]


def quote_lines(answer: str) -> list[QuoteLine] | None:
    """The quote lines of an extractive answer; None when a line is neither a quote nor a known note."""
    notes = {normalise_space(n) for n in NOTES}
    quotes: list[QuoteLine] = []
    for raw in answer.splitlines():
        line = normalise_space(raw)
        if not line or line in notes:
            continue
        m = _QUOTE_LINE.match(line)
        if m is None:
            return None
        quotes.append(QuoteLine(m.group("quote"), tuple(int(n) for n in _MARKER.findall(m.group("markers")))))
    return quotes


def is_faithful(answer: Answer) -> bool:
    """Every line is a known note, or a quote that is a contiguous span (whitespace aside) of one of the
    passages it cites; quotes of one passage appear in the passage's own order."""
    quotes = quote_lines(answer.answer)
    if quotes is None:
        return False
    passages = {c.n: normalise_space(c.text) for c in answer.citations}
    last_position: dict[int, int] = {}
    for q in quotes:
        found = False
        for n in q.markers:
            passage = passages.get(n)
            if passage is None:
                continue
            at = passage.find(q.text, last_position.get(n, 0))
            if at < 0:
                at = passage.find(q.text)
                if at >= 0:  # the quote is in the passage, but before one shown earlier: out of order
                    return False
                continue
            last_position[n] = at
            found = True
            break
        if not found:
            return False
    return True


def quotes_a_rationale(answer: Answer, rationales: Sequence[Rationale]) -> bool:
    """Some rationale sentence sits whole inside one quote taken from the rationale's own document."""
    quotes = quote_lines(answer.answer) or []
    file_of = {c.n: c.file_id for c in answer.citations}
    for q in quotes:
        files = {file_of.get(n) for n in q.markers}
        for r in rationales:
            if r.doc_id in files and any(normalise_space(s) in q.text for s in r.sentences):
                return True
    return False


def cites_a_rationale_document(answer: Answer, rationales: Sequence[Rationale]) -> bool:
    docs = {r.doc_id for r in rationales}
    return any(c.file_id in docs for c in answer.citations)


# the run ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AnswerScores:
    """The answer figures (`faithful`, `rationale_recall`, `cited_rationale_doc`: shares of `claims`)."""

    faithful: float
    rationale_recall: float
    cited_rationale_doc: float
    claims: int
    seconds: float
    top_k: int
    mode: str
    covered: float  # share of answers that quote something (not "not covered")
    not_answered: float  # share of answers that say no passage answers directly (NOT_ANSWERED)
    mean_citations: float
    mean_quotes: float
    mean_answer_words: float  # what a reader has to read: recall bought by quoting everything shows here


@dataclass(slots=True)
class ClaimOutcome:
    query_id: str
    faithful: bool
    quotes_rationale: bool
    cites_rationale_doc: bool
    covered: bool
    not_answered: bool
    citations: int
    quotes: int
    words: int


def score_answer(query_id: str, answer: Answer, rationales: Sequence[Rationale]) -> ClaimOutcome:
    quotes = quote_lines(answer.answer) or []
    return ClaimOutcome(
        query_id=query_id,
        faithful=is_faithful(answer),
        quotes_rationale=quotes_a_rationale(answer, rationales),
        cites_rationale_doc=cites_a_rationale_document(answer, rationales),
        covered=answer.covered and bool(quotes),
        not_answered=NOT_ANSWERED in answer.answer.splitlines(),
        citations=len(answer.citations),
        quotes=len(quotes),
        words=sum(len(q.text.split()) for q in quotes),
    )


def summarise(outcomes: Sequence[ClaimOutcome], *, seconds: float, top_k: int, mode: str) -> AnswerScores:
    if not outcomes:
        return AnswerScores(0.0, 0.0, 0.0, 0, round(seconds, 1), top_k, mode, 0.0, 0.0, 0.0, 0.0, 0.0)

    def share(flags: Iterator[bool]) -> float:
        return mean(1.0 if f else 0.0 for f in flags)

    return AnswerScores(
        faithful=share(o.faithful for o in outcomes),
        rationale_recall=share(o.quotes_rationale for o in outcomes),
        cited_rationale_doc=share(o.cites_rationale_doc for o in outcomes),
        claims=len(outcomes),
        seconds=round(seconds, 1),
        top_k=top_k,
        mode=mode,
        covered=share(o.covered for o in outcomes),
        not_answered=share(o.not_answered for o in outcomes),
        mean_citations=mean(o.citations for o in outcomes),
        mean_quotes=mean(o.quotes for o in outcomes),
        mean_answer_words=mean(o.words for o in outcomes),
    )


AnswerFn = Callable[[str], Answer]  # question -> the production answer


@contextmanager
def _task(progress: Progress | None, total: int) -> Iterator[Callable[[], None]]:
    if progress is None:
        yield lambda: None
        return
    task = progress.add_task("answering claims", total=total)
    try:
        yield lambda: progress.advance(task, 1)
    finally:
        progress.update(task, completed=total)


def evaluate_answers(
    answer: AnswerFn,
    claims: Mapping[str, str],
    rationales: Mapping[str, Sequence[Rationale]],
    *,
    top_k: int,
    mode: str,
    progress: Progress | None = None,
) -> tuple[AnswerScores, list[ClaimOutcome]]:
    """Ask every claim (id -> text) that has rationales, in the given order, and score the answers."""
    asked = [q for q in claims if rationales.get(q)]
    outcomes = []
    started = time.perf_counter()
    with _task(progress, len(asked)) as advance:
        for query_id in asked:
            outcomes.append(score_answer(query_id, answer(claims[query_id]), rationales[query_id]))
            advance()
    seconds = time.perf_counter() - started
    return summarise(outcomes, seconds=seconds, top_k=top_k, mode=mode), outcomes
