"""PDF -> text, page by page, with PDFium (pypdfium2).

Why PDFium: `bench/parse_throughput.py` measured it against pypdf and pdfplumber on the same files
(docs/parsing.md): it is by far the fastest (C++, Chrome's PDF engine) with the smallest memory per page,
and reads text in content-stream order, as pypdf does; pdfplumber's line-based order interleaves the
columns of a two-column page. Licences: pypdfium2 and PDFium are Apache-2.0 / BSD-3-Clause.

Each page's text becomes one location (its 1-based page number), pages separated by a blank line. PDFium
joins a word hyphenated at a line end and marks the join with U+FFFE, which we drop ("infor-\\nmation" ->
"information"). A PDF whose pages hold no text at all is a scan: skipped, since OCR is not enabled.
"""

from __future__ import annotations

import re

from ingest.errors import UnsupportedContentError
from ingest.formats.base import ParsedDocument, TextBuilder
from ingest.formats.text import PDF

# PDFium's error codes (fpdfview.h, FPDF_ERR_*).
_ERR_FORMAT, _ERR_PASSWORD, _ERR_SECURITY = 3, 4, 5
_SOFT_HYPHEN = re.compile("[\ufffe\x02]")
# Controls PDFium passes through from broken font encodings; a tab or newline stays.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_HAS_TEXT = re.compile(r"\w")


def parse_pdf(data: bytes, path: str) -> ParsedDocument:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == _ERR_PASSWORD:
            raise UnsupportedContentError(
                f"{path!r} is an encrypted PDF that needs a password to open; eventrag does not take PDF"
                " passwords (remove the password, or send a copy without one)"
            ) from exc
        if code == _ERR_SECURITY:
            raise UnsupportedContentError(f"{path!r} is an encrypted PDF with an unsupported security handler") from exc
        raise UnsupportedContentError(f"{path!r} is not a readable PDF ({exc})") from exc
    try:
        builder = TextBuilder()
        any_text = False
        for number in range(1, len(document) + 1):
            page = document[number - 1]
            try:
                textpage = page.get_textpage()
                try:
                    raw = textpage.get_text_range()
                finally:
                    textpage.close()
            finally:
                page.close()
            text = _clean(raw)
            builder.begin_location(page=number)
            builder.block(text)
            any_text = any_text or bool(_HAS_TEXT.search(text))
        if len(document) and not any_text:
            raise UnsupportedContentError(
                f"{path!r}: no text layer (OCR is not enabled): its {len(document)} page(s) hold only images"
            )
        title = (document.get_metadata_value("Title") or "").strip() or None
    finally:
        document.close()
    return builder.build(PDF, title=title)


def _clean(raw: str) -> str:
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    text = _SOFT_HYPHEN.sub("", text)
    text = _CONTROLS.sub(" ", text)
    return _TRAILING_SPACE.sub("\n", text).strip()
