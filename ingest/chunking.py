"""Parsed text -> passages the embedding model sees whole.

The hard rule is the model's window: all-MiniLM-L6-v2 truncates input past 256 tokens (its
`max_seq_length`), so a chunk longer than that would be indexed with a tail no query can ever match.
`Chunker` therefore measures with the model's own tokenizer (`count_tokens`, special tokens included) and
checks every chunk it returns.

How a text is cut:

1. *Segments*: lines are classified with `scan_markdown_lines`; a Markdown heading line is a segment of its
   own, a line of fenced code is one segment, and the text between blank lines (a paragraph) is cut into
   sentences and hard lines.
2. A segment longer than the target is cut at token boundaries, at whitespace whenever there is any.
3. *Packing*: segments fill a chunk up to the target. A heading closes the chunk before it, and a chunk that
   closes inside a section hands its last sentences (up to `overlap_tokens`) to the next one, so a fact
   that straddles the cut is whole in one of them.
4. Every chunk is counted again, in one batch, and re-cut if the estimate was wrong (see `Chunker.chunk`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.parsing import scan_markdown_lines
from stores.ports import Chunk
from stores.sentences import sentence_ends
from stores.sentences import trim as _trim

CountTokens = Callable[[Sequence[str]], list[int]]
TokenOffsets = Callable[[str], list[tuple[int, int]]]
CountSpans = Callable[[str, Sequence[tuple[int, int]]], list[int]]

_WORD = re.compile(r"\S+")
# A piece of a giant word is searched within this many characters per token of budget. Tokens rarely
# span more than a few characters; the bound only keeps the search linear on a megabyte without spaces.
_CHARS_PER_TOKEN_BOUND = 32
_MIN_ROOM = 8  # content tokens a chunk must be able to hold, or the settings leave no room for text


@dataclass(slots=True)
class _Segment:
    start: int
    end: int
    heading_path: str | None  # the path in effect; a heading's own path includes it
    is_heading: bool
    tokens: int = 0  # model tokens without the special tokens
    breaks_before: bool = False  # the first segment of a page (or another boundary): starts a new chunk


@dataclass(slots=True)
class _Atom:
    """The smallest piece a long segment is cut into: a word, or a token when offsets are known."""

    start: int
    end: int
    tokens: int
    word_start: bool  # whitespace (or the segment start) comes right before it


class Chunker:
    """Cuts text into `Chunk`s that the embedding model reads whole.

    `count_tokens(texts)` returns each text's length in the embedding model's tokens, special tokens
    ([CLS]/[SEP]) included; `token_offsets(text)`, when given, returns the (start, end) character span of
    each non-special token and lets long sentences be cut at exact token boundaries; `count_spans(text,
    spans)`, when given, must equal `count_tokens([text[a:b] for a, b in spans])` (an embedder counts many
    spans of one text in one tokenization of it: `stores.token_spans`).

    Every chunk `chunk(text)` returns keeps:

    - `chunk.text == text[chunk.start:chunk.end]`, with no whitespace at either end; `index` is 0..n-1 in
      text order, and together the chunks cover every non-whitespace character of `text`;
    - `token_count == count_tokens([chunk.text])[0]` and `token_count + reserved_tokens <= max_tokens`
      (`reserved_tokens` is what the caller prepends when embedding, e.g. a title);
    - a size of about `min(chunk_tokens, max_tokens - reserved_tokens)` tokens;
    - a Markdown heading starts a new chunk and is never the last thing in one (unless nothing follows it);
      so does a `boundary` (a page), and no chunk spans one;
      consecutive chunks of one section share about `overlap_tokens` worth of whole sentences, chunks on
      either side of a heading share nothing;
    - `heading` is the heading path ("Leave policy > Parental leave") in effect where the chunk's first
      non-heading text starts (for a chunk of headings only: at its last heading), or None before any.

    Raises ValueError when the limits leave no room for text.
    """

    def __init__(
        self,
        *,
        count_tokens: CountTokens,
        max_tokens: int = 256,
        chunk_tokens: int = 200,
        overlap_tokens: int = 40,
        reserved_tokens: int = 0,
        token_offsets: TokenOffsets | None = None,
        count_spans: CountSpans | None = None,
    ) -> None:
        if reserved_tokens < 0 or overlap_tokens < 0 or chunk_tokens < 1:
            raise ValueError("chunk_tokens must be positive; overlap_tokens and reserved_tokens not negative")
        if max_tokens - reserved_tokens < 1:
            raise ValueError(f"reserved_tokens={reserved_tokens} leaves no room under max_tokens={max_tokens}")
        self._count_tokens = count_tokens
        self._token_offsets = token_offsets
        self._count_spans = count_spans
        self._limit = max_tokens - reserved_tokens  # for count_tokens(chunk.text): the hard bound
        self._target = min(chunk_tokens, self._limit)
        # An overlap as large as the target is clamped by packing (the new sentence always fits), so it
        # needs no check here; callers shrinking chunk_tokens for a long title can keep their overlap.
        self._overlap = overlap_tokens
        self._specials = 0  # tokens count_tokens adds to every text; measured on the first call

    # --- public -------------------------------------------------------------------------------------------

    def chunk(self, text: str, boundaries: Sequence[int] = ()) -> list[Chunk]:
        """Cut `text` into chunks (see the class docstring for the contract); "" or blank text gives [].

        `boundaries` are offsets where a new chunk must start, sharing nothing with the one before (the
        first character of each page of a PDF or slide of a deck).
        """
        segments = _segment(text)
        if not segments:
            return []
        _mark_boundaries(segments, boundaries)
        # One batch for every segment; the empty text in front measures the special tokens.
        counts = self._count_in(text, [(0, 0), *((s.start, s.end) for s in segments)])
        self._specials = counts[0]
        if self._limit - self._specials < _MIN_ROOM or self._target - self._specials < 1:
            raise ValueError(
                f"max_tokens - reserved_tokens = {self._limit} and chunk_tokens = {self._target} leave no "
                f"room for text next to the model's {self._specials} special tokens"
            )
        segments = self._fit_segments(text, segments, counts[1:])
        groups = self._pack(text, segments)

        spans = [(g[0].start, g[-1].end, _heading_of(g)) for g in groups]
        measured = self._count_in(text, [(start, end) for start, end, _ in spans])
        chunks: list[Chunk] = []
        for (start, end, heading), n in zip(spans, measured, strict=True):
            # Segment counts add up exactly for WordPiece (it splits at whitespace first) but not for every
            # tokenizer, nor for pieces of one word that end up side by side: the real count decides.
            pieces = [(start, end, n)] if n <= self._limit else self._split(text, start, end, self._limit)
            for piece_start, piece_end, tokens in pieces:
                chunks.append(
                    Chunk(
                        index=len(chunks),
                        text=text[piece_start:piece_end],
                        start=piece_start,
                        end=piece_end,
                        heading=heading,
                        token_count=tokens,
                    )
                )
        return chunks

    # --- sizing -------------------------------------------------------------------------------------------

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        counts = self._count_tokens(list(texts))
        if len(counts) != len(texts):
            raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} texts")
        return counts

    def _count_in(self, text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """`_count` of each span of `text`."""
        if self._count_spans is None:
            return self._count([text[a:b] for a, b in spans])
        counts = self._count_spans(text, spans)
        if len(counts) != len(spans):
            raise ValueError(f"count_spans returned {len(counts)} counts for {len(spans)} spans")
        return counts

    def _fit_segments(self, text: str, segments: list[_Segment], counts: list[int]) -> list[_Segment]:
        """Record each segment's tokens; cut the ones longer than the target into pieces that fit it."""
        fitted: list[_Segment] = []
        for segment, n in zip(segments, counts, strict=True):
            if n <= self._target:
                segment.tokens = n - self._specials
                fitted.append(segment)
                continue
            pieces = self._split(text, segment.start, segment.end, self._target)
            for k, (start, end, tokens) in enumerate(pieces):
                # Only the first piece of a giant heading line acts as a heading (it starts the chunk).
                fitted.append(
                    _Segment(
                        start,
                        end,
                        segment.heading_path,
                        segment.is_heading and k == 0,
                        tokens - self._specials,
                        segment.breaks_before and k == 0,
                    )
                )
        return fitted

    def _pack(self, text: str, segments: list[_Segment]) -> list[list[_Segment]]:
        """Group consecutive segments into chunks (estimated sizes; `chunk` checks the real ones)."""
        target_room = self._target - self._specials
        limit_room = self._limit - self._specials
        groups: list[list[_Segment]] = []
        current: list[_Segment] = []
        tokens = 0  # of `current`
        has_text = False  # `current` holds more than headings
        i = 0
        while i < len(segments):
            segment = segments[i]
            if segment.breaks_before and current:
                # A page boundary: close the chunk (headings and all) and carry nothing over, so every
                # chunk lies on one page and its citation names that page.
                groups.append(current)
                current, tokens, has_text = [], 0, False
            if segment.is_heading:
                if has_text:
                    groups.append(current)
                    current, tokens, has_text = [], 0, False
                current.append(segment)
                tokens += segment.tokens
                i += 1
                continue
            if current and tokens + segment.tokens > target_room:
                if has_text:
                    groups.append(current)
                    current = self._overlap_of(current)
                    while current and sum(s.tokens for s in current) + segment.tokens > target_room:
                        current.pop(0)
                    tokens = sum(s.tokens for s in current)
                    has_text = bool(current)
                elif tokens + segment.tokens > limit_room:
                    # Only headings so far: they must stay with the text after them, so the text is cut to
                    # what fits beside them, unless the headings alone fill half the window (pathological).
                    budget = self._limit - tokens
                    if budget - self._specials < max(_MIN_ROOM, limit_room // 2):
                        groups.append(current)
                        current, tokens = [], 0
                    else:
                        pieces = self._split(text, segment.start, segment.end, budget)
                        segments[i : i + 1] = [
                            _Segment(start, end, segment.heading_path, False, n - self._specials)
                            for start, end, n in pieces
                        ]
                        segment = segments[i]
                # else: headings plus this text exceed the target but fit the window: keep them together.
            current.append(segment)
            tokens += segment.tokens
            has_text = True
            i += 1
        if current:
            groups.append(current)
        return groups

    def _overlap_of(self, closed: list[_Segment]) -> list[_Segment]:
        """The whole sentences at the end of a closed chunk that start the next one (same section only).

        Never the closed chunk's first segment: the next chunk must not contain the whole previous one.
        """
        tail: list[_Segment] = []
        tokens = 0
        for segment in reversed(closed[1:]):
            if segment.is_heading or tokens + segment.tokens > self._overlap:
                break
            tail.append(segment)
            tokens += segment.tokens
        tail.reverse()
        return tail

    # --- cutting long text --------------------------------------------------------------------------------

    def _split(self, text: str, start: int, end: int, budget: int) -> list[tuple[int, int, int]]:
        """Cut text[start:end] into pieces of at most `budget` tokens (count_tokens, specials included).

        Returns (start, end, count) for each piece: no whitespace at either end, every non-whitespace
        character in exactly one piece, cuts at whitespace unless a single word is longer than the budget.
        """
        room = budget - self._specials
        atoms = self._atoms(text, start, end, budget)
        # Cut positions: the start of the first atom of each piece; a piece runs to the next cut, so
        # characters no token covers (some tokenizers drop controls) still belong to a piece.
        cuts = [start] + [atoms[first].start for first in _pack_atoms(atoms, room)[1:]] + [end]
        candidates = [_trim(text, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
        candidates = [(a, b) for a, b in candidates if a < b]
        pieces: list[tuple[int, int, int]] = []
        for (a, b), n in zip(candidates, self._count([text[a:b] for a, b in candidates]), strict=True):
            if n <= budget:
                pieces.append((a, b, n))
            else:  # the estimate was off (a word's tokens differ in context): cut again, measuring
                pieces.extend(self._split_measured(text, a, b, budget))
        return pieces

    def _atoms(self, text: str, start: int, end: int, budget: int) -> list[_Atom]:
        room = budget - self._specials
        if self._token_offsets is not None:
            atoms: list[_Atom] = []
            for a, b in self._token_offsets(text[start:end]):
                a, b = start + a, start + b
                if b <= a:
                    continue
                if atoms and a < atoms[-1].end:  # byte-level tokenizers give one character several tokens
                    atoms[-1].end = max(atoms[-1].end, b)
                    atoms[-1].tokens += 1
                    continue
                atoms.append(_Atom(a, b, 1, a == start or text[a - 1].isspace()))
            if atoms:
                return atoms
        words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
        atoms = []
        for (a, b), n in zip(words, self._count([text[a:b] for a, b in words]), strict=True):
            if n - self._specials <= room:
                atoms.append(_Atom(a, b, n - self._specials, True))
            else:
                for k, (pa, pb, pn) in enumerate(self._split_word(text, a, b, budget)):
                    atoms.append(_Atom(pa, pb, pn - self._specials, k == 0))
        return atoms

    def _split_word(self, text: str, start: int, end: int, budget: int) -> list[tuple[int, int, int]]:
        """Cut one whitespace-free run into measured pieces of at most `budget` tokens."""
        pieces: list[tuple[int, int, int]] = []
        position = start
        guess = budget * 3  # characters; then each piece's length guesses the next one's
        while position < end:
            window = min(end, position + budget * _CHARS_PER_TOKEN_BOUND)
            cuts = range(position + 1, window + 1)  # cuts[k] leaves a piece of k + 1 characters
            cut, n = self._longest_fit(text, position, cuts, budget, hint=guess - 1)
            pieces.append((position, cut, n))
            guess, position = cut - position, cut
        return pieces

    def _split_measured(self, text: str, start: int, end: int, budget: int) -> list[tuple[int, int, int]]:
        """Cut text[start:end] by measuring prefixes: the slow, exact fallback for a piece still too long."""
        pieces: list[tuple[int, int, int]] = []
        position = start
        while position < end:
            [n] = self._count([text[position:end]])
            if n <= budget:
                pieces.append((position, end, n))
                break
            word_ends = [m.end() for m in _WORD.finditer(text, position, end)][:-1]
            try:
                # A piece still too long is usually a little too long: search down from its last word.
                cut, n = self._longest_fit(text, position, word_ends, budget, hint=len(word_ends) - 1)
                pieces.append((position, cut, n))
            except _NothingFits:  # the first word alone is too long: cut inside it
                first_word_end = _WORD.match(text, position)
                assert first_word_end is not None  # position is trimmed: it starts a word
                pieces.extend(self._split_word(text, position, first_word_end.end(), budget))
                cut = first_word_end.end()
            position, _ = _trim(text, cut, end)
        return pieces

    def _longest_fit(self, text: str, start: int, cuts: Sequence[int], budget: int, hint: int = 0) -> tuple[int, int]:
        """The largest cut c in ascending `cuts` with count_tokens(text[start:c]) <= budget, and its count.

        Gallops outward from the index `hint` (a guess at the answer) until the answer is bracketed, then
        binary-searches the bracket: O(log distance) calls, each on one prefix. Token counts of prefixes
        are only nearly monotone, but only measured prefixes are returned, so a non-monotone step can cost
        length, never the bound. Raises `_NothingFits` when not even cuts[0] fits.
        """
        if not cuts:
            raise _NothingFits("no cut position to try")
        best: tuple[int, int] | None = None
        lo, hi = 0, len(cuts) - 1  # the answer's index is in [lo, hi], or it is `best` (lo - 1)
        probe = min(max(hint, lo), hi)
        step = 1
        [n] = self._count([text[start : cuts[probe]]])
        if n <= budget:
            best, lo = (cuts[probe], n), probe + 1
            while lo <= hi:  # gallop up: hint + 1, + 3, + 7, ...
                probe = min(probe + step, hi)
                [n] = self._count([text[start : cuts[probe]]])
                if n > budget:
                    hi = probe - 1
                    break
                best, lo, step = (cuts[probe], n), probe + 1, step * 2
        else:
            hi = probe - 1
            while lo <= hi:  # gallop down: hint - 1, - 3, - 7, ...
                probe = max(probe - step, lo)
                [n] = self._count([text[start : cuts[probe]]])
                if n <= budget:
                    best, lo = (cuts[probe], n), probe + 1
                    break
                hi, step = probe - 1, step * 2
        while lo <= hi:
            middle = (lo + hi) // 2
            [n] = self._count([text[start : cuts[middle]]])
            if n <= budget:
                best, lo = (cuts[middle], n), middle + 1
            else:
                hi = middle - 1
        if best is None:
            raise _NothingFits(f"not even {text[start : cuts[0]]!r} fits in {budget} tokens")
        return best


class _NothingFits(ValueError):
    """Not even the shortest prefix fits the budget."""


def _pack_atoms(atoms: list[_Atom], room: int) -> list[int]:
    """Greedy groups of atoms within `room` tokens; returns each group's first index.

    A group that must end inside a word backs off to the word's start if the group has an earlier one.
    """
    firsts: list[int] = []
    i = 0
    while i < len(atoms):
        firsts.append(i)
        tokens = atoms[i].tokens
        j = i + 1
        while j < len(atoms) and tokens + atoms[j].tokens <= room:
            tokens += atoms[j].tokens
            j += 1
        if j < len(atoms) and not atoms[j].word_start:
            k = j - 1
            while k > i and not atoms[k].word_start:
                k -= 1
            if k > i:
                j = k
        i = j
    return firsts


def _mark_boundaries(segments: list[_Segment], boundaries: Sequence[int]) -> None:
    """Flag the first segment at or after each boundary (segments are in text order)."""
    marks = sorted(set(boundaries))
    k = 0
    for segment in segments:
        crossed = False
        while k < len(marks) and marks[k] <= segment.start:
            crossed, k = True, k + 1
        segment.breaks_before = crossed


def _heading_of(group: list[_Segment]) -> str | None:
    for segment in group:
        if not segment.is_heading:
            return segment.heading_path
    return group[-1].heading_path


# --- segmentation ---------------------------------------------------------------------------------------


def _segment(text: str) -> list[_Segment]:
    """Split text into headings, code lines and sentences, each trimmed, covering every non-space char."""
    lines = text.split("\n")
    kinds = scan_markdown_lines(lines)
    segments: list[_Segment] = []
    path: list[tuple[int, str]] = []  # the open headings, outermost first
    heading_path: str | None = None
    paragraph: tuple[int, int] | None = None

    def flush_paragraph() -> None:
        nonlocal paragraph
        if paragraph is not None:
            segments.extend(_Segment(start, end, heading_path, False) for start, end in _sentences(text, *paragraph))
            paragraph = None

    line_start = 0
    for line, kind in zip(lines, kinds, strict=True):
        line_end = line_start + len(line)
        if kind.heading is not None:
            flush_paragraph()
            while path and path[-1][0] >= kind.heading.level:
                path.pop()
            path.append((kind.heading.level, kind.heading.title))
            heading_path = " > ".join(title for _, title in path)
            start, end = _trim(text, line_start, line_end)
            segments.append(_Segment(start, end, heading_path, True))
        elif kind.in_code or not line.strip():
            flush_paragraph()
            start, end = _trim(text, line_start, line_end)
            if start < end:  # a line of code: sentence rules do not apply to it
                segments.append(_Segment(start, end, heading_path, False))
        else:
            paragraph = (paragraph[0] if paragraph else line_start, line_end)
        line_start = line_end + 1
    flush_paragraph()
    return segments


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut a paragraph into sentences and hard lines; returns trimmed, non-empty spans."""
    cuts = {start, end}
    # A line break ends a segment (list items, table rows, addresses) unless the next line continues the
    # sentence in lower case, as hard-wrapped prose does.
    position = text.find("\n", start, end)
    while position != -1:
        following, _ = _trim(text, position + 1, end)
        if following < end and not text[following].islower():
            cuts.add(position + 1)
        position = text.find("\n", position + 1, end)
    cuts.update(sentence_ends(text, start, end))
    ordered = sorted(cuts)
    spans = [_trim(text, a, b) for a, b in zip(ordered, ordered[1:], strict=False)]
    return [(a, b) for a, b in spans if a < b]
