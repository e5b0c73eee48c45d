"""Where sentences end in prose: the one rule both paths use (the chunker packs sentences, answers quote them).

A sentence ends at terminal punctuation (`.`, `!`, `?`, `…`, with any closing quotes or brackets) followed by
whitespace and then an upper-case letter, a digit or an opening quote, unless the period belongs to an
abbreviation ("e.g. The", "Dr. Smith", "et al. Then", "No. 5", "J. Smith"). Line breaks are whitespace
here: what a line break means (a hard-wrapped line, a list item, a table row) is for the caller to decide.
"""

from __future__ import annotations

import re

# The end of a candidate sentence: terminal punctuation, closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s)""")
_SENTENCE_OPENERS = frozenset("\"'“‘«")
# Words whose trailing period does not end a sentence ("e.g. The", "Dr. Smith", "et al. Then").
_ABBREVIATIONS = frozenset({"cf", "vs", "al", "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "approx", "ca"})
# Abbreviations only before a number ("No. 5", "Fig. 3"): "said no. Then" still ends a sentence.
_NUMBER_ABBREVIATIONS = frozenset({"no", "nos", "fig", "figs", "eq", "vol", "pp", "ch", "sec", "art"})
_INITIALISM = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "e.g", "u.s", "ph.d": periods inside a word
_PERIOD_RUN = frozenset(".\"'”’)]")  # a match with no ! ? or …: its period may be an abbreviation's
_LEADING_PUNCTUATION = "\"'“‘«([{"


def trim(text: str, start: int, end: int) -> tuple[int, int]:
    """The span text[start:end] without whitespace at either end (start == end when it is all space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_ends(text: str, start: int, end: int) -> list[int]:
    """Offsets in text[start:end], ascending, right after each sentence that ends before `end` (the last
    sentence of the span, which ends at `end`, is not listed)."""
    ends = []
    for match in _SENTENCE_END.finditer(text, start, end):
        following, _ = trim(text, match.end(), end)
        if following >= end:
            continue
        opener = text[following]
        if not (opener.isupper() or opener.isdigit() or opener in _SENTENCE_OPENERS):
            continue
        if set(match.group()) <= _PERIOD_RUN and _is_abbreviation(text, start, match.start(), opener):
            continue
        ends.append(match.end())
    return ends


def _is_abbreviation(text: str, paragraph_start: int, period: int, following: str) -> bool:
    """Is the word ending at the period at `period` an abbreviation or an initial ("J. Smith")?

    `following` is the first character after the whitespace that follows the period.
    """
    word_start = period
    while word_start > paragraph_start and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:period].lstrip(_LEADING_PUNCTUATION).lower()
    if len(word) == 1 and word.isalpha():
        return True
    if word in _NUMBER_ABBREVIATIONS:
        return following.isdigit()
    return word in _ABBREVIATIONS or _INITIALISM.fullmatch(word) is not None
