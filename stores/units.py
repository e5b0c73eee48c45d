"""Units: the pieces of a passage an answer can quote, found the same way at ingest and at query time.

A passage is cut into blocks, then units:

- a blank line ends a block; a Markdown heading, a table row (a line starting with `|`, or holding a tab)
  and a line of fenced code are blocks of one unit each;
- a list item (`-`, `*`, `+`, `•`, `1.`, `2)`, `(a)`, `(iv)`, `3.1.`) starts a block; the lines after it
  that start no new item continue it, as hard-wrapped text does (a numbered line starts an item only
  after a line that ends a clause: wrapped prose can put "2.1 of this License" at a line start);
- any other line continues the block before it: a hard-wrapped paragraph is one block, its line breaks
  are spaces, so a sentence that runs over three lines is one unit;
- inside a block, units are sentences (`stores.sentences`: the chunker's own rule for where one ends).

The ingest path stores a vector per unit with each chunk (`UnitVectors`, pooled from the chunk's own
token embeddings), so that the query path scores units without running the model again.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from typing import Any, NamedTuple, Protocol

import numpy as np

from stores.sentences import sentence_ends, trim

_HEADING = re.compile(r"#{1,6}[ \t]+\S")
_HEADING_MARKS = re.compile(r"#{1,6}[ \t]+")
_BULLET = re.compile(r"[-*+•][ \t]+")
_ITEM = re.compile(
    r"""(?:[-*+•]                    # bullets
        |\d{1,3}(?:\.\d{1,3})*[.)]   # 1.  2)  3.1.
        |\d{1,3}(?:\.\d{1,3})+       # 3.1 (a section number without a final period)
        |\(?[a-zA-Z]\)               # (a)  a)
        |\((?:[ivxlc]{1,6}|\d{1,3})\)  # (iv)  (2)
       )[ \t]+\S""",
    re.VERBOSE,
)
_RULE = re.compile(r"([-=*_])(?:[ \t]*\1){2,}")  # "---", "===", "* * *": a thematic break or an underline
_FENCE = re.compile(r"[ \t]{0,3}(```|~~~)")


class Unit(NamedTuple):
    """A sentence, list-item sentence, heading or table row: `text[start:end]` of the passage, trimmed.
    (A tuple: an answer reads a few dozen back from the index per question, `Layout.from_payload`.)"""

    start: int
    end: int
    block: int
    kind: str  # "sentence" | "heading" | "row" | "code"


def units(text: str) -> list[Unit]:
    """The units of a passage in order (see the module docstring), as trimmed offset ranges."""
    out: list[Unit] = []
    block = -1
    # The open block of prose: (start, end, end of its item marker; a period there ends no sentence).
    paragraph: tuple[int, int, int] | None = None
    in_code = False

    def close(kind: str = "sentence") -> None:
        nonlocal paragraph
        if paragraph is not None:
            a, b, marker_end = paragraph
            ends = [] if kind == "heading" else [e for e in sentence_ends(text, a, b) if e > marker_end]
            cuts = [a, *ends, b]
            for x, y in zip(cuts, cuts[1:], strict=False):
                x, y = trim(text, x, y)
                if x < y:
                    out.append(Unit(x, y, block, kind))
            paragraph = None

    def single(a: int, b: int, kind: str) -> None:
        nonlocal block
        close()
        a, b = trim(text, a, b)
        if a < b:
            block += 1
            out.append(Unit(a, b, block, kind))

    line_start = 0
    for line in text.split("\n"):
        line_end = line_start + len(line)
        stripped = line.strip()
        content_start = line_start + len(line) - len(line.lstrip())
        if _FENCE.match(line):
            in_code = not in_code
            single(line_start, line_end, "code")
        elif in_code:
            single(line_start, line_end, "code")
        elif not stripped:
            close()
        elif _RULE.fullmatch(stripped):
            # "Title" over "-----" or "=====" is a (setext) heading; any other rule only separates blocks.
            one_line = paragraph is not None and "\n" not in text[paragraph[0] : paragraph[1]]
            close("heading" if one_line and stripped[0] in "-=" else "sentence")
        elif _HEADING.match(stripped):
            heading = _HEADING_MARKS.match(stripped)
            assert heading is not None
            single(content_start + heading.end(), line_end, "heading")
        elif stripped.startswith("|") or "\t" in stripped:
            single(line_start, line_end, "row")
        elif (
            paragraph is None
            or _BULLET.match(stripped)
            or (_ITEM.match(stripped) and _ends_clause(text, paragraph[:2]))
        ):
            close()
            block += 1
            bullet = _BULLET.match(stripped)
            item = _ITEM.match(stripped)
            # A bullet is layout, not text: the quote starts at the item's first word.
            start = content_start + (bullet.end() if bullet else 0)
            paragraph = (start, line_end, content_start + item.end() - 1 if item else start)
        else:
            paragraph = (paragraph[0], line_end, paragraph[2])  # a hard-wrapped line: the block goes on
        line_start = line_end + 1
    close()
    return out


def _ends_clause(text: str, paragraph: tuple[int, int]) -> bool:
    """Does the open block end like a sentence or clause? Only then does a numbered line start an item: in
    hard-wrapped prose a line may well begin with "2.1 of this License" or "(a) provisionally"."""
    a, b = trim(text, *paragraph)
    return a < b and text[b - 1] in ".:;!?)"


def unit_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) offsets of the units of `text`, in order."""
    return [(u.start, u.end) for u in units(text)]


# The payload format of `Layout`; bump it when `units` changes, and stored layouts of the old format are
# ignored (the query path then finds the units itself, as before they were stored).
LAYOUT_FORMAT = 1
_KIND_CODES = {"sentence": "s", "heading": "h", "row": "r", "code": "c"}
_KINDS_OF = {code: kind for kind, code in _KIND_CODES.items()}


class TermSets(Protocol):
    """What finds a unit's terms (`stores.sparse.Bm25Encoder`): a text's distinct term indices, and the name
    of the term space they are in (a layout's terms are used only by an encoder of the same space)."""

    @property
    def term_space(self) -> str: ...

    def term_set(self, text: str) -> set[int]: ...


@dataclass(frozen=True, slots=True)
class Layout:
    """A chunk's units (`units(text)`) and each one's distinct BM25 terms, found at ingest and stored with
    the chunk, so that an extractive answer neither splits its passages into sentences again nor tokenizes
    them: on the query path, that work runs right after the model, whose weights have pushed the
    interpreter's own data out of the CPU caches (docs/performance.md)."""

    units: tuple[Unit, ...]
    terms: tuple[tuple[int, ...], ...] | None  # per unit, its distinct terms in order; None when no encoder found them
    term_space: str | None

    @classmethod
    def of(cls, text: str, found: Sequence[Unit], encoder: TermSets | None) -> Layout:
        """The layout of `text` whose units are `found` (`units(text)`), its terms by `encoder`."""
        if encoder is None:
            return cls(tuple(found), None, None)
        terms = tuple(tuple(sorted(encoder.term_set(text[u.start : u.end]))) for u in found)
        return cls(tuple(found), terms, encoder.term_space)

    def terms_in(self, term_space: str | None) -> tuple[tuple[int, ...], ...] | None:
        """The units' terms, if they are of `term_space`."""
        return self.terms if term_space is not None and term_space == self.term_space else None

    def to_payload(self) -> dict[str, Any]:
        # Offsets, blocks and terms as little-endian uint32 in base64: read back in one call each, and
        # never negative or fractional whatever the payload holds.
        out: dict[str, Any] = {
            "format": LAYOUT_FORMAT,
            "units": _packed([x for u in self.units for x in (u.start, u.end, u.block)]),
            "kinds": "".join(_KIND_CODES[u.kind] for u in self.units),
        }
        if self.terms is not None and self.term_space is not None:
            ids = [t for ts in self.terms for t in ts]
            out["term_space"] = self.term_space
            out["term_counts"] = [len(ts) for ts in self.terms]
            out["terms"] = _packed(ids)
        return out

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any] | None, text_length: int) -> Layout | None:
        """The stored layout of a chunk of `text_length` characters, or None when there is none, it is of
        another format, or malformed: units out of order or out of the text, terms that do not add up (a
        payload is data from the index: it is checked, never trusted)."""
        if not isinstance(payload, Mapping) or payload.get("format") != LAYOUT_FORMAT:
            return None
        try:
            flat = _unpacked(payload["units"])
            kinds = [_KINDS_OF[c] for c in payload["kinds"]] if isinstance(payload["kinds"], str) else None
        except (KeyError, TypeError, ValueError):
            return None
        if kinds is None or len(flat) != 3 * len(kinds):
            return None
        starts, ends, blocks = flat[0::3], flat[1::3], flat[2::3]
        if kinds and not (
            ends[-1] <= text_length
            and all(a < b for a, b in zip(starts, ends, strict=True))
            and all(b <= a for b, a in zip(ends, starts[1:], strict=False))
            and all(x <= y for x, y in zip(blocks, blocks[1:], strict=False))
        ):
            return None
        found = tuple(map(Unit, starts, ends, blocks, kinds))
        n = len(found)
        space = payload.get("term_space")
        if space is None:
            return cls(found, None, None)
        try:
            counts = [int(x) for x in payload["term_counts"]]
            ids = _unpacked(payload["terms"])
        except (KeyError, TypeError, ValueError):
            return None
        if not isinstance(space, str) or len(counts) != n or min(counts, default=0) < 0 or sum(counts) != len(ids):
            return None
        bounds = [0, *accumulate(counts)]
        terms = tuple(tuple(ids[bounds[i] : bounds[i + 1]]) for i in range(n))
        return cls(found, terms, space)


def _packed(values: Sequence[int]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<u4").tobytes()).decode("ascii")


def _unpacked(text: Any) -> list[int]:
    """Raises TypeError or ValueError (binascii.Error) for what `_packed` does not make."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("not a whole number of uint32")
    return np.frombuffer(raw, dtype="<u4").tolist()  # type: ignore[no-any-return]


# The payload format of `UnitVectors`; bump it when `units` or the pooling changes, and stored vectors of the
# old format are ignored (the query path then embeds those units itself, as before they were stored).
UNITS_FORMAT = 1


@dataclass(frozen=True, slots=True)
class UnitVectors:
    """One vector per unit of a chunk's text: row i is the mean of the chunk's own token embeddings (the
    forward pass that embedded the chunk) over `spans[i]`, offsets into the chunk text, L2-normalised.

    Stored with the chunk as int8 with one scale per row (a unit costs dimension + 4 bytes, base64 in the
    payload); the cosine to a question moves by about 0.001 against float32, far under the gaps the
    extractor ranks by."""

    spans: tuple[tuple[int, int], ...]
    vectors: np.ndarray[Any, Any]  # float32, (len(spans), dimension)

    def by_span(self) -> dict[tuple[int, int], np.ndarray[Any, Any]]:
        return {span: self.vectors[i] for i, span in enumerate(self.spans)}

    def shifted(self, offset: int) -> UnitVectors:
        """The same vectors with every span moved by `offset` (embedded text -> chunk text)."""
        return UnitVectors(tuple((a + offset, b + offset) for a, b in self.spans), self.vectors)

    def to_payload(self) -> dict[str, Any]:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        scale = np.abs(vectors).max(axis=1) / 127.0 if len(vectors) else np.zeros(0, dtype=np.float32)
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.rint(vectors / safe[:, None]), -127, 127).astype(np.int8)
        return {
            "format": UNITS_FORMAT,
            "spans": [x for span in self.spans for x in span],
            "scales": scale.astype(np.float32).tolist(),
            "int8": base64.b64encode(q.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any] | None, dimension: int | None = None) -> UnitVectors | None:
        """The stored vectors, or None when there are none, they are of another format or malformed (a
        payload is data from the index: it is checked, never trusted)."""
        stored = _stored_units(payload, dimension)
        if stored is None:
            return None
        spans, scales, raw = stored
        vectors = np.frombuffer(raw, dtype=np.int8).reshape(len(spans), -1).astype(np.float32) * scales[:, None]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
        return cls(spans, vectors)


def _stored_units(
    payload: Mapping[str, Any] | None, dimension: int | None
) -> tuple[tuple[tuple[int, int], ...], np.ndarray[Any, Any], bytes] | None:
    """The spans, scales and int8 rows of a `UnitVectors` payload, or None when it is not one of this
    format (and of `dimension`, when given) with at least one unit."""
    if not isinstance(payload, Mapping) or payload.get("format") != UNITS_FORMAT:
        return None
    try:
        flat = [int(x) for x in payload["spans"]]
        scales = np.asarray(payload["scales"], dtype=np.float32)
        raw = base64.b64decode(payload["int8"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    if scales.ndim != 1:
        return None
    n = len(scales)
    if len(flat) != 2 * n or n == 0 or len(raw) % n:
        return None
    if dimension is not None and len(raw) != n * dimension:
        return None
    return tuple(zip(flat[0::2], flat[1::2], strict=True)), scales, raw


def stored_similarities(
    payloads: Sequence[Mapping[str, Any] | None], question: Sequence[float], dimension: int
) -> list[dict[tuple[int, int], float] | None]:
    """For each chunk's stored unit vectors (`UnitVectors.to_payload`), the cosine of each unit's vector
    to `question` (a unit vector of the same model), by span; None for a chunk without valid ones. The
    same cosines as `UnitVectors.from_payload` and a dot product give, up to float rounding, in one product
    over all the chunks: a row's positive scale drops out of its cosine, which is the int8 row's dot
    product with the question over the row's norm."""
    found = [_stored_units(p, dimension) for p in payloads]
    rows = [raw for f in found if f is not None for raw in (f[2],)]
    if not rows:
        return [None] * len(payloads)
    units = np.frombuffer(b"".join(rows), dtype=np.int8).reshape(-1, dimension).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", units, units))
    cosines = (units @ np.asarray(question, dtype=np.float32)) / np.where(norms > 0, norms, 1.0)
    values = cosines.tolist()
    out: list[dict[tuple[int, int], float] | None] = []
    at = 0
    for f in found:
        if f is None:
            out.append(None)
            continue
        spans = f[0]
        out.append(dict(zip(spans, values[at : at + len(spans)], strict=True)))
        at += len(spans)
    return out


def pool_spans(
    token_vectors: np.ndarray[Any, Any], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> UnitVectors:
    """Mean-pool `token_vectors` (one row per token of one text, padding rows beyond `offsets` ignored) over
    each character span; `offsets` are the tokens' (start, end) in the text, (0, 0) for special tokens.
    A span no token falls in (cut off by the window) gets no vector.

    The spans' token ranges, counts and norms are found for all spans at once; each vector is bit for bit the
    span's `mean` over its rows divided by its `np.linalg.norm`."""
    dimension = token_vectors.shape[-1]
    flat = chain.from_iterable(offsets)  # (a Python list of pairs: twice as fast as np.asarray on it)
    bounds = np.fromiter(flat, dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
    real = bounds[:, 1] > bounds[:, 0]
    if not spans or not real.any():
        return UnitVectors((), np.zeros((0, dimension), dtype=np.float32))
    starts, ends = bounds[real, 0], bounds[real, 1]
    at = np.flatnonzero(real)
    vectors = np.asarray(token_vectors, dtype=np.float32)
    # The real tokens lie between [CLS] and [SEP]: a view of them, unless specials sit among them.
    rows = vectors[at[0] : at[-1] + 1] if at[-1] - at[0] + 1 == len(at) else vectors[at]
    wanted = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    first = np.searchsorted(ends, wanted[:, 0], side="right")  # the first token ending after a span starts
    last = np.searchsorted(starts, wanted[:, 1], side="left")  # one past the last token starting before its end
    some = np.flatnonzero(last > first)
    if not len(some):
        return UnitVectors((), np.zeros((0, dimension), dtype=np.float32))
    first, last = first[some], last[some]
    # One span's rows summed as `mean` sums them (row after row); `np.add.reduceat` sums in another order.
    sums = np.stack([rows[f:t].sum(axis=0) for f, t in zip(first.tolist(), last.tolist(), strict=True)])
    means = sums / (last - first).astype(np.float32)[:, None]
    norms = np.sqrt(np.asarray([m.dot(m) for m in means], dtype=np.float32))
    positive = norms > 0
    kept = tuple((a, b) for a, b in wanted[some[positive]].tolist())
    return UnitVectors(kept, means[positive] / norms[positive, None])
