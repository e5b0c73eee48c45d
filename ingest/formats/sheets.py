"""Spreadsheets (XLSX, with openpyxl) and CSV/TSV -> rows as text a question can match.

Every row becomes a line that names where it is and what each value means:

    # Sheet: Prices
    Sheet: Prices; columns: Product | Price | Currency
    Sheet: Prices; row 12: Product: Widget; Price: 3.5; Currency: EUR

The first non-empty row names the columns when every cell of it is text; otherwise columns go by their
letters (A, B, ...), as the spreadsheet shows them. Row numbers are the spreadsheet's own (1-based, empty
rows counted), so "row 12" is the row a user finds in Excel. Each sheet is a heading (a chunk never spans
two sheets) and a location, which puts the sheet name in every citation. A CSV is one unnamed sheet.

Rows are capped (`max_rows`, all sheets together): a bigger file is refused with the reason rather than
indexed in part. Formulas give the value last computed by the application that saved the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from typing import Any

from ingest.errors import UnsupportedContentError
from ingest.formats.base import ParsedDocument, TextBuilder
from ingest.formats.text import XLSX

CSV = "text/csv"
TSV = "text/tab-separated-values"
_SPACES = re.compile(r"\s+")


def column_letter(index: int) -> str:
    """0 -> "A", 25 -> "Z", 26 -> "AA"."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    return _SPACES.sub(" ", str(value)).strip()


class _RowWriter:
    def __init__(self, builder: TextBuilder, path: str, max_rows: int) -> None:
        self.builder = builder
        self.path = path
        self.max_rows = max_rows
        self.rows = 0

    def sheet(self, name: str | None, rows: Iterable[tuple[int, Sequence[Any]]]) -> None:
        """Write one sheet: (row number, cell values) pairs in order."""
        prefix = f"Sheet: {name}; " if name else ""
        self.builder.begin_location(sheet=name)
        if name:
            self.builder.block(f"# Sheet: {name}")
        header: list[str] | None = None
        first = True
        for number, values in rows:
            cells = [_cell(v) for v in values]
            if not any(cells):
                continue
            self.rows += 1
            if self.rows > self.max_rows:
                where = f" (reached in sheet {name!r})" if name else ""
                raise UnsupportedContentError(
                    f"{self.path!r} has more than {self.max_rows} rows{where}, the limit"
                    " (EVENTRAG_PARSING__MAX_ROWS); split the file or raise the limit"
                )
            while cells and not cells[-1]:
                cells.pop()
            if first:
                first = False
                if all(cells) and all(not isinstance(v, int | float) for v in values[: len(cells)]):
                    header = cells
                    self.builder.block(f"{prefix}columns: {' | '.join(cells)}")
                    continue
            names = header or []
            pairs = [
                f"{names[i] if i < len(names) else column_letter(i)}: {value}" for i, value in enumerate(cells) if value
            ]
            self.builder.block(f"{prefix}row {number}: {'; '.join(pairs)}")
        self.builder.end_location()


def parse_xlsx(data: bytes, path: str, *, max_rows: int) -> ParsedDocument:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # zip, XML and openpyxl's own errors share no base
        raise UnsupportedContentError(f"{path!r} is not a readable XLSX file ({type(exc).__name__}: {exc})") from exc
    builder = TextBuilder()
    writer = _RowWriter(builder, path, max_rows)
    try:
        for sheet in book.worksheets:
            writer.sheet(sheet.title, _numbered_rows(sheet.iter_rows()))
        title = (book.properties.title or "").strip() or None
    finally:
        book.close()
    return builder.build(XLSX, title=title)


def _numbered_rows(rows: Iterable[Sequence[Any]]) -> Iterable[tuple[int, list[Any]]]:
    for row in rows:
        number = next((c.row for c in row if getattr(c, "row", None) is not None), None)
        if number is not None:
            yield number, [c.value for c in row]


def parse_delimited(text: str, path: str, *, kind: str, charset: str | None, max_rows: int) -> ParsedDocument:
    """CSV or TSV text. A file the csv module cannot read (a quote never closed...) is indexed as plain text,
    so its words are still found."""
    sample = text[:20_000]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters="\t" if kind == TSV else ",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if kind == TSV else csv.excel
    builder = TextBuilder()
    writer = _RowWriter(builder, path, max_rows)
    try:
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        writer.sheet(None, enumerate(rows, start=1))
    except csv.Error:
        plain = TextBuilder()
        plain.block(text)
        return plain.build("text/plain", charset=charset)
    return builder.build(kind, charset=charset)
