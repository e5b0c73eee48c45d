"""Real documents through the real webhook endpoint, the sandboxed parser, the worker, the embedding model
and Qdrant: a question finds the right page, slide or sheet, and every citation's offsets are exact.

Fixtures are made in code (tests/fakes/documents.py), a few KB each.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from ingest.parsing import ParsedDocument, parse
from tests.conftest import Harness
from tests.fakes.documents import Slide, docx_bytes, encrypted_pdf, pptx_bytes, scanned_pdf, text_pdf, xlsx_bytes
from tests.fakes.webhooks import file_event

FILLER = [
    "The history of the company goes back to a small workshop that repaired bicycles and sewing machines.",
    "Over the decades it grew into a manufacturer of precision instruments for laboratories worldwide.",
    "Its founders believed in apprenticeships, and many engineers started their careers on the shop floor.",
    "Today the head office hosts a museum with the first lathe, restored by volunteers in their spare time.",
    "The annual report describes revenue by region, investments in research and the growth of the workforce.",
]
ANSWER = "Visitors park on level minus two of the garage, in spaces 40 to 60, and register at the front desk."

DOCX_BLOCKS = [
    ("title", "Staff handbook"),
    ("h1", "Leave"),
    ("p", "Every employee gets 25 days of paid annual leave per calendar year."),
    ("h2", "Parental leave"),
    ("p", "Parents receive paid leave after the birth or adoption of a child, by role:"),
    ("table", [["Role", "Weeks of parental leave"], ["Birth parent", "16"], ["Partner", "6"]]),
    ("h1", "Travel"),
    ("p", "Train tickets are reimbursed in second class."),
]
SLIDES = [
    Slide("Quarterly review", ["Results of the third quarter"], notes="Welcome everyone and introduce the agenda."),
    Slide("Cloud costs", ["Spending per team"], notes="The cloud budget grows by twelve percent next quarter."),
    Slide("Hiring", ["Open positions"], notes="We hire four engineers in Berlin."),
]
SHEETS: dict[str, list[list[object]]] = {
    "Prices": [["Product", "Price in euros"], ["Widget", 3.5], ["Gadget", 12], ["Sprocket", 0.75]],
    "Suppliers": [["Supplier", "Country"], ["Acme Metals", "Sweden"], ["Globex", "Portugal"]],
}
LATIN1 = "Le menu de la cantine: le jeudi, la cantine sert un curry végétarien et une crème brûlée à 3 euros.\n"
UTF16 = "Der Hausmeister öffnet die Tiefgarage werktags um sechs Uhr früh.\n"
DEBIAN = "This package is built with debhelper. Run 'dh_auto_test' to execute the upstream test suite.\n"


def files() -> dict[str, tuple[str, bytes, str | None]]:
    """file id -> (path, bytes, content type sent with the event)."""
    return {
        "guide": ("docs/office-guide.pdf", text_pdf([FILLER, [ANSWER]], title="Office guide"), None),
        "scan": ("docs/scan.pdf", scanned_pdf(), "application/pdf"),
        "locked": ("docs/salaries.pdf", encrypted_pdf(text_pdf([["Salaries by grade."]])), None),
        "handbook": ("hr/handbook.docx", docx_bytes(DOCX_BLOCKS, header="ACME internal", footer="ACME footer"), None),
        "review": ("slides/review.pptx", pptx_bytes(SLIDES), None),
        "prices": ("sales/prices.xlsx", xlsx_bytes(SHEETS), None),
        "menu": ("canteen/menu.txt", LATIN1.encode("latin-1"), "text/plain; charset=iso-8859-1"),
        "garage": ("facility/garage.txt", b"\xff\xfe" + UTF16.encode("utf-16-le"), None),
        "debian": ("pkg/README.Debian", DEBIAN.encode(), "application/octet-stream"),
    }


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[str, bytes, str | None]]:
    return files()


@pytest.fixture
def indexed(make_harness: Callable[..., Harness], corpus: dict[str, tuple[str, bytes, str | None]]) -> Harness:
    h = make_harness(parsing={"sandbox": True, "timeout_seconds": 60})
    for file_id, (path, data, content_type) in corpus.items():
        body = file_event(
            "created",
            file_id,
            path=path,
            version=1,
            content_type=content_type,
            content_base64=base64.b64encode(data).decode(),
        )
        assert h.post_event(body).status_code == 202
    h.drain()
    return h


def exact(citation: dict[str, Any], parsed: ParsedDocument) -> None:
    """The quote is the parsed text at the cited offsets, and its page/sheet fields match its offsets."""
    assert parsed.text[citation["start"] : citation["end"]] == citation["text"]
    assert parsed.locate(citation["start"], citation["end"]) == (
        citation["page_start"],
        citation["page_end"],
        citation["sheet"],
    )


def top(h: Harness, question: str, **extra: Any) -> dict[str, Any]:
    res = h.query(question, **extra).json()
    assert res["covered"], res
    return dict(res["citations"][0])


def test_every_file_is_indexed_or_says_why(indexed: Harness) -> None:
    docs = {d["file_id"]: d for d in indexed.get("/documents").json()["documents"]}
    statuses = {k: d["status"] for k, d in docs.items()}
    assert statuses == {
        "guide": "indexed",
        "scan": "skipped",
        "locked": "skipped",
        "handbook": "indexed",
        "review": "indexed",
        "prices": "indexed",
        "menu": "indexed",
        "garage": "indexed",
        "debian": "indexed",
    }
    assert "no text layer (OCR is not enabled)" in docs["scan"]["last_error"]
    assert "encrypted PDF" in docs["locked"]["last_error"]
    assert (docs["menu"]["content_type"], docs["menu"]["charset"]) == ("text/plain", "windows-1252")
    assert (docs["garage"]["content_type"], docs["garage"]["charset"]) == ("text/plain", "utf-16-le")
    assert (docs["debian"]["content_type"], docs["debian"]["charset"]) == ("text/plain", "utf-8")
    assert docs["guide"]["content_type"] == "application/pdf" and docs["guide"]["charset"] is None


def test_a_pdf_answer_cites_its_page(indexed: Harness, corpus: dict[str, tuple[str, bytes, str | None]]) -> None:
    citation = top(indexed, "Where do visitors park their car?")
    assert citation["file_id"] == "guide" and "level minus two" in citation["text"]
    parsed = parse(corpus["guide"][1], None, corpus["guide"][0])
    exact(citation, parsed)
    assert citation["page_end"] == 2
    answer_at = parsed.text.index("Visitors park")
    assert parsed.locate(answer_at, answer_at + len(ANSWER)) == (2, 2, None)
    assert citation["title"] == "Office guide"

    # The page filter: passages touching the pages asked for, and only those.
    question = "How did the company start, with bicycles?"
    res = indexed.query(question, filters={"file_id": ["guide"], "page_to": 1}).json()
    assert res["citations"] and all(c["page_start"] == 1 for c in res["citations"])
    res = indexed.query(question, filters={"file_id": ["guide"], "page_from": 2}).json()
    assert all(c["page_end"] >= 2 for c in res["citations"])


def test_a_docx_answer_carries_its_heading_path(
    indexed: Harness, corpus: dict[str, tuple[str, bytes, str | None]]
) -> None:
    citation = top(indexed, "How many weeks of parental leave does a birth parent get?")
    assert citation["file_id"] == "handbook" and "Birth parent" in citation["text"] and "16" in citation["text"]
    assert citation["heading"] == "Leave > Parental leave"  # "Title" is a level-1 heading: Leave replaces it
    assert (citation["page_start"], citation["page_end"], citation["sheet"]) == (None, None, None)
    exact(citation, parse(corpus["handbook"][1], None, corpus["handbook"][0]))
    chunks = indexed.container.index.file_chunks("acme", "handbook", "v:" + "1".rjust(20, "0"))
    assert not any("ACME" in c.text for c in chunks)  # page headers and footers are not content


def test_a_pptx_answer_cites_its_slide_from_the_speaker_notes(
    indexed: Harness, corpus: dict[str, tuple[str, bytes, str | None]]
) -> None:
    citation = top(indexed, "By how much does the cloud budget grow?")
    assert citation["file_id"] == "review" and "twelve percent" in citation["text"]
    assert (citation["page_start"], citation["page_end"]) == (2, 2)
    assert citation["heading"] == "Slide 2: Cloud costs"
    exact(citation, parse(corpus["review"][1], None, corpus["review"][0]))


def test_an_xlsx_answer_names_its_sheet_and_row(
    indexed: Harness, corpus: dict[str, tuple[str, bytes, str | None]]
) -> None:
    citation = top(indexed, "Which country is the supplier Globex in?")
    assert citation["file_id"] == "prices" and citation["sheet"] == "Suppliers"
    assert "Sheet: Suppliers; row 3: Supplier: Globex; Country: Portugal" in citation["text"]
    exact(citation, parse(corpus["prices"][1], None, corpus["prices"][0]))
    res = indexed.query("What is the price of a gadget?", filters={"sheet": ["Prices"]}).json()
    assert res["citations"] and {c["sheet"] for c in res["citations"]} == {"Prices"}
    assert any("Product: Gadget; Price in euros: 12" in c["text"] for c in res["citations"])


@pytest.mark.parametrize(
    ("question", "file_id", "quote"),
    [
        ("What does the canteen serve on Thursdays?", "menu", "curry végétarien"),
        ("Wann öffnet der Hausmeister die Tiefgarage?", "garage", "sechs Uhr"),
        ("How do I run the upstream test suite of the package?", "debian", "dh_auto_test"),
    ],
)
def test_text_in_any_charset_or_name_is_found(
    indexed: Harness, corpus: dict[str, tuple[str, bytes, str | None]], question: str, file_id: str, quote: str
) -> None:
    citation = top(indexed, question)
    assert citation["file_id"] == file_id and quote in citation["text"]
    path, data, content_type = corpus[file_id]
    exact(citation, parse(data, content_type, path))
