"""Token counts of many spans of one text from one tokenization of the whole text.

The chunker measures every sentence of a document, then every chunk it packs from them (overlapping
spans): tokenizing each span again cost more than the rest of the chunking. For BERT's WordPiece pipeline a
span cut at whitespace holds exactly the tokens of the whole text that fall in it:

- the normalizer (`BertNormalizer`: control characters dropped, whitespace made a space, CJK characters
  spaced, accents stripped, lower case) works character by character;
- the pre-tokenizer (`BertPreTokenizer`) splits at whitespace and punctuation, character by character, so
  no word runs across whitespace, and WordPiece cuts each word alone;
- the post-processor adds the same special tokens ([CLS], [SEP]) to every text.

The same holds for the model's input: a chunk embedded as `prefix + "\n" + chunk` (the worker's title
prefix) is [CLS], the prefix's tokens, the chunk's tokens of the whole text, [SEP]. `SpanCounter.tokens`
builds it from the document's one tokenization, so the encoder need not tokenize the chunk again (on 1,000
SciFact abstracts that second tokenization was about 0.5 ms a chunk, with the model idle meanwhile).

So `SpanCounter.count` counts the whole text's tokens inside a span whose ends touch a space, tab, line
feed or carriage return (characters every step above treats as whitespace; Python's `isspace` also says
yes to separators such as U+001C that BERT drops as control characters, which would join two words), and
checks that no token runs over either end. Any other span, and every span of a tokenizer of another kind
(`SpanCounter.of` says which), is counted on its own text, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_WHITESPACE = frozenset(" \t\n\r")
_Array = np.ndarray[Any, Any]


def _additive(config: dict[str, object]) -> bool:
    """Is this (tokenizer.json) the pipeline the module docstring describes?"""

    def kind(key: str) -> object:
        part = config.get(key)
        return part.get("type") if isinstance(part, dict) else None

    added = config.get("added_tokens") or []
    return (
        kind("normalizer") == "BertNormalizer"
        and kind("pre_tokenizer") == "BertPreTokenizer"
        and kind("model") == "WordPiece"
        and kind("post_processor") in ("TemplateProcessing", "BertProcessing")
        and isinstance(added, list)
        # An added token that may swallow the whitespace beside it could run over a span's end.
        and not any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added if isinstance(t, dict))
    )


class SpanTokens(NamedTuple):
    """What the encoder would give for one text: its token ids (special tokens included, no padding) and
    each token's (start, end) in the text, (0, 0) for the special tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class SpanCounter:
    """`count(text, spans)`: `count_tokens([text[a:b] for a, b in spans])`, in one tokenization of `text`
    where that is exact. `tokenizer` must neither truncate nor pad (it counts); `count_tokens` counts the
    rest (special tokens included, as the result does). The last text's tokens are kept: the chunker asks
    about one document twice (its sentences, then its chunks)."""

    def __init__(self, tokenizer: Tokenizer, count_tokens: Callable[[Sequence[str]], list[int]]) -> None:
        self._tokenizer = tokenizer
        self._count_tokens = count_tokens
        self._specials = len(tokenizer.encode("", add_special_tokens=True).ids)
        self._last: tuple[str, np.ndarray[Any, Any] | None, list[int]] = ("", None, [])
        self._last_prefix: tuple[str, SpanTokens | None] = ("", None)
        self._around = _around(tokenizer)

    @classmethod
    def of(cls, tokenizer: Tokenizer, count_tokens: Callable[[Sequence[str]], list[int]]) -> SpanCounter | None:
        """A counter for `tokenizer`, or None when its counts of spans need not add up (another pipeline)."""
        config = json.loads(tokenizer.to_str())
        if config.get("truncation") is not None or config.get("padding") is not None or not _additive(config):
            return None
        return cls(tokenizer, count_tokens)

    def _tokens(self, text: str) -> tuple[np.ndarray[Any, Any] | None, list[int]]:
        """The (start, end) of each token of `text`, or None when they are not in order, each non-empty and
        ending before the next starts (what the bisections of `count` assume); and the tokens' ids."""
        last_text, last, last_ids = self._last
        if text == last_text and last is not None:
            return last, last_ids
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        offsets = encoding.offsets
        bounds = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
        ordered = bool(np.all(bounds[:, 0] < bounds[:, 1]) and np.all(bounds[:-1, 1] <= bounds[1:, 0]))
        found = bounds if ordered else None
        self._last = (text, found, encoding.ids)  # (one assignment: another thread sees the old or the new)
        return found, encoding.ids

    def _exact(
        self, text: str, spans: Sequence[tuple[int, int]]
    ) -> tuple[_Array, _Array, _Array, _Array, list[int]] | None:
        """For each span: whether it holds exactly the whole text's tokens from `first` to `end`, and those;
        then the whole text's token bounds and ids."""
        bounds, ids = self._tokens(text)
        if bounds is None:
            return None
        wanted = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        # A sentinel token after the text keeps every index below in range (also for a text of no tokens).
        starts = np.append(bounds[:, 0], len(text) + 1)
        ends = np.append(bounds[:, 1], len(text) + 1)
        first = np.searchsorted(starts, wanted[:, 0], side="left")  # the first token starting in the span
        end = np.searchsorted(starts, wanted[:, 1], side="left")  # the first token starting after it
        # No token before the span may run into it, nor its last token out of it.
        before = (first == 0) | (ends[first - 1] <= wanted[:, 0])
        within = (end == first) | (ends[end - 1] <= wanted[:, 1])
        clean = np.fromiter(
            (_at_whitespace(text, a) and _at_whitespace(text, b) for a, b in spans), dtype=bool, count=len(spans)
        )
        return clean & before & within, first, end, bounds, ids

    def count(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        if not spans:
            return []
        found = self._exact(text, spans)
        counts = np.full(len(spans), -1, dtype=np.int64)  # -1: counted alone, below
        if found is not None:
            exact, first, end, _, _ = found
            counts[exact] = (end - first)[exact] + self._specials
        alone = np.flatnonzero(counts < 0).tolist()
        if alone:
            for k, n in zip(alone, self._count_tokens([text[spans[k][0] : spans[k][1]] for k in alone]), strict=True):
                counts[k] = n
        return counts.tolist()  # type: ignore[no-any-return]

    def tokens(
        self, text: str, spans: Sequence[tuple[int, int]], prefix: str, max_tokens: int
    ) -> list[SpanTokens | None]:
        """For each span, what the encoder gives for `prefix + "\n" + text[a:b]`, from the one tokenization
        of `text` (and one of the prefix); None where that is not exact (see `count`), or the result would
        be longer than `max_tokens` (the encoder truncates)."""
        out: list[SpanTokens | None] = [None] * len(spans)
        head = self._prefix(prefix)
        found = self._exact(text, spans) if spans and head is not None and self._around is not None else None
        if found is None or head is None or self._around is None:
            return out
        exact, first, end, bounds, ids = found
        cls, sep = self._around
        shift = len(prefix) + 1
        for k in np.flatnonzero(exact & (end - first + len(head.ids) + 2 <= max_tokens)).tolist():
            a, f, e = spans[k][0], int(first[k]), int(end[k])
            moved = (bounds[f:e] + (shift - a)).tolist()
            out[k] = SpanTokens(
                [cls, *head.ids, *ids[f:e], sep],
                [(0, 0), *head.offsets, *((int(x), int(y)) for x, y in moved), (0, 0)],
            )
        return out

    def _prefix(self, prefix: str) -> SpanTokens | None:
        """The tokens of `prefix + "\n"` without special tokens; None unless the newline ends it cleanly."""
        last_prefix, found = self._last_prefix
        if last_prefix == prefix and found is not None:
            return found
        encoding = self._tokenizer.encode(prefix + "\n", add_special_tokens=False)
        offsets = [(int(a), int(b)) for a, b in encoding.offsets]
        clean = all(b <= len(prefix) for _, b in offsets)
        found = SpanTokens(list(encoding.ids), offsets) if clean else None
        self._last_prefix = (prefix, found)
        return found


def _around(tokenizer: Tokenizer) -> tuple[int, int] | None:
    """([CLS], [SEP]) when the post-processor wraps every text in exactly those two, else None."""
    bare = tokenizer.encode("a", add_special_tokens=False).ids
    wrapped = tokenizer.encode("a", add_special_tokens=True).ids
    if len(wrapped) != len(bare) + 2 or wrapped[1:-1] != bare:
        return None
    return wrapped[0], wrapped[-1]


def _at_whitespace(text: str, position: int) -> bool:
    """Does a cut at `position` fall at the text's ends or beside whitespace (see the module docstring)?"""
    return position <= 0 or position >= len(text) or text[position - 1] in _WHITESPACE or text[position] in _WHITESPACE
