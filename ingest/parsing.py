"""File bytes -> the text that chunks' character offsets refer to: the entry point of every format.

`parse` finds what a file is (`resolve_content_type`: the event's content type, else the file name's
extension, else the bytes themselves) and hands it to its format: plain text, Markdown and HTML here;
PDF, DOCX, PPTX, XLSX/CSV and text sniffing in `ingest.formats`. Anything else raises
`UnsupportedContentError`, which the worker records as `skipped` with the message.

Plain text and Markdown are kept as they are apart from newlines, so a chunk's `start`/`end` point into
the file the user wrote; HTML becomes the visible text a reader sees (no scripts, hidden elements or page
chrome), written as light Markdown (headings as "#" lines, list items as "- " lines) so the chunker keeps
sections together the same way for every format. Text is decoded with the charset rules of
`ingest.formats.text`, and the charset used is recorded on the result.

The Markdown line scanner (`scan_markdown_lines`) lives here too: the chunker uses it to find headings, so
the title rule and the chunk heading rule cannot drift apart.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag

from ingest.errors import UnsupportedContentError
from ingest.formats.base import Location, ParsedDocument
from ingest.formats.html_chrome import find_chrome
from ingest.formats.sheets import CSV, TSV
from ingest.formats.text import DOCX, OCTET, PDF, PPTX, XLSX, charset_parameter, decode, sniff

__all__ = [
    "Location",
    "ParseLimits",
    "ParsedDocument",
    "detect_content_type",
    "parse",
    "parses_in_place",
    "scan_markdown_lines",
]

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = (PLAIN, MARKDOWN, HTML, CSV, TSV, PDF, DOCX, PPTX, XLSX)
SUPPORTED = "supported: PDF, DOCX, PPTX, XLSX, CSV/TSV, HTML, Markdown and any plain text"


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds on what one file may produce (settings `EVENTRAG_PARSING__*`)."""

    max_bytes: int = 200 * 1024 * 1024  # of the file
    max_rows: int = 50_000  # spreadsheet and CSV rows, all sheets together
    max_chars: int = 20_000_000  # characters of parsed text


# --- content type -----------------------------------------------------------------------------------------

_BY_EXTENSION: dict[str, str] = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".txt": PLAIN,
    ".text": PLAIN,
    ".rst": PLAIN,
    ".log": PLAIN,
    ".csv": CSV,
    ".tsv": TSV,
    ".tab": TSV,
    ".pdf": PDF,
    ".docx": DOCX,
    ".docm": DOCX,
    ".pptx": PPTX,
    ".pptm": PPTX,
    ".xlsx": XLSX,
    ".xlsm": XLSX,
}

# Other spellings of the types we parse, so a header names the same type as the extension would.
_ALIASES: dict[str, str] = {
    "text/x-markdown": MARKDOWN,
    "application/xhtml+xml": HTML,
    "application/csv": CSV,
    "text/x-csv": CSV,
    "text/tsv": TSV,
    "text/x-rst": PLAIN,
    "text/x-log": PLAIN,
    "application/x-pdf": PDF,
    "application/vnd.ms-word.document.macroenabled.12": DOCX,
    "application/vnd.ms-powerpoint.presentation.macroenabled.12": PPTX,
    "application/vnd.ms-excel.sheet.macroenabled.12": XLSX,
}

# Headers that say "some bytes" rather than what they are: S3 and many servers send these for any file
# they have no type for, so the extension (or the bytes) is better evidence than the header.
_UNINFORMATIVE = frozenset({"application/octet-stream", "binary/octet-stream", "application/unknown"})

# Types that are text, though not "text/...": indexed as plain text.
_TEXT_APPLICATIONS = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/x-sh",
        "application/x-shellscript",
        "application/x-csh",
        "application/x-python",
        "application/x-python-code",
        "application/x-perl",
        "application/x-ruby",
        "application/x-httpd-php",
        "application/sql",
        "application/x-sql",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/x-toml",
        "application/x-tex",
        "application/x-latex",
        "application/x-troff",
        "application/x-troff-man",
        "application/x-subrip",
        "application/x-ndjson",
        "application/jsonl",
    }
)
# Families of types that are never text: refused by name, without looking at the bytes.
_BINARY_FAMILIES = ("image/", "audio/", "video/", "font/", "model/")
_BINARY_TYPES = frozenset(
    {
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-7z-compressed",
        "application/vnd.rar",
        "application/x-rar-compressed",
        "application/x-bzip2",
        "application/x-xz",
        "application/zstd",
        "application/java-archive",
        "application/x-executable",
        "application/x-msdownload",
        "application/x-sharedlib",
        "application/wasm",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/x-ole-storage",
        "application/rtf",
        "application/vnd.sqlite3",
        "application/x-sqlite3",
        "application/x-shockwave-flash",
        "application/epub+zip",
    }
)


def _is_text_type(kind: str) -> bool:
    return kind.startswith("text/") or kind in _TEXT_APPLICATIONS or kind.endswith(("+json", "+xml"))


def _is_binary_type(kind: str) -> bool:
    return kind.startswith(_BINARY_FAMILIES) or kind in _BINARY_TYPES or kind.startswith("application/vnd.oasis.")


def _header_type(content_type: str | None) -> str | None:
    """The normalised media type of a header, or None when it is missing or says only "some bytes"."""
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    if not essence or essence in _UNINFORMATIVE:
        return None
    return _ALIASES.get(essence, essence)


def detect_content_type(content_type: str | None, path: str) -> str:
    """The media type a file's header or name says it has, without looking at its bytes.

    The header wins when it says something: parameters are dropped ("text/html; charset=utf-8" ->
    "text/html"), case is folded, and aliases map to the types in `SUPPORTED_CONTENT_TYPES`. A missing or
    generic (`application/octet-stream`) header falls back to the extension of `path` (a URL's query and
    fragment are ignored): the formats we parse by their usual extensions, others as `mimetypes` knows
    them, and `application/octet-stream` when the name says nothing (no extension, or one like
    `README.Debian`): `parse` then sniffs the bytes.
    """
    header = _header_type(content_type)
    if header is not None:
        return header
    name = urlsplit(path).path if "://" in path else path
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _BY_EXTENSION:
        return _BY_EXTENSION[suffix]
    if not suffix:
        return OCTET
    guessed, _encoding = mimetypes.guess_type(PurePosixPath(name).name, strict=False)
    return _ALIASES.get(guessed, guessed) if guessed else OCTET


def resolve_content_type(data: bytes, content_type: str | None, path: str) -> tuple[str, str | None]:
    """(the type to parse the bytes as, why it was sniffed or None).

    `detect_content_type` first; when it cannot tell (a generic header, an unfamiliar extension, or a
    type we have no rule for), the bytes decide (`ingest.formats.text.sniff`).
    """
    declared = detect_content_type(content_type, path)
    if declared in SUPPORTED_CONTENT_TYPES:
        return declared, None
    if _is_text_type(declared):
        return PLAIN, None
    if _is_binary_type(declared) and _header_type(content_type) == declared:
        return declared, None  # the sender says it is binary: believe it
    sniffed = sniff(data)
    if _header_type(content_type) is not None:
        said = f"it was sent as {declared!r}"
    elif declared != OCTET:
        said = f"its name suggests {declared!r}"
    else:
        said = "no type was given and its name says none"
    return sniffed, f"its bytes are {sniffed} ({said})"


# --- parse ------------------------------------------------------------------------------------------------

# Up to this size a UTF-8 text or Markdown file is parsed where it is (no sandbox): see `parses_in_place`.
IN_PLACE_MAX_BYTES = 1 << 20


def parses_in_place(data: bytes, content_type: str | None, path: str) -> bool:
    """Whether `parse` of these bytes is safe outside the parse sandbox: plain text or Markdown, valid UTF-8,
    at most `IN_PLACE_MAX_BYTES`.

    Parsing those is a UTF-8 decode (C), a newline replace and a line scan for the title: linear in the
    size, with no library a hostile file could make loop, recurse or allocate more than a few times its
    bytes. The sandbox's round trip would cost ten times the parse (0.3 ms against 0.02 ms for an abstract).
    Other charsets go to the sandbox (their detector is a Python library), and so does every other format.
    """
    if len(data) > IN_PLACE_MAX_BYTES:
        return False
    try:
        kind, _ = resolve_content_type(data, content_type, path)
    except UnsupportedContentError:
        return False
    if kind not in (PLAIN, MARKDOWN):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parse(data: bytes, content_type: str | None, path: str, limits: ParseLimits | None = None) -> ParsedDocument:
    """Turn a file's bytes into a `ParsedDocument`.

    Raises `UnsupportedContentError` for a type we do not parse (naming it and what is supported), bytes
    that are not what their type says, a scanned PDF without a text layer, an encrypted PDF, and results
    over `limits`. Text is decoded by the charset rules of `ingest.formats.text`; newlines become "\\n";
    plain text and Markdown are otherwise unchanged. An empty result (text "") is not an error.
    """
    limits = limits or ParseLimits()
    if len(data) > limits.max_bytes:
        raise UnsupportedContentError(
            f"{path!r} is {len(data):,} bytes, more than the limit of {limits.max_bytes:,}"
            " (EVENTRAG_PARSING__MAX_FILE_BYTES)"
        )
    kind, sniffed = resolve_content_type(data, content_type, path)
    parsed = _parse_as(kind, data, content_type, path, limits, sniffed)
    if len(parsed.text) > limits.max_chars:
        raise UnsupportedContentError(
            f"{path!r} holds {len(parsed.text):,} characters of text, more than the limit of {limits.max_chars:,}"
            " (EVENTRAG_PARSING__MAX_CHARS)"
        )
    return parsed


def _parse_as(
    kind: str, data: bytes, content_type: str | None, path: str, limits: ParseLimits, sniffed: str | None
) -> ParsedDocument:
    if kind == PDF:
        from ingest.formats.pdf import parse_pdf

        return parse_pdf(data, path)
    if kind == DOCX:
        from ingest.formats.office import parse_docx

        return parse_docx(data, path)
    if kind == PPTX:
        from ingest.formats.office import parse_pptx

        return parse_pptx(data, path)
    if kind == XLSX:
        from ingest.formats.sheets import parse_xlsx

        return parse_xlsx(data, path, max_rows=limits.max_rows)
    if kind not in (PLAIN, MARKDOWN, HTML, CSV, TSV):
        if sniffed:
            raise UnsupportedContentError(f"cannot parse {path!r}: {sniffed}, not a format we parse ({SUPPORTED})")
        raise UnsupportedContentError(f"cannot parse {path!r}: content type {kind!r} is not supported ({SUPPORTED})")
    xml = "xml" in (content_type or "").lower() or path.lower().endswith((".xml", ".xhtml", ".svg", ".rss"))
    markup = "html" if kind == HTML else ("xml" if xml else None)
    raw, charset = decode(data, declared=charset_parameter(content_type), markup=markup, path=path)
    text = _normalise_newlines(raw)
    if kind == HTML:
        body, title = _html_to_text(text)
        return ParsedDocument(text=body, content_type=kind, title=title, charset=charset)
    if kind == MARKDOWN:
        return ParsedDocument(text=text, content_type=kind, title=_markdown_title(text), charset=charset)
    if kind in (CSV, TSV):
        from ingest.formats.sheets import parse_delimited

        return parse_delimited(text, path, kind=kind, charset=charset, max_rows=limits.max_rows)
    return ParsedDocument(text=text, content_type=kind, title=None, charset=charset)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- Markdown ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarkdownHeading:
    level: int  # 1 for "#", up to 6
    title: str


@dataclass(frozen=True, slots=True)
class MarkdownLine:
    """What one line is: a heading (outside code), or part of a fenced code block (fences included)."""

    heading: MarkdownHeading | None
    in_code: bool


_NOT_SPECIAL = MarkdownLine(heading=None, in_code=False)
_CODE = MarkdownLine(heading=None, in_code=True)
# CommonMark ATX heading: up to 3 spaces, 1-6 '#', a space or tab, the title, an optional closing run of '#'.
_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def scan_markdown_lines(lines: Sequence[str]) -> list[MarkdownLine]:
    """Classify each line (without its newline) of a Markdown text.

    A heading is an ATX heading ("## Title") with a non-empty title; lines inside fenced code blocks
    (``` or ~~~, CommonMark rules; an unclosed fence runs to the end) are never headings, so a "# comment"
    in a shell example does not start a section.
    """
    result: list[MarkdownLine] = []
    fence: str | None = None  # the run that opened the current code block
    for raw in lines:
        line = raw.rstrip("\r")
        if fence is not None:
            result.append(_CODE)
            stripped = line.strip()
            if (
                len(line) - len(line.lstrip(" ")) <= 3
                and stripped.startswith(fence)
                and stripped == fence[0] * len(stripped)
            ):
                fence = None
            continue
        opening = _FENCE.fullmatch(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence = opening.group(1)
            result.append(_CODE)
            continue
        heading = _ATX_HEADING.fullmatch(line)
        if heading and heading.group(2).strip():
            result.append(MarkdownLine(MarkdownHeading(len(heading.group(1)), heading.group(2).strip()), False))
        else:
            result.append(_NOT_SPECIAL)
    return result


def _markdown_title(text: str) -> str | None:
    for line in scan_markdown_lines(text.split("\n")):
        if line.heading is not None and line.heading.level == 1:
            return line.heading.title
    return None


# --- HTML -------------------------------------------------------------------------------------------------

# Elements whose content a reader never sees as text. Media and <object> content is fallback text shown
# only when the media cannot play; <title> is taken as the title, not as body text. <template> content is
# inert markup for scripts, <datalist> options are autocomplete suggestions, <noframes> and <rp> are
# fallbacks of features every browser has; <param>, <source>, <track>, <map> and <area> carry no text.
_INVISIBLE_TAGS = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "head",
        "title",
        "svg",
        "iframe",
        "frameset",
        "noframes",
        "object",
        "embed",
        "param",
        "source",
        "track",
        "canvas",
        "audio",
        "video",
        "datalist",
        "map",
        "area",
        "rp",
    }
)
_PARAGRAPH_TAGS = frozenset(
    {
        "p",
        "blockquote",
        "section",
        "article",
        "aside",
        "header",
        "footer",
        "nav",
        "main",
        "figure",
        "form",
        "fieldset",
        "details",
        "table",
        "hr",
        "dl",
        "address",
        "body",
        "html",
        "hgroup",
        "center",
        "dialog",
    }
)
_LINE_TAGS = frozenset(
    {
        "div",
        "br",
        "tr",
        "thead",
        "tbody",
        "tfoot",
        "dt",
        "dd",
        "caption",
        "figcaption",
        "summary",
        "option",
        "optgroup",
        "legend",
    }
)
_LIST_TAGS = frozenset({"ul", "ol", "menu"})
_CELL_TAGS = frozenset({"td", "th"})
_HEADING_LEVELS = {f"h{n}": n for n in range(1, 7)}
_SPACES = re.compile(r"\s+")
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_IMPORTANT = re.compile(r"!\s*important\s*$")


def _attr(tag: Tag, name: str) -> str | None:
    value = tag.get(name)
    if value is None:
        return None
    return value if isinstance(value, str) else " ".join(value)


def _style_hides(style: str) -> bool:
    for declaration in _CSS_COMMENT.sub("", style).split(";"):
        prop, _, value = declaration.partition(":")
        prop = prop.strip().lower()
        value = _IMPORTANT.sub("", value.strip().lower()).strip()
        if (prop == "display" and value == "none") or (prop == "visibility" and value in {"hidden", "collapse"}):
            return True
    return False


def _is_hidden(tag: Tag) -> bool:
    """True when neither the element nor its content is rendered as text."""
    if tag.name in _INVISIBLE_TAGS:
        return True
    hidden = _attr(tag, "hidden")
    # hidden="until-found" content is collapsed but found by in-page search (accordions, FAQ answers):
    # it is content the author wants read, so it stays.
    if hidden is not None and hidden.strip().lower() != "until-found":
        return True
    if (_attr(tag, "aria-hidden") or "").strip().lower() == "true":
        return True
    # A <dialog> is rendered only while open; a popover only once a script or a button shows it.
    if tag.name == "dialog" and tag.get("open") is None:
        return True
    if tag.get("popover") is not None:
        return True
    if tag.name == "input" and (_attr(tag, "type") or "").strip().lower() == "hidden":
        return True
    style = _attr(tag, "style")
    return style is not None and _style_hides(style)


class _TextWriter:
    """Collects visible text as lines: inline text joins the current line, blocks end it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.first_h1: str | None = None
        self._inline: list[str] = []
        self._prefix = ""  # "- " or "## ": put before the next non-empty line
        self.heading_level = 0  # of the outermost open heading; 0 outside headings
        self.heading_depth = 0
        self.pre_depth = 0
        self.list_depth = 0

    def text(self, value: str) -> None:
        self._inline.append(value)

    def cell(self) -> None:
        if "".join(self._inline).strip():
            self._inline.append(" | ")

    def line_break(self) -> None:
        if self.heading_depth:  # a heading stays on one line
            self._inline.append(" ")
        elif self.pre_depth:
            self._inline.append("\n")
        else:
            self._flush()

    def paragraph_break(self) -> None:
        if self.heading_depth or self.pre_depth:
            self.line_break()
            return
        self._flush()
        self._blank()

    def start_list_item(self) -> None:
        if self.heading_depth or self.pre_depth:
            return
        self._flush()
        self._prefix = "  " * max(self.list_depth - 1, 0) + "- "

    def end_list_item(self) -> None:
        if self.heading_depth or self.pre_depth:
            return
        self._flush()
        self._prefix = ""

    def start_heading(self, level: int) -> None:
        if self.pre_depth:
            return
        if self.heading_depth == 0:
            self.paragraph_break()
            self.heading_level = level
            self._prefix = "#" * level + " "
        self.heading_depth += 1

    def end_heading(self) -> None:
        if self.pre_depth:
            return
        self.heading_depth -= 1
        if self.heading_depth:
            return
        line = self._flush()
        if line and self.heading_level == 1 and self.first_h1 is None:
            self.first_h1 = line
        self._prefix = ""
        self.paragraph_break()

    def start_pre(self) -> None:
        if self.pre_depth == 0:
            self.paragraph_break()
        self.pre_depth += 1

    def end_pre(self) -> None:
        self.pre_depth -= 1
        if self.pre_depth:
            return
        # Preformatted text keeps its line breaks and indentation (code reads wrong without them); only
        # blank lines around it and trailing spaces go.
        raw = _normalise_newlines("".join(self._inline))
        self._inline.clear()
        block = raw.split("\n")
        while block and not block[0].strip():
            block.pop(0)
        while block and not block[-1].strip():
            block.pop()
        for line in block:
            if line.strip():
                self.lines.append(self._prefix + line.rstrip())
                self._prefix = ""
            else:
                self._blank()
        self.paragraph_break()

    def finish(self) -> str:
        self._flush()
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines)

    def _flush(self) -> str:
        line = _SPACES.sub(" ", "".join(self._inline)).strip()
        self._inline.clear()
        if line:
            self.lines.append(self._prefix + line)
            self._prefix = ""
        return line

    def _blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")


def _html_to_text(markup: str) -> tuple[str, str | None]:
    """Return (visible text, title) of an HTML document."""
    soup = BeautifulSoup(markup, "html.parser")
    title: str | None = None
    for element in soup.find_all("title"):
        if element.find_parent("svg") is None:  # an SVG <title> is a tooltip, not the page's title
            title = _SPACES.sub(" ", element.get_text()).strip() or None
            break

    chrome = find_chrome(soup)  # navigation, site headers and footers, link bars: not the document
    writer = _TextWriter()
    # An explicit stack rather than recursion: machine-generated pages nest deeper than Python's recursion
    # limit. An entry is (node, entering); a tag is pushed again with entering=False to close it.
    stack: list[tuple[Tag | NavigableString, bool]] = [(soup, True)]
    while stack:
        node, entering = stack.pop()
        if isinstance(node, NavigableString):
            # Comments, CDATA, doctypes and processing instructions are PreformattedStrings: never shown.
            if not isinstance(node, PreformattedString):
                writer.text(str(node))
            continue
        if entering:
            if node is not soup and (_is_hidden(node) or id(node) in chrome):
                continue
            _enter(writer, node)
            stack.append((node, False))
            stack.extend((child, True) for child in reversed(node.contents) if isinstance(child, Tag | NavigableString))
        else:
            _leave(writer, node)
    return writer.finish(), title or writer.first_h1


def _enter(writer: _TextWriter, tag: Tag) -> None:
    name = tag.name
    if name in _HEADING_LEVELS:
        writer.start_heading(_HEADING_LEVELS[name])
    elif name == "li":
        writer.start_list_item()
    elif name in _LIST_TAGS:
        # A top-level list is a paragraph; a nested one continues its parent item's lines.
        if writer.list_depth == 0:
            writer.paragraph_break()
        else:
            writer.line_break()
        writer.list_depth += 1
    elif name == "pre":
        writer.start_pre()
    elif name in _CELL_TAGS:
        writer.cell()
    elif name in _PARAGRAPH_TAGS:
        writer.paragraph_break()
    elif name in _LINE_TAGS:
        writer.line_break()


def _leave(writer: _TextWriter, tag: Tag) -> None:
    name = tag.name
    if name in _HEADING_LEVELS:
        writer.end_heading()
    elif name == "li":
        writer.end_list_item()
    elif name in _LIST_TAGS:
        writer.list_depth -= 1
        if writer.list_depth == 0:
            writer.paragraph_break()
        else:
            writer.line_break()
    elif name == "pre":
        writer.end_pre()
    elif name in _PARAGRAPH_TAGS:
        writer.paragraph_break()
    elif name in _LINE_TAGS and name != "br":  # <br> is void: it broke the line on the way in
        writer.line_break()
