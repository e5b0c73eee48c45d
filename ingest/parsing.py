"""File bytes -> the text that chunks' character offsets refer to.

`parse` accepts plain text, Markdown and HTML and raises `UnsupportedContentError` for anything else (the
worker then records the file as skipped). Plain text and Markdown are kept as they are apart from newlines,
so a chunk's `start`/`end` point into the file the user wrote; HTML becomes the visible text a reader sees,
written as light Markdown (headings as "#" lines, list items as "- " lines) so the chunker keeps sections
together the same way for both formats.

The Markdown line scanner (`scan_markdown_lines`) lives here too: the chunker uses it to find headings, so
the title rule and the chunk heading rule cannot drift apart.
"""

from __future__ import annotations

import codecs
import mimetypes
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag

from ingest.errors import UnsupportedContentError

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = (PLAIN, MARKDOWN, HTML)


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """The text of one file version, ready for chunking.

    `text` is what chunks' character offsets refer to; `content_type` is one of `SUPPORTED_CONTENT_TYPES`;
    `title` is the HTML <title> (else its first <h1>), the first "# " heading of Markdown, or None.
    """

    text: str
    content_type: str
    title: str | None


# --- content type -----------------------------------------------------------------------------------------

_BY_EXTENSION: dict[str, str] = {
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".txt": PLAIN,
    ".text": PLAIN,
    ".rst": PLAIN,
    ".csv": PLAIN,
    ".log": PLAIN,
}

# Other spellings of the types we parse, so a header names the same type as the extension would.
_ALIASES: dict[str, str] = {
    "text/x-markdown": MARKDOWN,
    "application/xhtml+xml": HTML,
    "text/csv": PLAIN,
    "text/x-rst": PLAIN,
    "text/x-log": PLAIN,
}

# Headers that say "some bytes" rather than what they are: S3 and many servers send these for any file
# they have no type for, so the extension is better evidence than the header.
_UNINFORMATIVE = frozenset({"application/octet-stream", "binary/octet-stream"})


def detect_content_type(content_type: str | None, path: str) -> str:
    """Return the normalised media type of a file.

    The header wins when it says something: parameters are dropped ("text/html; charset=utf-8" ->
    "text/html"), case is folded, and aliases map to the types in `SUPPORTED_CONTENT_TYPES`. A missing or
    generic (`application/octet-stream`) header falls back to the extension of `path` (a URL's query and
    fragment are ignored): .md .markdown -> text/markdown, .html .htm -> text/html, .txt .text .rst .csv
    .log and no extension -> text/plain. Anything else is returned as it is ("application/pdf"), for
    `parse` to refuse with a message that names it.
    """
    if content_type:
        essence = content_type.split(";", 1)[0].strip().lower()
        if essence and essence not in _UNINFORMATIVE:
            return _ALIASES.get(essence, essence)
    name = urlsplit(path).path if "://" in path else path
    suffix = PurePosixPath(name).suffix.lower()
    if not suffix:
        return PLAIN
    if suffix in _BY_EXTENSION:
        return _BY_EXTENSION[suffix]
    guessed, _encoding = mimetypes.guess_type(PurePosixPath(name).name, strict=False)
    return guessed or "application/octet-stream"


# --- parse ------------------------------------------------------------------------------------------------


def parse(data: bytes, content_type: str | None, path: str) -> ParsedDocument:
    """Turn a file's bytes into a `ParsedDocument`.

    Raises `UnsupportedContentError` when the type (see `detect_content_type`) is not one we parse, and
    when the bytes are not text: not valid UTF-8 (for HTML, a `<meta charset>` is honoured only when UTF-8
    decoding fails) or containing NUL bytes. A UTF-8 byte order mark is dropped and newlines become "\\n";
    plain text and Markdown are otherwise unchanged. An empty result (text "") is not an error.
    """
    kind = detect_content_type(content_type, path)
    if kind not in SUPPORTED_CONTENT_TYPES:
        raise UnsupportedContentError(
            f"cannot parse {path!r}: content type {kind!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_CONTENT_TYPES)})"
        )
    text = _normalise_newlines(_decode(data, kind, path))
    if kind == HTML:
        body, title = _html_to_text(text)
        return ParsedDocument(text=body, content_type=kind, title=title)
    if kind == MARKDOWN:
        return ParsedDocument(text=text, content_type=kind, title=_markdown_title(text))
    return ParsedDocument(text=text, content_type=kind, title=None)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# WHATWG Encoding: a prescan finds <meta charset> in the first 1024 bytes; we look further because pages
# with a long inline <head> script put it later, and a wrong guess here only costs a refused file.
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_META_SCAN_BYTES = 8192


def _decode(data: bytes, kind: str, path: str) -> str:
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        declared = _META_CHARSET.search(data[:_META_SCAN_BYTES]) if kind == HTML else None
        if declared is None:
            raise UnsupportedContentError(
                f"{path!r} is not valid UTF-8 text (invalid byte at offset {exc.start})"
            ) from exc
        text = _decode_declared(data, declared.group(1).decode("ascii"), path)
    if "\x00" in text:
        raise UnsupportedContentError(f"{path!r} is not valid UTF-8 text: it contains NUL bytes (binary data?)")
    return text


def _decode_declared(data: bytes, label: str, path: str) -> str:
    """Decode HTML that is not UTF-8 with the charset its <meta> declares."""
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        raise UnsupportedContentError(
            f"{path!r} is not valid UTF-8 text and its declared charset {label!r} is unknown"
        ) from None
    if codec == "utf-8":
        raise UnsupportedContentError(f"{path!r} is not valid UTF-8 text (though it declares charset {label!r})")
    if codec in {"iso8859-1", "ascii"}:
        # WHATWG Encoding maps these labels to windows-1252: pages labelled latin-1 use its curly quotes.
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            # One of the five bytes cp1252 leaves undefined: browsers map them as latin-1 does.
            return data.decode("latin-1")
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise UnsupportedContentError(
            f"{path!r} is not valid UTF-8 text, nor valid {label!r} text as it declares"
        ) from exc


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
            if node is not soup and _is_hidden(node):
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
