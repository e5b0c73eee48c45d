"""Bytes of unknown kind: what they are (`sniff`), and the text they hold (`decode`).

`sniff` looks at the first bytes: the signature of a format we parse (PDF, DOCX, PPTX, XLSX) wins; then a
known binary signature (images, archives, executables...) names the type; bytes that decode as text are
`text/plain`; anything else is `application/octet-stream`.

`decode` picks the charset in this order, and reports the one it used:

1. a byte order mark (UTF-8, UTF-16, UTF-32): it is unambiguous, and WHATWG Encoding puts it first;
2. the `charset` parameter of the event's content type;
3. for HTML and XML, the document's own declaration (`<meta charset>`, `<?xml encoding?>`);
4. UTF-8, when the bytes are valid UTF-8 (most text is);
5. detection (charset-normalizer), preferring windows-1252 when its text is as clean as the detector's
   pick: short Western texts fool detectors into Central European or DOS code pages.

Labels `iso-8859-1` and `ascii` decode as windows-1252, as WHATWG Encoding prescribes (documents labelled
latin-1 use its curly quotes). A declared charset the bytes do not fit falls through to detection.
"""

from __future__ import annotations

import codecs
import io
import re
import zipfile

from ingest.errors import UnsupportedContentError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
OCTET = "application/octet-stream"

_SNIFF_BYTES = 64 * 1024

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", PDF),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"(\xb5/\xfd", "application/zstd"),
    (b"7z\xbc\xaf'\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"\x7fELF", "application/x-executable"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),  # .doc, .xls, .ppt, .msg
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"\x00asm", "application/wasm"),
)

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: its BOM starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Bytes that do not occur in text: C0 controls other than tab, newlines, form feed and escape.
_CONTROL = frozenset(set(range(0x00, 0x09)) | {0x0B, 0x0E, 0x0F} | set(range(0x10, 0x1B)) | set(range(0x1C, 0x20)))


def sniff(data: bytes) -> str:
    """The media type the bytes look like (see the module docstring)."""
    head = data[:16]
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(data)
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            # "BM" and four NULs are also how some text files start: only trust them on binary-looking bytes.
            if kind in ("image/bmp", "image/x-icon") and _text_encoding(data[:_SNIFF_BYTES]) is not None:
                continue
            return kind
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"WAVE", b"AVI "):
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}[head[8:12]]
    return "text/plain" if _text_encoding(data[:_SNIFF_BYTES]) is not None else OCTET


def _zip_kind(data: bytes) -> str:
    """A ZIP's own kind: Office Open XML documents are ZIPs with a known part inside."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            if "mimetype" in names:  # OpenDocument names its type in an uncompressed first entry
                declared = archive.read("mimetype")[:100].decode("ascii", "replace").strip()
                if declared:
                    return declared
    except (zipfile.BadZipFile, OSError, ValueError):
        return "application/zip"
    if "word/document.xml" in names:
        return DOCX
    if "ppt/presentation.xml" in names:
        return PPTX
    if "xl/workbook.xml" in names:
        return XLSX
    return "application/zip"


def _text_encoding(sample: bytes) -> str | None:
    """A charset the sample decodes in as text, or None for binary. Cheap: used to sniff, not to decode."""
    if not sample:
        return "utf-8"
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    utf16 = _utf16_without_bom(sample)
    if utf16 is not None:
        return utf16
    controls = sum(1 for b in sample if b in _CONTROL)
    if controls > len(sample) * 0.01 or b"\x00" in sample:
        return None
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data":
            return "utf-8"  # the sample cut a character in two
    return _detect(sample)


def _utf16_without_bom(sample: bytes) -> str | None:
    """UTF-16 text of mostly ASCII characters has a NUL in every other byte."""
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nuls, odd_nuls = even.count(0) / len(even), odd.count(0) / len(odd)
    for name, nuls, other in (("utf-16-le", odd_nuls, even_nuls), ("utf-16-be", even_nuls, odd_nuls)):
        if nuls > 0.6 and other < 0.05:
            try:
                sample[: len(sample) // 2 * 2].decode(name)
            except UnicodeDecodeError:
                continue
            return name
    return None


def _detect(data: bytes) -> str | None:
    """charset-normalizer's best guess (IANA name); windows-1252 when its text is about as clean.

    Short Western texts carry too little evidence for a detector (it picks cp1250 for French, DOS code
    pages for English with curly quotes), while windows-1252 is the most common legacy charset by far. So
    windows-1252 wins when the text it decodes to is no messier (charset-normalizer's own mess ratio) than
    the detector's pick, by a margin that Cyrillic, Central European and CJK texts never meet.
    """
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    best = from_bytes(data).best()
    if best is None:
        return None
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        return iana_name(best.encoding)
    if best.encoding != "cp1252" and mess_ratio(western, 1.0) <= best.chaos + 0.1:
        return "windows-1252"
    return iana_name(best.encoding)


def iana_name(codec: str) -> str:
    """The IANA name of a Python codec ("cp1252" -> "windows-1252", "latin_1" -> "iso-8859-1")."""
    name = codecs.lookup(codec).name
    if match := re.fullmatch(r"cp(125\d)", name):
        return f"windows-{match.group(1)}"
    if match := re.fullmatch(r"iso8859-(\d+)", name):
        return f"iso-8859-{match.group(1)}"
    return {"mac-roman": "macintosh"}.get(name, name)  # every name returned here is one Python decodes by


# --- decoding ---------------------------------------------------------------------------------------------

_CHARSET_PARAM = re.compile(r""";\s*charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
# WHATWG Encoding: a prescan finds <meta charset> in the first 1024 bytes; we look further because pages
# with a long inline <head> script put it later, and a wrong guess here only costs a refused file.
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_DECLARATION_SCAN_BYTES = 8192


def charset_parameter(content_type: str | None) -> str | None:
    """The `charset` parameter of a media type ("text/plain; charset=ISO-8859-1" -> "ISO-8859-1")."""
    match = _CHARSET_PARAM.search(content_type or "")
    return match.group(1) if match else None


def decode(data: bytes, *, declared: str | None, markup: str | None, path: str) -> tuple[str, str]:
    """(text, IANA charset) of text bytes; `markup` is "html" or "xml" to honour in-document declarations.

    Raises `UnsupportedContentError` for bytes that are not text in any charset, or decode to NUL bytes.
    """
    text, charset = _decode(data, declared, markup, path)
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        raise UnsupportedContentError(f"{path!r} is not text: it contains NUL bytes (binary data?)")
    return text, charset


def _decode(data: bytes, declared: str | None, markup: str | None, path: str) -> tuple[str, str]:
    for bom, name in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(name), name
            except UnicodeDecodeError as exc:
                raise UnsupportedContentError(
                    f"{path!r} starts with a {name} byte order mark but is not valid {name} (byte {exc.start})"
                ) from exc
    labels = [declared] if declared else []
    head = data[:_DECLARATION_SCAN_BYTES]
    if markup == "html" and (meta := _META_CHARSET.search(head)):
        labels.append(meta.group(1).decode("ascii"))
    if markup in ("html", "xml") and (xml := _XML_ENCODING.search(head)):
        labels.append(xml.group(1).decode("ascii"))
    invalid_at = 0
    try:
        as_utf8: str | None = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        as_utf8, invalid_at = None, exc.start
    for label in labels:
        if as_utf8 is not None and not data.isascii() and _single_byte(label):
            # Valid UTF-8 beyond ASCII almost never happens by accident in a single-byte charset: the label
            # is wrong (servers that say "us-ascii" or "iso-8859-1" for everything).
            return as_utf8, "utf-8"
        decoded = _decode_label(data, label)
        if decoded is not None:
            return decoded
    if as_utf8 is not None:
        return as_utf8, "utf-8"
    sample = data[:_SNIFF_BYTES]
    detected = _utf16_without_bom(sample)
    if detected is None and b"\x00" not in sample:
        detected = _detect(data)
    if detected is not None:
        try:
            return data.decode(detected), detected
        except (UnicodeDecodeError, LookupError):
            pass
    said = f" (declared charset {', '.join(map(repr, labels))} does not fit either)" if labels else ""
    raise UnsupportedContentError(
        f"{path!r} is not text in any charset we could detect: not valid UTF-8 (invalid byte at offset"
        f" {invalid_at}){said}"
    )


def _single_byte(label: str) -> bool:
    try:
        return len("\u65e5\u672c".encode(codecs.lookup(label).name, "ignore")) == 0 and "utf" not in label.lower()
    except LookupError:
        return False


def _decode_label(data: bytes, label: str) -> tuple[str, str] | None:
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        return None
    if codec in ("iso8859-1", "ascii", "cp1252"):
        try:
            return data.decode("cp1252"), "windows-1252"
        except UnicodeDecodeError:
            # One of the five bytes cp1252 leaves undefined: browsers map them as latin-1 does.
            return data.decode("latin-1"), "iso-8859-1"
    try:
        return data.decode(codec), iana_name(codec)
    except UnicodeDecodeError:
        return None
