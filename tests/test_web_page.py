"""The web page in a real browser: Playwright driving Debian's chromium (`.ci/run` installs it with apt;
Playwright's own browser download is never used) against the app served by uvicorn on loopback.

Covered: sign-in, ask with the answer streamed in and `[n]` linked to sources shown in their surrounding
text, a failed event retried from the page, a held delete confirmed, the Health figures, keyboard use, a
narrow screen, and that the page asks nothing of any other host. Screenshots go to `test-artifacts/`
(or `$EVENTRAG_TEST_ARTIFACTS`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from app.main import create_app
from tests.conftest import KEY_ACME, KEY_BETA, SECRET_BETA, Harness
from tests.fakes.server import serve
from tests.fakes.webhooks import file_event

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("EVENTRAG_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("EVENTRAG_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
LEAVE = (
    "# Leave policy\n\nEmployees get 25 days of annual leave per year. Unused days carry over until the end of"
    " March of the following year.\n\n## Sick leave\n\nSick leave is paid from the first day with a doctor's note"
    " after three days."
)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_FLAGS)
    yield b
    b.close()


@contextmanager
def served(h: Harness) -> Iterator[str]:
    """The harness's app on a loopback port, with the worker running in the background."""
    assert h.container.loop is not None
    h.container.loop.start()
    try:
        with serve(create_app(h.container, start_worker=False)) as url:
            yield url
    finally:
        h.container.loop.stop()


@contextmanager
def page_on(browser: Browser, base: str, **context: Any) -> Iterator[tuple[Page, list[str]]]:
    """A fresh page; yields it with the list of every URL it requested."""
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        yield page, requested
        assert requested, "the page made no request at all"
        foreign = [u for u in requested if not (u.startswith(base) or u.startswith("data:"))]
        assert foreign == [], f"requests to other hosts: {foreign}"
    finally:
        ctx.close()


def sign_in(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill(KEY_ACME)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Workspace acme")).to_be_visible()


def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_ask_streams_an_answer_with_linked_sources_in_context(browser: Browser, harness: Harness) -> None:
    harness.post_event(file_event("created", "leave", path="hr/leave.md", content=LEAVE, version=3))
    harness.drain()
    with served(harness) as base, page_on(browser, base, viewport={"width": 1200, "height": 900}) as (page, _):
        sign_in(page, base)
        question = page.get_by_label("Question")
        question.fill("How many days of annual leave do I get?")
        question.press("Enter")  # keyboard: Enter asks

        source = page.locator("#source-1")
        expect(source).to_be_visible()
        expect(source).to_contain_text("hr/leave.md")
        expect(source).to_contain_text("version 3")
        cite = page.locator("#answer a.cite").first
        expect(cite).to_have_attribute("href", "#source-1")
        # Both relevance signals of issue 13's citations, whatever the mode ranked by.
        expect(source.locator(".source-scores")).to_contain_text(re.compile(r"similarity 0\.\d\d"))
        expect(source.locator(".source-scores")).to_contain_text(re.compile(r"keyword score \d+\.\d\d"))
        # The extractive answer quotes part of the passage: that part is marked, inside the passage.
        mark = source.locator(".passage mark").first
        expect(mark).to_contain_text("25 days of annual leave")
        answer_text = page.locator("#answer").inner_text()
        assert mark.inner_text().strip() in answer_text
        # The quoted passage sits in its surrounding text once the passage is fetched.
        quote = source.locator("blockquote")
        expect(quote).to_contain_text("Leave policy")
        until(lambda: len(quote.inner_text()) > len(source.locator(".passage").inner_text()))
        expect(page.locator("#answer-notes")).to_be_hidden()
        cite.click()
        expect(page).to_have_url(re.compile(r"#source-1$"))
        shot(page, "web-ask.png")


def status_of(h: Harness, workspace: str, event_id: str) -> tuple[str, int]:
    # From the store: Starlette's TestClient would decode the "%41" of the id's URL a second time.
    rec = h.container.state.get_event(workspace, event_id)
    assert rec is not None
    return rec.status.value, rec.attempts


EVENT_ID = "runbook/1 ?#%41"  # the page (over uvicorn) must send "%41" as it is, not as "A"


def test_a_failed_event_is_retried_from_the_page(
    browser: Browser, make_harness: Callable[..., Harness], tmp_path: Path
) -> None:
    root = tmp_path / "src"
    (root / "acme").mkdir(parents=True)
    h = make_harness(source_root=str(root / "{workspace}"))
    # A webhook-id is any string: the page must send this one back intact (ids are per workspace, and beta's
    # event of the same id fails too, and must stay beta's).
    h.post_event(file_event("created", "runbook", path="ops/runbook.md", version=1), event_id=EVENT_ID)
    beta = file_event("created", "runbook", path="ops/runbook.md", version=1, workspace="beta")
    h.post_event(beta, secret=SECRET_BETA, event_id=EVENT_ID)
    h.drain()  # not in the source folders yet: failed for good
    assert status_of(h, "beta", EVENT_ID) == ("failed", 1)
    with served(h) as base, page_on(browser, base) as (page, _):
        sign_in(page, base)
        page.get_by_role("tab", name="Events").click()
        item = page.locator("#events-list li", has_text="ops/runbook.md")
        expect(item).to_contain_text("failed")
        expect(item.locator(".event-error")).to_contain_text("runbook.md")
        (root / "acme" / "ops").mkdir()
        (root / "acme" / "ops" / "runbook.md").write_text(
            "# Runbook\n\nRestart the ingest worker when the queue stalls."
        )
        page.get_by_role("button", name="Retry ops/runbook.md").click()
        expect(page.locator("#events-message")).to_contain_text("Retry: ops/runbook.md is now queued")

        def done() -> bool:
            page.get_by_role("button", name="Filter").click()
            return "done" in page.locator("#events-list li", has_text="ops/runbook.md").first.inner_text()

        until(done)
        page.get_by_role("tab", name="Documents").click()
        row = page.locator("#documents-table tbody tr", has_text="ops/runbook.md")
        expect(row).to_contain_text("indexed")
        row.get_by_role("button", name="Open ops/runbook.md").click()
        expect(page.locator("#document-chunks")).to_contain_text("Restart the ingest worker")
        shot(page, "web-documents.png")
    # The retry was acme's event; beta's event of the same id was not touched.
    assert status_of(h, "acme", EVENT_ID)[0] == "done"
    assert status_of(h, "beta", EVENT_ID) == ("failed", 1)
    assert h.get("/documents/runbook", key=KEY_BETA).json()["status"] == "failed"


def test_a_held_delete_is_confirmed_from_the_page(browser: Browser, make_harness: Callable[..., Harness]) -> None:
    h = make_harness(
        worker={"backoff_seconds": 0.0, "poll_seconds": 0.05, "mass_delete_share": 0.2, "mass_delete_min": 1}
    )
    for name in ("a", "b"):
        h.post_event(
            file_event("created", name, path=f"hr/{name}.md", content=f"# {name}\n\nText of {name}.", version=1)
        )
    h.drain()
    h.post_event(file_event("deleted", "a", path="hr/a.md", version=2))
    h.drain()
    assert h.get("/held-deletes").json()["count"] == 1
    with served(h) as base, page_on(browser, base) as (page, _):
        sign_in(page, base)
        page.get_by_role("tab", name="Events").click()
        page.get_by_role("tabpanel", name="Events").get_by_label("Status").select_option("held")
        page.get_by_role("button", name="Filter").click()
        item = page.locator("#events-list li", has_text="hr/a.md")
        expect(item).to_contain_text("held")
        expect(item.get_by_role("button", name="Discard delete of hr/a.md")).to_be_visible()
        shot(page, "web-events-held.png")
        item.get_by_role("button", name="Confirm delete of hr/a.md").click()
        expect(page.locator("#events-message")).to_contain_text("Confirm: hr/a.md is now queued")
        until(lambda: h.get("/documents/a").json()["status"] == "deleted")
        page.get_by_role("tab", name="Documents").click()
        expect(page.locator("#documents-table tbody tr", has_text="hr/a.md")).to_contain_text("deleted")
        expect(page.locator("#documents-table tbody tr", has_text="hr/b.md")).to_contain_text("indexed")


def test_health_on_a_narrow_screen_with_the_keyboard(browser: Browser, harness: Harness) -> None:
    harness.post_event(file_event("created", "leave", path="hr/leave.md", content=LEAVE, version=1))
    harness.drain()
    with served(harness) as base, page_on(browser, base, viewport={"width": 360, "height": 740}) as (page, _):
        sign_in(page, base)
        page.get_by_role("tab", name="Ask").focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")  # the tabs pattern: arrows move between views
        expect(page.get_by_role("tab", name="Health")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#health-documents")).to_contain_text("indexed")
        expect(page.locator("#health-index")).to_contain_text("chunks")
        expect(page.locator("#health-updated")).to_contain_text("refreshes every 5 seconds")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px on a 360px screen"
        shot(page, "web-health-narrow.png")


def test_single_user_mode_needs_no_key(browser: Browser, make_harness: Callable[..., Harness]) -> None:
    h = make_harness(api_keys={}, anonymous_workspace="acme")
    with served(h) as base, page_on(browser, base) as (page, _):
        page.goto(base + "/")
        expect(page.get_by_text("single-user mode")).to_be_visible()
        expect(page.get_by_role("heading", name="Sign in")).to_be_hidden()
        expect(page.get_by_label("Question")).to_be_focused()


def test_every_view_passes_the_axe_accessibility_checks(browser: Browser, make_harness: Callable[..., Harness]) -> None:
    """axe-core (Deque's rules engine, bundled by axe-playwright-python) finds no WCAG violation in any view,
    at desktop and at phone width."""
    from axe_playwright_python.sync_playwright import Axe

    h = make_harness(source_root=None)
    h.post_event(file_event("created", "leave", path="hr/leave.md", content=LEAVE, version=3))
    import base64

    from tests.fakes.documents import scanned_pdf

    scan = base64.b64encode(scanned_pdf()).decode()  # skipped: the error column and its colours are checked too
    h.post_event(
        file_event("created", "scan", path="ops/scan.pdf", content_type="application/pdf", content_base64=scan)
    )
    h.drain()
    axe = Axe()
    for width in (1200, 360):
        with served(h) as base, page_on(browser, base, viewport={"width": width, "height": 800}) as (page, _):
            page.goto(base + "/")
            found = {"sign-in": axe.run(page)}
            sign_in(page, base)
            page.get_by_label("Question").fill("How many days of annual leave do I get?")
            page.get_by_role("button", name="Ask").click()
            expect(page.locator("#source-1 blockquote")).to_contain_text("Leave policy")
            found["ask"] = axe.run(page)
            for tab, ready in (("Documents", "#documents-table tbody tr"), ("Events", "#events-list li")):
                page.get_by_role("tab", name=tab).click()
                expect(page.locator(ready).first).to_be_visible()
                found[tab] = axe.run(page)
            page.get_by_role("tab", name="Health").click()
            expect(page.locator("#health-documents")).to_contain_text("indexed")
            found["health"] = axe.run(page)
            problems = {
                view: [(v["id"], v["help"], [n["target"] for n in v["nodes"]]) for v in r.response["violations"]]
                for view, r in found.items()
                if r.violations_count
            }
            assert problems == {}, f"at {width}px: {problems}"


def test_a_pdf_source_shows_its_page(browser: Browser, harness: Harness) -> None:
    import base64

    from tests.fakes.documents import text_pdf

    pdf = text_pdf(
        [
            ["Travel policy", "Book trains through the portal."],
            ["Expenses", "Hotel costs are refunded up to 150 euros."],
        ]
    )
    body = file_event(
        "created",
        "travel",
        path="policies/travel.pdf",
        content_type="application/pdf",
        version=2,
        content_base64=base64.b64encode(pdf).decode(),
    )
    assert harness.post_event(body).status_code == 202
    harness.drain()
    assert harness.get("/documents/travel").json()["status"] == "indexed"
    with served(harness) as base, page_on(browser, base) as (page, _):
        sign_in(page, base)
        page.get_by_label("Question").fill("Up to how much are hotel costs refunded?")
        page.get_by_role("button", name="Ask").click()
        source = page.locator("#sources li", has_text="Hotel costs").first
        expect(source).to_contain_text("policies/travel.pdf")
        expect(source.locator(".source-meta")).to_contain_text("page 2")


def test_an_llm_answer_marks_what_it_quotes_and_flags_what_no_source_says(
    browser: Browser, make_harness: Callable[..., Harness]
) -> None:
    """Issue 13's checks on an LLM's answer, as the page shows them: the words it quotes from a passage are
    marked in that passage; a quotation no passage holds and a made-up [n] are listed under the answer."""
    import openai

    from retrieval.llm import OpenAIChatModel
    from tests.fakes.llm_server import Reply, ScriptedLLM

    with ScriptedLLM() as llm:
        client = openai.OpenAI(base_url=llm.base_url, api_key="test", max_retries=0)
        h = make_harness(chat=OpenAIChatModel("gpt-test", client=client))
        h.post_event(file_event("created", "leave", path="hr/leave.md", content=LEAVE, version=3))
        h.drain()
        llm.default = Reply(
            'The policy says "Employees get 25 days of annual leave per year" [1], and that leave is'
            ' "never paid out" [1] [9].'
        )
        with served(h) as base, page_on(browser, base) as (page, _):
            sign_in(page, base)
            page.get_by_label("Question").fill("How many days of annual leave do I get?")
            page.get_by_role("button", name="Ask").click()
            source = page.locator("#source-1")
            expect(source.locator(".passage mark")).to_have_text("Employees get 25 days of annual leave per year")
            notes = page.locator("#answer-notes")
            expect(notes).to_be_visible()
            expect(notes).to_contain_text("Not found in the cited sources: “never paid out”")
            expect(notes).to_contain_text("1 source marker(s) that named no source were removed")
            expect(page.locator("#answer")).not_to_contain_text("[9]")
            from axe_playwright_python.sync_playwright import Axe

            found = Axe().run(page)
            assert found.violations_count == 0, [v["id"] for v in found.response["violations"]]
            shot(page, "web-ask-llm.png")
