"""Small real documents made in code: PDF (written by hand, byte by byte), DOCX, PPTX and XLSX (written by
the same libraries users' tools produce them with). Tests and `bench/` build their fixtures here, so no
binary fixture needs to be committed and every fixture says in code what is in it.

The PDF writer is deliberately minimal (PDF 1.4, the standard Helvetica font, one content stream per
page) and gives full control over what the parsers are tested on: where text sits on the page and in
which order the content stream draws it (reading-order tests), pages with only an image (a scan), and
encryption (through pypdf).
"""

from __future__ import annotations

import io
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

PAGE_WIDTH = 612  # US Letter, in points
PAGE_HEIGHT = 792
MARGIN = 72


@dataclass(frozen=True, slots=True)
class PdfText:
    """One line of text drawn at (x, y) points from the bottom left, in Helvetica of `size` points."""

    x: float
    y: float
    text: str
    size: float = 11.0


@dataclass(slots=True)
class PdfPage:
    texts: list[PdfText] = field(default_factory=list)
    image: bool = False  # draw a grey "scan" covering the page (an image XObject, no text)


def wrap_paragraphs(paragraphs: Sequence[str], *, width: int = 90, size: float = 11.0, top: float = 0) -> PdfPage:
    """A page of left-aligned paragraphs, wrapped at `width` characters, with a blank line between them."""
    page = PdfPage()
    y = (top or PAGE_HEIGHT - MARGIN) - size
    leading = size * 1.3
    for paragraph in paragraphs:
        for line in textwrap.wrap(paragraph, width) or [""]:
            page.texts.append(PdfText(MARGIN, y, line, size))
            y -= leading
        y -= leading
    return page


def two_column_page(left: Sequence[str], right: Sequence[str], *, right_first: bool = False) -> PdfPage:
    """A page of two columns of lines. `right_first` draws the right column first in the content stream, so
    a parser that follows the stream instead of the layout reads the columns in the wrong order."""
    size, leading = 10.0, 13.0
    top = PAGE_HEIGHT - MARGIN - size
    lefts = [PdfText(MARGIN, top - i * leading, line, size) for i, line in enumerate(left)]
    rights = [PdfText(PAGE_WIDTH / 2 + 12, top - i * leading, line, size) for i, line in enumerate(right)]
    return PdfPage(texts=rights + lefts if right_first else lefts + rights)


def _pdf_string(text: str) -> bytes:
    raw = text.encode("cp1252")  # WinAnsiEncoding is cp1252 for the characters Helvetica has
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _content(page: PdfPage) -> bytes:
    ops: list[bytes] = []
    if page.image:
        ops.append(
            f"q {PAGE_WIDTH - 2 * MARGIN} 0 0 {PAGE_HEIGHT - 2 * MARGIN} {MARGIN} {MARGIN} cm /Im1 Do Q".encode()
        )
    for t in page.texts:
        ops.append(b"BT /F1 %.1f Tf %.2f %.2f Td " % (t.size, t.x, t.y) + _pdf_string(t.text) + b" Tj ET")
    return b"\n".join(ops)


def _scan_image() -> bytes:
    """A 64x64 8-bit grey image with some 'print' stripes: what a scanner produces, minus the resolution."""
    rows = bytearray()
    for y in range(64):
        rows.extend((40 if (y % 8 < 2 and 8 <= x < 56) else 235) for x in range(64))
    return bytes(rows)


def pdf_bytes(pages: Sequence[PdfPage], *, title: str | None = None, compress: bool = True) -> bytes:
    """A valid PDF of these pages (cross-reference table with exact offsets)."""
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def stream(data: bytes, extra: str = "") -> bytes:
        if compress:
            data = zlib.compress(data)
            extra += " /Filter /FlateDecode"
        return f"<< /Length {len(data)}{extra} >>\nstream\n".encode() + data + b"\nendstream"

    catalog = add(b"")  # filled in below, once the page tree's number is known
    tree = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    image = add(
        stream(
            _scan_image(),
            " /Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceGray /BitsPerComponent 8",
        )
    )
    kids = []
    for page in pages:
        content = add(stream(_content(page)))
        kids.append(
            add(
                f"<< /Type /Page /Parent {tree} 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}]"
                f" /Resources << /Font << /F1 {font} 0 R >> /XObject << /Im1 {image} 0 R >> >>"
                f" /Contents {content} 0 R >>".encode()
            )
        )
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {tree} 0 R >>".encode()
    objects[tree - 1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>".encode()
    info = add(b"<< /Title " + _pdf_string(title) + b" >>") if title else None

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{n} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    trailer = f"<< /Size {len(objects) + 1} /Root {catalog} 0 R" + (f" /Info {info} 0 R" if info else "") + " >>"
    out.write(f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def text_pdf(pages: Sequence[Sequence[str]], *, title: str | None = None) -> bytes:
    """A PDF with one page per list of paragraphs."""
    return pdf_bytes([wrap_paragraphs(p) for p in pages], title=title)


def scanned_pdf(pages: int = 2) -> bytes:
    """Pages that hold only an image: a scan without a text layer."""
    return pdf_bytes([PdfPage(image=True) for _ in range(pages)])


def encrypted_pdf(data: bytes, user_password: str = "s3cret", owner_password: str = "owner") -> bytes:
    """`data` encrypted (AES-128) with a user password, so nothing can be read without it."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- Office ---------------------------------------------------------------------------------------------


def docx_bytes(
    blocks: Sequence[tuple[str, object]],
    *,
    header: str | None = None,
    footer: str | None = None,
    title: str | None = None,
) -> bytes:
    """A DOCX from blocks: ("h1".."h3", text), ("p", text), ("bullet", text), ("table", rows), ("break", "")."""
    import docx
    from docx.enum.text import WD_BREAK

    document = docx.Document()
    if title is not None:
        document.core_properties.title = title
    section = document.sections[0]
    if header is not None:
        section.header.paragraphs[0].text = header
    if footer is not None:
        section.footer.paragraphs[0].text = footer
    for kind, value in blocks:
        if kind.startswith("h") and kind[1:].isdigit():
            document.add_heading(str(value), level=int(kind[1:]))
        elif kind == "title":
            document.add_heading(str(value), level=0)
        elif kind == "p":
            document.add_paragraph(str(value))
        elif kind == "bullet":
            document.add_paragraph(str(value), style="List Bullet")
        elif kind == "table":
            rows = list(value)  # type: ignore[call-overload]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = str(cell)
        elif kind == "break":
            document.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
        else:
            raise ValueError(kind)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


@dataclass(slots=True)
class Slide:
    title: str
    bullets: list[str] = field(default_factory=list)
    notes: str | None = None
    table: list[list[str]] | None = None


def pptx_bytes(slides: Sequence[Slide]) -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for s in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])  # "Title and Content"
        slide.shapes.title.text = s.title
        body = slide.placeholders[1].text_frame
        for i, bullet in enumerate(s.bullets):
            paragraph = body.paragraphs[0] if i == 0 else body.add_paragraph()
            paragraph.text = bullet
        if s.table:
            shape = slide.shapes.add_table(len(s.table), len(s.table[0]), Inches(1), Inches(5), Inches(8), Inches(1))
            for r, row in enumerate(s.table):
                for c, cell in enumerate(row):
                    shape.table.cell(r, c).text = cell
        if s.notes:
            slide.notes_slide.notes_text_frame.text = s.notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def xlsx_bytes(sheets: dict[str, Sequence[Sequence[object]]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)  # type: ignore[arg-type]
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def docx_bomb(paragraphs: int = 3_000_000) -> bytes:
    """A DOCX of a few hundred KB whose document.xml inflates to ~100 MB per million paragraphs: what a
    decompression bomb looks like to a parser."""
    import zipfile

    base = docx_bytes([("p", "seed")])
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "word/document.xml":
                head, tail = data.split(b"<w:body>", 1)
                data = head + b"<w:body>" + b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>" * paragraphs + tail
            bomb.writestr(item.filename, data)
    return out.getvalue()
