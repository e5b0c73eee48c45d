"""`ingest.formats`: PDF, DOCX, PPTX, XLSX/CSV, text sniffing and charsets, HTML page chrome.

The fixtures are real files made in code (`tests/fakes/documents.py`): a hand-written PDF, and Office
files written by python-docx, python-pptx and openpyxl, as users' tools write them.
"""

from __future__ import annotations

import pytest

from ingest.errors import UnsupportedContentError
from ingest.parsing import ParsedDocument, ParseLimits, parse
from tests.fakes.documents import (
    PdfText,
    Slide,
    docx_bytes,
    encrypted_pdf,
    pdf_bytes,
    pptx_bytes,
    scanned_pdf,
    text_pdf,
    two_column_page,
    wrap_paragraphs,
    xlsx_bytes,
)

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def spans(doc: ParsedDocument) -> list[tuple[str, int | None, str | None]]:
    """Each location's text, page and sheet: offsets are exact only if these slices are the content."""
    return [(doc.text[loc.start : loc.end], loc.page, loc.sheet) for loc in doc.locations]


class TestPdf:
    def test_pages_are_locations_with_their_numbers(self) -> None:
        data = text_pdf(
            [["The canteen opens at eight."], ["Visitor parking is on level minus two."], ["Page three."]],
            title="Office guide",
        )
        doc = parse(data, None, "guide.pdf")
        assert doc.content_type == "application/pdf" and doc.title == "Office guide" and doc.charset is None
        assert spans(doc) == [
            ("The canteen opens at eight.", 1, None),
            ("Visitor parking is on level minus two.", 2, None),
            ("Page three.", 3, None),
        ]
        start = doc.text.index("level minus two")
        assert doc.locate(start, start + 15) == (2, 2, None)
        assert doc.locate(0, len(doc.text)) == (1, 3, None)

    def test_octet_stream_without_extension_is_sniffed_as_pdf(self) -> None:
        doc = parse(text_pdf([["Sniffed by its signature."]]), "application/octet-stream", "download")
        assert doc.content_type == "application/pdf" and "Sniffed by its signature." in doc.text

    def test_a_word_hyphenated_at_a_line_end_is_joined_and_accents_survive(self) -> None:
        page = wrap_paragraphs([])
        page.texts = [PdfText(72, 700, "Detailed infor-"), PdfText(72, 686, "mation about the café crème.")]
        doc = parse(pdf_bytes([page]), "application/pdf", "a.pdf")
        assert doc.text == "Detailed information about the café crème."

    def test_content_stream_order_is_reading_order(self) -> None:
        left = ["Left column first line", "Left column second line"]
        right = ["Right column first line", "Right column second line"]
        doc = parse(pdf_bytes([two_column_page(left, right)]), None, "columns.pdf")
        assert doc.text.index("Left column second line") < doc.text.index("Right column first line")

    def test_a_scan_without_a_text_layer_is_skipped_with_the_reason(self) -> None:
        with pytest.raises(UnsupportedContentError, match=r"no text layer \(OCR is not enabled\)"):
            parse(scanned_pdf(pages=2), None, "scan.pdf")

    def test_an_encrypted_pdf_says_so(self) -> None:
        data = encrypted_pdf(text_pdf([["Secret salaries."]]))
        with pytest.raises(UnsupportedContentError, match="encrypted PDF that needs a password"):
            parse(data, None, "salaries.pdf")

    def test_a_pdf_encrypted_without_a_user_password_is_read(self) -> None:
        data = encrypted_pdf(text_pdf([["Readable by anyone."]]), user_password="")
        assert parse(data, None, "open.pdf").text == "Readable by anyone."

    def test_a_broken_pdf_is_refused_with_the_reason(self) -> None:
        with pytest.raises(UnsupportedContentError, match="not a readable PDF"):
            parse(b"%PDF-1.7\nnot really", None, "broken.pdf")


@pytest.fixture(scope="module")
def handbook() -> ParsedDocument:
    data = docx_bytes(
        [
            ("title", "Staff handbook"),
            ("h1", "Leave"),
            ("p", "Everyone gets 25 days of annual leave."),
            ("h2", "Parental leave"),
            ("bullet", "Birth parent: 16 weeks"),
            ("bullet", "Partner: 4 weeks"),
            ("table", [["Tenure", "Extra days"], ["5 years", "2"], ["10 years", "5"]]),
            ("h1", "Expenses"),
            ("p", "Trains in second class."),
        ],
        header="ACME Corp - internal",
        footer="Page footer text",
    )
    return parse(data, None, "handbook.docx")


@pytest.fixture(scope="module")
def deck() -> ParsedDocument:
    data = pptx_bytes(
        [
            Slide("Welcome", ["Agenda for the quarter"], notes="Greet the new joiners."),
            Slide(
                "Budget",
                ["Spending per team"],
                notes="The cloud budget grows by 12 percent in Q3.",
                table=[["Team", "Budget"], ["Platform", "40k"]],
            ),
        ]
    )
    return parse(data, None, "quarterly.pptx")


class TestDocx:
    def test_heading_styles_become_the_heading_lines(self, handbook: ParsedDocument) -> None:
        lines = handbook.text.split("\n")
        assert [line for line in lines if line.startswith("#")] == [
            "# Staff handbook",
            "# Leave",
            "## Parental leave",
            "# Expenses",
        ]
        assert handbook.title == "Staff handbook" and handbook.content_type == DOCX

    def test_lists_and_tables_become_readable_rows(self, handbook: ParsedDocument) -> None:
        assert "- Birth parent: 16 weeks\n- Partner: 4 weeks" in handbook.text
        assert "Tenure | Extra days\nTenure: 5 years; Extra days: 2\nTenure: 10 years; Extra days: 5" in handbook.text

    def test_headers_and_footers_are_left_out(self, handbook: ParsedDocument) -> None:
        assert "ACME Corp" not in handbook.text and "footer" not in handbook.text

    def test_the_chunker_builds_the_heading_path_from_them(self, handbook: ParsedDocument) -> None:
        from ingest.chunking import Chunker

        chunks = Chunker(count_tokens=lambda texts: [len(t.split()) + 2 for t in texts], chunk_tokens=12).chunk(
            handbook.text
        )
        tenure = next(c for c in chunks if "10 years" in c.text)
        assert tenure.heading == "Staff handbook > Leave > Parental leave" or tenure.heading == "Leave > Parental leave"

    def test_a_file_that_is_not_a_docx_is_refused(self) -> None:
        with pytest.raises(UnsupportedContentError, match="not a readable DOCX"):
            parse(b"PK\x03\x04 broken zip", DOCX, "bad.docx")


class TestPptx:
    def test_one_section_per_slide_with_its_title_and_notes(self, deck: ParsedDocument) -> None:
        (first, page1, _), (second, page2, _) = spans(deck)
        assert (page1, page2) == (1, 2)
        assert first == "# Slide 1: Welcome\n\nAgenda for the quarter\n\nNotes: Greet the new joiners."
        assert second.startswith("# Slide 2: Budget\n\nSpending per team")
        assert "Team: Platform; Budget: 40k" in second
        assert second.endswith("Notes: The cloud budget grows by 12 percent in Q3.")
        assert deck.title == "Welcome"


class TestSheets:
    def test_rows_name_their_sheet_row_and_columns(self) -> None:
        data = xlsx_bytes(
            {
                "Prices": [
                    ["Product", "Price", "Currency"],
                    ["Widget", 3.5, "EUR"],
                    [None, None],
                    ["Gadget", 7, "USD"],
                ],
                "Stock": [[1, 2], [3, 4]],
            }
        )
        doc = parse(data, None, "book.xlsx")
        (prices, _, sheet1), (stock, _, sheet2) = spans(doc)
        assert (sheet1, sheet2) == ("Prices", "Stock")
        assert prices.split("\n\n") == [
            "# Sheet: Prices",
            "Sheet: Prices; columns: Product | Price | Currency",
            "Sheet: Prices; row 2: Product: Widget; Price: 3.5; Currency: EUR",
            "Sheet: Prices; row 4: Product: Gadget; Price: 7; Currency: USD",  # the spreadsheet's own row number
        ]
        assert "Sheet: Stock; row 1: A: 1; B: 2" in stock  # no header row: the column letters
        at = doc.text.index("Gadget")
        assert doc.locate(at, at + 6) == (None, None, "Prices")

    def test_too_many_rows_are_refused_with_the_limit_named(self) -> None:
        data = xlsx_bytes({"Big": [["n"], *([i] for i in range(30))]})
        with pytest.raises(UnsupportedContentError, match=r"more than 20 rows.*EVENTRAG_PARSING__MAX_ROWS"):
            parse(data, None, "big.xlsx", ParseLimits(max_rows=20))

    def test_csv_rows_are_labelled_by_the_header(self) -> None:
        doc = parse(b'name;city\nBob;Lyon\n"Smith; Jr";Paris\n', "text/csv", "people.csv")
        assert doc.content_type == "text/csv" and doc.charset == "utf-8"
        assert doc.text.split("\n\n") == [
            "columns: name | city",
            "row 2: name: Bob; city: Lyon",
            "row 3: name: Smith; Jr; city: Paris",
        ]


class TestTextDetection:
    def test_readme_debian_and_api_files_are_plain_text(self) -> None:
        for name in ("README.Debian", "README.source", "libfoo.api", "LICENSE"):
            doc = parse(b"This package is built with dh.\n", None, name)
            assert (doc.content_type, doc.text, doc.charset) == (
                "text/plain",
                "This package is built with dh.\n",
                "utf-8",
            )

    def test_octet_stream_text_is_indexed_and_binary_is_named(self) -> None:
        assert parse(b"plain words", "application/octet-stream", "notes.api").text == "plain words"
        with pytest.raises(UnsupportedContentError, match=r"its bytes are image/png"):
            parse(b"\x89PNG\r\n\x1a\n" + bytes(200), "application/octet-stream", "notes.api")
        with pytest.raises(UnsupportedContentError, match=r"application/x-executable"):
            parse(b"\x7fELF\x02\x01\x01" + bytes(200), None, "tool")

    def test_source_code_and_data_types_are_text(self) -> None:
        assert parse(b"print('hi')\n", None, "run.py").content_type == "text/plain"
        assert parse(b'{"a": 1}', "application/json", "a.json").text == '{"a": 1}'

    def test_latin1_declared_in_the_content_type(self) -> None:
        data = "Café crème à 3 €, très bien.".encode("cp1252")
        doc = parse(data, "text/plain; charset=iso-8859-1", "menu.txt")
        assert (doc.text, doc.charset) == ("Café crème à 3 €, très bien.", "windows-1252")

    def test_latin1_detected_without_a_declaration(self) -> None:
        text = "Le café crème coûte trois euros. Der Bär lässt grüßen. Ça va très bien, merci à vous.\n"
        doc = parse(text.encode("latin-1"), None, "README.fr")
        assert (doc.text, doc.charset) == (text, "windows-1252")

    def test_utf16_with_a_byte_order_mark(self) -> None:
        doc = parse("\ufeffGrüße aus Köln\r\nzweite Zeile".encode("utf-16-le"), None, "greeting.txt")
        assert (doc.text, doc.charset) == ("Grüße aus Köln\nzweite Zeile", "utf-16-le")
        doc = parse(codecs_bom_be("Hello"), None, "be.txt")
        assert (doc.text, doc.charset) == ("Hello", "utf-16-be")

    def test_xml_declaration_names_the_charset(self) -> None:
        data = '<?xml version="1.0" encoding="ISO-8859-1"?><note>Ça marche</note>'.encode("latin-1")
        doc = parse(data, "application/xml", "note.xml")
        assert doc.charset == "windows-1252" and "Ça marche" in doc.text

    def test_a_declared_charset_that_does_not_fit_falls_back_to_detection(self) -> None:
        doc = parse("naïve café".encode(), "text/plain; charset=us-ascii", "a.txt")
        assert (doc.text, doc.charset) == ("naïve café", "utf-8")  # not the mojibake windows-1252 would give
        doc = parse("日本語のテキスト".encode("shift_jis"), "text/plain; charset=utf-8", "jp.txt")
        assert doc.text == "日本語のテキスト"


def codecs_bom_be(text: str) -> bytes:
    import codecs

    return codecs.BOM_UTF16_BE + text.encode("utf-16-be")


class TestHtmlChrome:
    def test_navigation_site_header_footer_and_link_bars_are_not_content(self) -> None:
        page = b"""<html><body>
        <div class="header"><p>Next: <a href="n.html">Install</a>, Previous: <a href="p.html">Intro</a>,
          Up: <a href="u.html">Top</a> &nbsp; [<a href="c.html">Contents</a>][<a href="i.html">Index</a>]</p></div>
        <header><a href="/">ACME</a> <a href="/docs">Docs</a></header>
        <div class="navheader"><table><tr><td><a href="a">Prev</a></td><td><a href="b">Next</a></td></tr></table></div>
        <p class="crumbs"><a href="/">Home</a> &gt; <a href="/docs">Docs</a></p>
        <main><article><header><h2>Configuring the proxy</h2></header>
          <p>Set the <a href="#v">PROXY</a> variable before you start the <a href="#d">daemon</a>.</p></article>
          <ul><li><a href="1.html">Chapter one</a></li><li><a href="2.html">Chapter two</a></li></ul></main>
        <div role="navigation">Side menu</div><nav>Primary menu</nav>
        <footer>Copyright ACME</footer></body></html>"""
        text = parse(page, "text/html", "proxy.html").text
        for chrome in ("Install", "Intro", "Contents", "Index", "ACME", "Prev", "Home", "Side menu", "Primary menu"):
            assert chrome not in text, chrome
        assert text == (
            "## Configuring the proxy\n\nSet the PROXY variable before you start the daemon.\n\n"
            "- Chapter one\n- Chapter two"
        )

    def test_a_header_holding_the_page_h1_stays(self) -> None:
        doc = parse(b"<body><header><h1>Leave policy</h1></header><p>25 days.</p></body>", "text/html", "a.html")
        assert doc.text == "# Leave policy\n\n25 days."
