"""The parse budget protects the worker: a hostile file fails with a clear reason, the worker goes on.

The hostile input is a decompression bomb (a 360 KB DOCX whose XML inflates to ~110 MB, and takes lxml
seconds and gigabytes to load). With a small memory budget it must fail on memory; with a small time
budget, on time; either way the event is `failed` with the reason, the file's previous version stays
searchable, and the next file is parsed by a fresh child.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from ingest.errors import ParseBudgetError, UnsupportedContentError
from ingest.parsing import IN_PLACE_MAX_BYTES, parse, parses_in_place
from ingest.sandbox import ParserPool, _Child
from tests.conftest import Harness
from tests.fakes.documents import docx_bomb, docx_bytes, text_pdf
from tests.fakes.webhooks import file_event


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return docx_bomb()


def test_a_memory_bomb_fails_on_the_memory_budget_and_the_pool_recovers(bomb: bytes) -> None:
    pool = ParserPool(timeout_seconds=120, max_memory_mb=256)
    try:
        with pytest.raises(ParseBudgetError, match=r"memory budget of 256 MB \(EVENTRAG_PARSING__MAX_MEMORY_MB\)"):
            pool.parse(bomb, None, "bomb.docx")
        assert "recovered" in pool.parse(docx_bytes([("p", "recovered")]), None, "next.docx").text
    finally:
        pool.close()


def test_a_slow_parse_is_stopped_at_the_time_budget(bomb: bytes) -> None:
    pool = ParserPool(timeout_seconds=0.5, max_memory_mb=8192)
    try:
        with pytest.raises(ParseBudgetError, match=r"longer than the budget of 0.5 s"):
            pool.parse(bomb, None, "bomb.docx")
        assert pool.parse(text_pdf([["Fresh child."]]), None, "a.pdf").text == "Fresh child."
    finally:
        pool.close()


def test_a_pool_started_ahead_parses_the_first_file_in_that_child() -> None:
    pool = ParserPool()
    try:
        pool.start()
        (child,) = pool._children
        assert child.alive()
        assert pool.parse(text_pdf([["Text."]]), None, "a.pdf").text == "Text."
        assert pool._children == {child}  # no second child started for it
    finally:
        pool.close()


def test_small_utf8_text_and_markdown_are_parsed_in_place_and_the_rest_in_a_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    ask = _Child.ask

    def counted(self: _Child, request: dict[str, Any], data: bytes, **kw: Any) -> dict[str, Any]:
        asked.append(request["path"])
        return ask(self, request, data, **kw)

    monkeypatch.setattr(_Child, "ask", counted)
    pool = ParserPool()
    try:
        in_place = [
            (b"# Title\n\nText.", "text/markdown", "a.md"),
            ("Caf\u00e9 au lait.\r\n".encode(), None, "notes.txt"),
            (b"x" * IN_PLACE_MAX_BYTES, "text/plain", "full.txt"),
        ]
        for data, content_type, path in in_place:
            assert pool.parse(data, content_type, path) == parse(data, content_type, path)
        assert asked == [] and pool._children == set()  # no child was needed for them
        in_a_child = [
            ("Caf\u00e9 au lait.".encode("cp1252"), "text/plain", "latin.txt"),  # detected by a Python library
            (b"x" * (IN_PLACE_MAX_BYTES + 1), "text/plain", "big.txt"),
            (b"<h1>Title</h1><p>Text.</p>", "text/html", "a.html"),
            (text_pdf([["Text."]]), None, "a.pdf"),
        ]
        for data, content_type, path in in_a_child:
            assert not parses_in_place(data, content_type, path)
            pool.parse(data, content_type, path)
            assert asked[-1] == path
        assert pool.parse(in_a_child[0][0], "text/plain", "latin.txt").text == "Caf\u00e9 au lait."
    finally:
        pool.close()


def test_refusals_cross_the_process_boundary_as_refusals() -> None:
    pool = ParserPool()
    try:
        with pytest.raises(UnsupportedContentError, match="no text layer"):
            from tests.fakes.documents import scanned_pdf

            pool.parse(scanned_pdf(), None, "scan.pdf")
        doc = pool.parse(text_pdf([["one"], ["two"]]), None, "two.pdf")
        assert [loc.page for loc in doc.locations] == [1, 2]
    finally:
        pool.close()


def test_the_worker_records_the_hostile_file_as_failed_and_goes_on(
    make_harness: Callable[..., Harness], bomb: bytes
) -> None:
    h = make_harness(parsing={"sandbox": True, "max_memory_mb": 256, "timeout_seconds": 120})
    good = docx_bytes([("h1", "Handbook"), ("p", "The library opens at nine every weekday morning.")])

    def send(data: bytes, version: int) -> str:
        body = file_event(
            "updated",
            "handbook",
            path="handbook.docx",
            version=version,
            content_type=None,
            content_base64=base64.b64encode(data).decode(),
        )
        r = h.post_event(body)
        assert r.status_code == 202
        return str(r.json()["status_url"])

    send(good, 1)
    h.drain()
    hostile = send(bomb, 2)
    h.drain()
    event = h.get(hostile).json()
    assert event["status"] == "failed" and event["attempts"] == 1  # permanent: no retries of a bomb
    assert "memory budget of 256 MB" in event["error"]
    doc = h.get("/documents/handbook").json()
    assert doc["status"] == "failed" and "memory budget" in doc["last_error"]
    # The previous version is still what answers.
    res = h.query("When does the library open?").json()
    assert res["citations"][0]["file_id"] == "handbook" and "nine" in res["citations"][0]["text"]

    send(docx_bytes([("p", "The library now opens at eight.")]), 3)
    h.drain()
    assert h.get("/documents/handbook").json()["status"] == "indexed"
