"""Word (DOCX) and PowerPoint (PPTX) files -> text, with python-docx and python-pptx.

DOCX: the body in document order. Paragraphs styled as headings (`Heading 1`...`Heading 9`, `Title`, or a
style based on one) become Markdown heading lines, so the chunker builds the heading path from them as it
does for Markdown; list paragraphs become "- " lines; a table becomes one block of readable rows
("Weeks: 16; Pay: 100%" under a header row, "a | b" without one). Page headers and footers are left out:
they repeat on every page and say nothing a question asks about (the same for footnotes and comments).

PPTX: one section per slide, "# Slide 3: Title", then the text of its shapes from top to bottom, tables as
rows, and the speaker notes ("Notes: ..."). Each slide is a location with its 1-based number as the page.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from ingest.errors import UnsupportedContentError
from ingest.formats.base import ParsedDocument, TextBuilder
from ingest.formats.text import DOCX, PPTX

_SPACES = re.compile(r"\s+")
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.IGNORECASE)


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _open_error(path: str, kind: str, exc: Exception) -> UnsupportedContentError:
    return UnsupportedContentError(f"{path!r} is not a readable {kind} file ({type(exc).__name__}: {exc})")


# --- tables (both formats) --------------------------------------------------------------------------------


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """Readable rows: labelled by the header row when it has a name for every column."""
    rows = [[_one_line(c) for c in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return []
    header = rows[0]
    if len(rows) >= 2 and all(header) and len(set(header)) == len(header):
        lines = []
        for row in rows[1:]:
            pairs = [f"{name}: {value}" for name, value in zip(header, row, strict=False) if value]
            pairs.extend(value for value in row[len(header) :] if value)
            lines.append("; ".join(pairs))
        return [" | ".join(header), *lines]
    return [" | ".join(c for c in row if c) for row in rows]


# --- DOCX -------------------------------------------------------------------------------------------------


def _heading_level(style: Any) -> int:
    for _ in range(5):  # a custom style based on "Heading 2" is a heading too
        if style is None:
            return 0
        name = style.name or ""
        if name.lower() == "title":
            return 1
        if match := _HEADING_STYLE.fullmatch(name.strip()):
            return min(int(match.group(1)), 6)
        style = style.base_style
    return 0


class _Styles:
    """(heading level, is a list style) per style id. python-docx looks a paragraph's style up by scanning
    every style of the document each time; once per style id is enough."""

    def __init__(self) -> None:
        self._known: dict[str | None, tuple[int, bool]] = {}

    def of(self, paragraph: Any) -> tuple[int, bool]:
        style_id = paragraph._p.style
        if style_id not in self._known:
            style = paragraph.style
            name = (style.name or "") if style is not None else ""
            self._known[style_id] = (_heading_level(style), name.lower().startswith("list"))
        level, list_style = self._known[style_id]
        ppr = paragraph._p.pPr
        return level, list_style or (ppr is not None and ppr.numPr is not None)


def _docx_rows(table: Any) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a cell merged across columns is returned once per grid column
                continue
            seen.add(id(cell._tc))
            cells.append(cell.text)
        rows.append(cells)
    return rows


def parse_docx(data: bytes, path: str) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise _open_error(path, "DOCX", exc) from exc
    except Exception as exc:  # lxml's XMLSyntaxError and python-docx's own errors share no base
        raise _open_error(path, "DOCX", exc) from exc
    builder = TextBuilder()
    title = _one_line(document.core_properties.title or "") or None
    first_heading: str | None = None
    in_list = False
    styles = _Styles()
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            lines = table_lines(_docx_rows(item))
            if lines:
                builder.block(lines[0])
                for line in lines[1:]:
                    builder.line(line)
            in_list = False
            continue
        assert isinstance(item, Paragraph)
        text = item.text.replace("\t", " ").strip()
        if not text:
            continue
        level, is_list = styles.of(item)
        if level:
            heading = _one_line(text)
            builder.block("#" * level + " " + heading)
            first_heading = first_heading or heading
            in_list = False
        elif is_list:
            (builder.line if in_list else builder.block)("- " + _one_line(text))
            in_list = True
        else:
            builder.block(text)
            in_list = False
    return builder.build(DOCX, title=title or first_heading)


# --- PPTX -------------------------------------------------------------------------------------------------


def _shapes_in_order(shapes: Any) -> Iterator[Any]:
    """Shapes from top to bottom, then left to right; the shapes of a group in their own order."""
    ordered = sorted(shapes, key=lambda s: (s.top if s.top is not None else 0, s.left if s.left is not None else 0))
    for shape in ordered:
        if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):  # a group
            yield from _shapes_in_order(shape.shapes)
        else:
            yield shape


def _text_frame_lines(frame: Any) -> list[str]:
    lines = []
    for paragraph in frame.paragraphs:
        text = _one_line(paragraph.text.replace("\v", " "))
        if text:
            lines.append("  " * paragraph.level + text)
    return lines


def parse_pptx(data: bytes, path: str) -> ParsedDocument:
    from pptx import Presentation

    try:
        deck = Presentation(io.BytesIO(data))
    except Exception as exc:  # zip, XML and python-pptx's own errors
        raise _open_error(path, "PPTX", exc) from exc
    builder = TextBuilder()
    first_title: str | None = None
    for number, slide in enumerate(deck.slides, start=1):
        builder.begin_location(page=number)
        title_shape = slide.shapes.title
        title = _one_line(title_shape.text_frame.text) if title_shape is not None and title_shape.has_text_frame else ""
        builder.block(f"# Slide {number}: {title}" if title else f"# Slide {number}")
        first_title = first_title or title or None
        for shape in _shapes_in_order(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                lines = table_lines(rows)
            elif shape.has_text_frame:
                lines = _text_frame_lines(shape.text_frame)
            else:
                lines = []
            if lines:
                builder.block(lines[0])
                for line in lines[1:]:
                    builder.line(line)
        if slide.has_notes_slide:
            frame = slide.notes_slide.notes_text_frame
            notes = frame.text.strip() if frame is not None else ""
            if notes:
                builder.block("Notes: " + notes.replace("\v", "\n"))
    return builder.build(PPTX, title=_one_line(deck.core_properties.title or "") or first_title)
