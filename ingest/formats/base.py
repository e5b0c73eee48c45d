"""What every format parser returns: the parsed text, and where in it each page, slide or sheet lies.

A parser writes its text through a `TextBuilder`, which keeps the offsets: `begin_location` /
`end_location` around a page (a PDF page, a slide) or a sheet record the span of the text it produced, so
a chunk's character offsets map back to the page numbers or the sheet it quotes, exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Location:
    """The span `[start, end)` of the parsed text that comes from one page (1-based; a slide is a page) or
    one sheet of a workbook."""

    start: int
    end: int
    page: int | None = None
    sheet: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """The text of one file version, ready for chunking.

    `text` is what chunks' character offsets refer to. `content_type` is the media type the file was
    parsed as (`text/plain` for any text without a richer format of its own); `title` comes from the format
    (HTML <title> or first <h1>, the first "# " heading of Markdown, document properties of PDF and Office
    files) or is None. `charset` is the character encoding text bytes were decoded with (None for binary
    formats). `locations` lists, in text order and without overlaps, the spans of pages or sheets.
    """

    text: str
    content_type: str
    title: str | None
    charset: str | None = None
    locations: tuple[Location, ...] = ()

    def locate(self, start: int, end: int) -> tuple[int | None, int | None, str | None]:
        """(page_start, page_end, sheet) of the span `[start, end)`: the first and last page it touches, and
        its sheet when the whole span lies in one sheet."""
        if not self.locations or end <= start:
            return None, None, None
        starts = [loc.start for loc in self.locations]
        first = max(bisect.bisect_right(starts, start) - 1, 0)
        last = max(bisect.bisect_right(starts, end - 1) - 1, 0)
        touched = self.locations[first : last + 1]
        pages = [loc.page for loc in touched if loc.page is not None]
        sheets = {loc.sheet for loc in touched}
        sheet = touched[0].sheet if len(sheets) == 1 else None
        return (min(pages) if pages else None), (max(pages) if pages else None), sheet


@dataclass(slots=True)
class _Open:
    start: int
    page: int | None
    sheet: str | None


@dataclass(slots=True)
class TextBuilder:
    """Appends text and records the locations it came from; `build` returns the `ParsedDocument`.

    Blocks are separated by one blank line ("\\n\\n"), lines within a block by "\\n"; text is never
    rewritten after it is appended, so every recorded offset stays exact.
    """

    parts: list[str] = field(default_factory=list)
    length: int = 0
    locations: list[Location] = field(default_factory=list)
    _open: _Open | None = None  # the location being written

    def block(self, text: str) -> None:
        """A paragraph (or a heading line, a table row...) of its own."""
        text = text.strip("\n")
        if text.strip():
            self._separate("\n\n")
            self._append(text)

    def line(self, text: str) -> None:
        """A line that continues the current block (a table row under the previous one)."""
        text = text.strip("\n")
        if text.strip():
            self._separate("\n")
            self._append(text)

    def begin_location(self, *, page: int | None = None, sheet: str | None = None) -> None:
        self.end_location()
        self._open = _Open(self.length, page, sheet)

    def end_location(self) -> None:
        if self._open is None:
            return
        opened, self._open = self._open, None
        if opened.start < self.length:
            self.locations.append(Location(opened.start, self.length, opened.page, opened.sheet))

    def build(self, content_type: str, title: str | None = None, charset: str | None = None) -> ParsedDocument:
        self.end_location()
        return ParsedDocument(
            text="".join(self.parts),
            content_type=content_type,
            title=title,
            charset=charset,
            locations=tuple(self.locations),
        )

    def _separate(self, separator: str) -> None:
        if not self.length:
            return
        before = self.length
        self._append(separator)
        # The separator in front of a location's first block is not part of that location.
        if self._open is not None and self._open.start == before:
            self._open.start = self.length

    def _append(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
