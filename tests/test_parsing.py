"""`ingest.parsing`: content types, decoding, and HTML to visible text."""

from __future__ import annotations

import pytest

from ingest.errors import PermanentError, UnsupportedContentError
from ingest.parsing import ParsedDocument, detect_content_type, parse

PAGE = b"""<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>  Leave   policy  </title>
  <style>.x { color: red } /* STYLE-TEXT */</style>
  <script>var secret = "SCRIPT-TEXT";</script>
</head>
<body>
  <!-- COMMENT-TEXT -->
  <nav><a href="/">Home</a></nav>
  <h1>Leave <em>policy</em></h1>
  <p>Visible   paragraph
     with a <a href="/x">link</a>.</p>
  <div hidden>HIDDEN-ATTRIBUTE</div>
  <div hidden="hidden"><p>HIDDEN-NESTED</p></div>
  <p style="DISPLAY : None !important">DISPLAY-NONE</p>
  <span style="color: red; visibility:hidden">VISIBILITY-HIDDEN</span>
  <span aria-hidden="TRUE">ARIA-HIDDEN</span>
  <input type="hidden" name="csrf" value="INPUT-HIDDEN">
  <noscript>NOSCRIPT-TEXT</noscript>
  <template><p>TEMPLATE-TEXT</p></template>
  <svg><title>SVG-TITLE</title><text>SVG-TEXT</text></svg>
  <iframe src="/ad">IFRAME-TEXT</iframe>
  <h2>Parental   leave</h2>
  <ul><li>Birth parent</li><li>Partner<ul><li>Adoptive partner</li></ul></li></ul>
  <table><tr><th>Weeks</th><th>Pay</th></tr><tr><td>16</td><td>100%</td></tr></table>
  <pre>
def weeks(tenure):
    return 16
</pre>
  <p>First line<br>second line</p>



  <details hidden="until-found"><p>Found by search</p></details>
  <p style="display:block">Shown with a style</p>
</body>
</html>
"""

HIDDEN_MARKERS = [
    "STYLE-TEXT",
    "SCRIPT-TEXT",
    "COMMENT-TEXT",
    "HIDDEN-ATTRIBUTE",
    "HIDDEN-NESTED",
    "DISPLAY-NONE",
    "VISIBILITY-HIDDEN",
    "ARIA-HIDDEN",
    "INPUT-HIDDEN",
    "NOSCRIPT-TEXT",
    "TEMPLATE-TEXT",
    "SVG-TITLE",
    "SVG-TEXT",
    "IFRAME-TEXT",
]


@pytest.fixture(scope="module")
def page() -> ParsedDocument:
    return parse(PAGE, "text/html; charset=utf-8", "docs/leave.html")


class TestHtml:
    @pytest.mark.parametrize("marker", HIDDEN_MARKERS)
    def test_invisible_content_is_dropped(self, page: ParsedDocument, marker: str) -> None:
        assert marker not in page.text

    def test_visible_text_is_kept_with_collapsed_spaces(self, page: ParsedDocument) -> None:
        assert "Visible paragraph with a link." in page.text.split("\n")
        assert "Shown with a style" in page.text
        # hidden="until-found" is collapsed content that in-page search reveals: it is meant to be read
        assert "Found by search" in page.text

    def test_title_comes_from_the_title_element(self, page: ParsedDocument) -> None:
        assert page.title == "Leave policy"
        assert page.content_type == "text/html"

    def test_title_falls_back_to_the_first_h1(self) -> None:
        doc = parse(b"<body><h2>Not this</h2><h1>The <b>real</b> title</h1><p>x</p></body>", "text/html", "a")
        assert doc.title == "The real title"

    def test_headings_become_markdown_headings_on_their_own_lines(self, page: ParsedDocument) -> None:
        lines = page.text.split("\n")
        assert "# Leave policy" in lines
        assert "## Parental leave" in lines

    def test_lists_tables_pre_and_line_breaks_stay_readable(self, page: ParsedDocument) -> None:
        lines = page.text.split("\n")
        first = lines.index("- Birth parent")
        assert lines[first : first + 3] == ["- Birth parent", "- Partner", "  - Adoptive partner"]
        assert "Weeks | Pay" in lines
        assert "16 | 100%" in lines
        assert "def weeks(tenure):\n    return 16" in page.text  # code keeps its indentation
        assert "First line\nsecond line" in page.text

    def test_output_is_stripped_with_at_most_one_blank_line(self, page: ParsedDocument) -> None:
        assert page.text == page.text.strip()
        assert "\n\n\n" not in page.text
        assert all(line == line.rstrip() for line in page.text.split("\n"))

    def test_empty_document_gives_empty_text(self) -> None:
        doc = parse(b"<html><head><title></title></head><body> <script>x()</script> </body></html>", None, "a.html")
        assert doc == ParsedDocument(text="", content_type="text/html", title=None, charset="utf-8")

    def test_meta_charset_is_honoured_when_utf8_fails(self) -> None:
        data = '<meta charset="iso-8859-1"><p>Café “quotes”</p>'.encode("cp1252")
        assert parse(data, "text/html", "a.html").text == "Café “quotes”"

    def test_deep_nesting_does_not_hit_the_recursion_limit(self) -> None:
        data = b"<div>" * 5000 + b"deep" + b"</div>" * 5000
        assert parse(data, "text/html", "deep.html").text == "deep"


class TestTextAndMarkdown:
    def test_markdown_is_kept_as_written_apart_from_newlines(self) -> None:
        data = "\ufeff# Leave policy\r\n\r\nSee *below*.\r\n```sh\r\n# not a title\r\n```\r\n".encode()
        doc = parse(data, None, "policy.md")
        assert doc == ParsedDocument(
            text="# Leave policy\n\nSee *below*.\n```sh\n# not a title\n```\n",
            content_type="text/markdown",
            title="Leave policy",
            charset="utf-8",
        )

    def test_markdown_title_skips_code_fences_and_subheadings(self) -> None:
        text = "Intro\n## Sub\n```\n# comment in code\n```\n# Real title #\nbody\n"
        assert parse(text.encode(), "text/markdown", "x.md").title == "Real title"

    def test_plain_text_has_no_title(self) -> None:
        doc = parse(b"# looks like a heading\nline\r\n", "text/plain", "notes.txt")
        assert doc == ParsedDocument(
            text="# looks like a heading\nline\n", content_type="text/plain", title=None, charset="utf-8"
        )


class TestRefusals:
    @pytest.mark.parametrize(
        ("content_type", "path", "data", "named"),
        [
            (None, "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
            ("image/png", "photo", b"not even a png", "image/png"),  # the sender says binary: believed
            ("application/zip", "a.zip", b"PK\x03\x04", "application/zip"),
            (None, "old.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "application/msword"),
            ("application/x-unknown-thing", "blob", b"\x00\x01\x02\x03" * 64, "application/octet-stream"),
        ],
    )
    def test_unsupported_types_say_what_they_are_and_what_is_supported(
        self, content_type: str | None, path: str, data: bytes, named: str
    ) -> None:
        with pytest.raises(UnsupportedContentError) as raised:
            parse(data, content_type, path)
        message = str(raised.value)
        assert named in message
        assert "supported: PDF, DOCX, PPTX, XLSX, CSV/TSV, HTML, Markdown and any plain text" in message
        assert isinstance(raised.value, PermanentError)  # the worker records it as skipped, never retries

    def test_nul_bytes_in_declared_text_are_refused_as_binary(self) -> None:
        with pytest.raises(UnsupportedContentError, match="NUL bytes"):
            parse(b"abc\x00def", "text/plain", "blob.txt")

    def test_bytes_that_are_no_text_in_any_charset_are_refused(self) -> None:
        with pytest.raises(UnsupportedContentError, match="not text in any charset"):
            parse(bytes(range(0x80, 0x100)) * 8 + b"\x00\x01", "text/plain", "noise.txt")


@pytest.mark.parametrize(
    ("header", "path", "expected"),
    [
        ("text/markdown; charset=utf-8", "a.txt", "text/markdown"),  # the header wins
        ("TEXT/HTML;charset=UTF-8", "a.md", "text/html"),
        ("text/x-markdown", "a", "text/markdown"),
        ("application/pdf", "a.md", "application/pdf"),
        ("application/octet-stream", "a.md", "text/markdown"),  # a generic header says nothing
        ("", "page.HTM", "text/html"),
        (None, "notes/readme.markdown", "text/markdown"),
        (None, "x.html", "text/html"),
        (None, "x.txt", "text/plain"),
        (None, "x.text", "text/plain"),
        (None, "x.rst", "text/plain"),
        (None, "x.csv", "text/csv"),
        (None, "x.log", "text/plain"),
        (None, "docs/README", "application/octet-stream"),  # the bytes decide (see test_formats.py)
        (None, "README.Debian", "application/octet-stream"),
        (None, "report.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        (
            "application/octet-stream",
            "deck.PPTX",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ),
        (None, "https://example.com/page.html?x=1#top", "text/html"),
        (None, "a.pdf", "application/pdf"),
        ("application/x-pdf", "a", "application/pdf"),
    ],
)
def test_detect_content_type(header: str | None, path: str, expected: str) -> None:
    assert detect_content_type(header, path) == expected
