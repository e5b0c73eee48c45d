"""`data.url` fetched for real from loopback HTTP servers started here, through the webhook endpoint and the
worker: the allow-list, redirects checked on every hop, SSRF refusals after DNS resolution, the size cap
while streaming, and how each failure is classified.

The servers listen on 127.0.0.2 and 127.0.0.1 (both loopback). Tests that are meant to reach loopback say
so with `allow_private_addresses` or by allowing exactly 127.0.0.2 (`allowed_networks`); the SSRF tests
allow neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ingest.errors import FetchRefusedError
from ingest.sources_url import FetchPolicy, UrlSource, address_refusal
from tests.conftest import Harness
from tests.fakes.webhooks import file_event

Route = Callable[["Handler"], None]


@dataclass
class Site:
    """A loopback HTTP server with scripted routes; records what it was asked."""

    host: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    site: Site

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.site.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = self.site.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "no such file")
            return
        route(self)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass


@pytest.fixture
def sites() -> Iterator[Callable[[str], Site]]:
    started: list[ThreadingHTTPServer] = []

    def start(host: str) -> Site:
        site = Site(host)
        handler = type("SiteHandler", (Handler,), {"site": site})
        site.server = ThreadingHTTPServer((host, 0), handler)
        threading.Thread(target=site.server.serve_forever, daemon=True).start()
        started.append(site.server)
        return site

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def fetch_settings(*prefixes: str, **extra: Any) -> dict[str, Any]:
    return {"allowed_urls": list(prefixes), "allow_http": True, **extra}


def post_url(h: Harness, url: str, file_id: str = "remote", content_type: str | None = None) -> Any:
    return h.post_event(
        file_event("created", file_id, path="remote/" + file_id, version=1, url=url, content_type=content_type)
    )


def event(h: Harness, r: Any) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    h.drain()
    return dict(h.get(r.json()["status_url"]).json())


GUIDE = b"# Parking\nVisitor parking is on level minus two, spaces 40 to 60.\n"


def test_an_allowed_url_is_fetched_and_its_content_type_used(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site = sites("127.0.0.2")
    site.routes["/docs/parking"] = lambda r: r.reply(200, GUIDE, {"Content-Type": "text/markdown; charset=utf-8"})
    h = make_harness(fetch=fetch_settings(site.base + "/docs/", allow_private_addresses=True))
    ev = event(h, post_url(h, site.base + "/docs/parking"))
    assert ev["status"] == "done", ev
    doc = h.get("/documents/remote").json()
    assert (doc["status"], doc["content_type"]) == ("indexed", "text/markdown")  # the response's type
    top = h.query("Where can visitors park?").json()["citations"][0]
    assert top["file_id"] == "remote" and "level minus two" in top["text"] and top["heading"] == "Parking"


def test_urls_are_checked_against_the_allow_list_at_receive_time(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site = sites("127.0.0.2")
    off = make_harness()
    r = post_url(off, site.base + "/docs/parking")
    assert r.status_code == 422 and "EVENTRAG_FETCH__ALLOWED_URLS" in r.json()["detail"]

    h = make_harness(data_dir=off.settings.data_dir.parent / "on", fetch=fetch_settings(site.base + "/docs"))
    for url in (site.base + "/private/x", site.base + "/docs-private/x", site.base + "/docs/../private/x"):
        r = post_url(h, url)
        assert r.status_code == 422, url
        assert "not under a URL prefix allowed for workspace 'acme'" in r.json()["detail"]
    r = post_url(h, "ftp://example.com/docs/x")
    assert r.status_code == 422 and "unsupported URL scheme" in r.json()["detail"]
    assert site.requests == []  # nothing was fetched for any refused event


def test_a_redirect_to_a_host_outside_the_allow_list_is_refused(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site, other = sites("127.0.0.2"), sites("127.0.0.1")
    other.routes["/docs/parking"] = lambda r: r.reply(200, GUIDE)
    site.routes["/docs/moved"] = lambda r: r.reply(302, headers={"Location": other.base + "/docs/parking"})
    h = make_harness(fetch=fetch_settings(site.base + "/docs/", allow_private_addresses=True))
    ev = event(h, post_url(h, site.base + "/docs/moved"))
    assert ev["status"] == "failed" and ev["attempts"] == 1  # permanent
    assert "FetchRefusedError" in ev["error"] and "not under a URL prefix allowed" in ev["error"]
    assert other.requests == []


def test_a_redirect_to_loopback_is_refused_after_resolution_when_loopback_is_not_allowed(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site, inner = sites("127.0.0.2"), sites("127.0.0.1")
    port = inner.base.rsplit(":", 1)[1]
    inner.routes["/admin"] = lambda r: r.reply(200, b"internal secrets")
    # Both hosts are in the allow-list and only 127.0.0.2 is an allowed network: the guard, not the list,
    # must stop the second hop, and it must see through the name "localhost".
    site.routes["/docs/a"] = lambda r: r.reply(302, headers={"Location": inner.base + "/admin"})
    site.routes["/docs/b"] = lambda r: r.reply(307, headers={"Location": f"http://localhost:{port}/admin"})
    h = make_harness(
        fetch=fetch_settings(
            site.base + "/docs/", inner.base + "/", f"http://localhost:{port}/", allowed_networks=["127.0.0.2/32"]
        )
    )
    for name in ("a", "b"):
        ev = event(h, post_url(h, site.base + "/docs/" + name, file_id=name))
        assert ev["status"] == "failed", ev
        assert "is a loopback address" in ev["error"] and "EVENTRAG_FETCH__ALLOW" in ev["error"]
    assert [p for p, _ in site.requests] == ["/docs/a", "/docs/b"] and inner.requests == []


def test_the_size_cap_is_enforced_while_streaming(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site = sites("127.0.0.2")
    sent: list[int] = []

    def endless(r: Handler) -> None:  # chunked, no Content-Length: only streaming can stop it
        r.send_response(200)
        r.send_header("Content-Type", "text/plain")
        r.send_header("Transfer-Encoding", "chunked")
        r.end_headers()
        try:
            for _ in range(2000):
                piece = b"x" * 65536
                r.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent.append(len(piece))
            r.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    site.routes["/docs/huge.txt"] = endless
    site.routes["/docs/declared.txt"] = lambda r: r.reply(200, b"y" * 300_000)
    h = make_harness(fetch=fetch_settings(site.base + "/docs/", allow_private_addresses=True, max_bytes=200_000))
    ev = event(h, post_url(h, site.base + "/docs/huge.txt", file_id="huge"))
    assert ev["status"] == "failed" and "larger than the limit of 200,000 bytes" in ev["error"]
    assert sum(sent) < 2000 * 65536  # the download was cut short, not read to the end
    ev = event(h, post_url(h, site.base + "/docs/declared.txt", file_id="declared"))
    assert ev["status"] == "failed" and "300,000 bytes, over the limit" in ev["error"]


def test_404_is_permanent_and_503_is_retried(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site = sites("127.0.0.2")
    answers = iter([503, 503, 200])

    def flaky(r: Handler) -> None:
        status = next(answers)
        r.reply(status, GUIDE if status == 200 else b"busy", {"Content-Type": "text/markdown"})

    site.routes["/docs/flaky"] = flaky
    h = make_harness(fetch=fetch_settings(site.base + "/docs/", allow_private_addresses=True))
    ev = event(h, post_url(h, site.base + "/docs/missing", file_id="missing"))
    assert ev["status"] == "failed" and ev["attempts"] == 1 and "404" in ev["error"]
    assert "SourceNotFoundError" in ev["error"]
    ev = event(h, post_url(h, site.base + "/docs/flaky", file_id="flaky"))
    assert ev["status"] == "done" and ev["attempts"] == 3
    assert [p for p, _ in site.requests].count("/docs/flaky") == 3


def test_authorization_goes_to_its_host_only(sites: Callable[[str], Site]) -> None:
    site, other = sites("127.0.0.2"), sites("127.0.0.1")
    other.routes["/docs/x"] = lambda r: r.reply(200, b"moved here")
    site.routes["/docs/x"] = lambda r: r.reply(200, b"direct")
    site.routes["/docs/away"] = lambda r: r.reply(302, headers={"Location": other.base + "/docs/x"})
    policy = FetchPolicy.from_prefixes(
        [site.base + "/docs/", other.base + "/docs/"],
        allow_http=True,
        allow_private_addresses=True,
        authorization={"127.0.0.2": "Bearer s3cret"},
    )
    source = UrlSource(policy)
    try:
        from stores.events import EventType, FileEvent

        def ev(url: str) -> FileEvent:
            return FileEvent(
                event_id="e",
                workspace="w",
                type=EventType.CREATED,
                file_id="f",
                path="f",
                position="v:1",
                timestamp="2026-01-01T00:00:00Z",
                url=url,
            )  # type: ignore[arg-type]

        assert source.fetch(ev(site.base + "/docs/x")).data == b"direct"
        assert source.fetch(ev(site.base + "/docs/away")).data == b"moved here"
    finally:
        source.close()
    assert [h.get("authorization") for _, h in site.requests] == ["Bearer s3cret", "Bearer s3cret"]
    assert [h.get("authorization") for _, h in other.requests] == [None]


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # an IPv4-mapped IPv6 address
        ("100.64.0.1", "not public"),  # carrier-grade NAT
        ("0.0.0.0", "address"),  # "this host": refused, whatever Python calls it
        ("224.0.0.1", "multicast"),
        ("93.184.215.14", None),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    ],
)
def test_non_public_addresses_are_refused(address: str, refused: str | None) -> None:
    import ipaddress

    why = address_refusal(ipaddress.ip_address(address), allow_private=False)
    assert (why is None) if refused is None else (why is not None and refused in why)
    if refused == "cloud metadata":  # never, whatever the settings
        assert address_refusal(ipaddress.ip_address(address), allow_private=True) is not None


def test_settings_refuse_unsafe_prefixes() -> None:
    from pydantic import ValidationError

    from app.settings import FetchSettings

    with pytest.raises(ValidationError, match="plain HTTP"):
        FetchSettings(allowed_urls=["http://files.example.com/"])
    with pytest.raises(ValidationError, match="credentials"):
        FetchSettings(allowed_urls=["https://user:pw@files.example.com/"])
    ok = FetchSettings(allowed_urls={"acme": ["https://files.example.com/acme/"]})
    assert ok.allowed_urls == {"acme": ["https://files.example.com/acme/"]}
    with pytest.raises(FetchRefusedError, match="encoded"):
        UrlSource(FetchPolicy.from_prefixes(["https://a.example/"]))._allowed("https://a.example/%2e%2e/x", "w")


def test_a_server_too_slow_to_answer_is_retried_then_failed(
    make_harness: Callable[..., Harness], sites: Callable[[str], Site]
) -> None:
    site = sites("127.0.0.2")
    release = threading.Event()

    def stalls(r: Handler) -> None:  # answers only when the test ends: every read times out
        release.wait(30)
        r.reply(200, GUIDE)

    site.routes["/docs/slow"] = stalls
    h = make_harness(
        fetch=fetch_settings(site.base + "/docs/", allow_private_addresses=True, read_timeout_seconds=0.3),
        worker={"backoff_seconds": 0.0, "poll_seconds": 0.05, "max_attempts": 2},
    )
    try:
        ev = event(h, post_url(h, site.base + "/docs/slow"))
    finally:
        release.set()
    assert ev["status"] == "failed" and ev["attempts"] == 2  # transient: retried, then given up
    assert "timed out" in ev["error"] and "gave up after 2 attempt(s)" in ev["error"]


@pytest.mark.parametrize(
    ("header", "seconds"), [("120", 120.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)]
)
def test_retry_after_is_read_in_both_forms(header: str, seconds: float | None) -> None:
    from ingest.sources_url import _retry_after

    assert _retry_after(header) == seconds


def test_the_worker_waits_as_long_as_retry_after_says() -> None:
    from datetime import UTC, datetime

    from ingest.errors import SourceUnavailableError
    from ingest.plans import WorkerConfig
    from ingest.worker import IngestWorker
    from stores.events import EventStatus, EventType, FileEvent
    from stores.ports import EventRecord
    from stores.sqlite.database import SqliteDatabase
    from stores.sqlite.state import SqliteStateStore

    state = SqliteStateStore(SqliteDatabase(":memory:"))
    ev = FileEvent(event_id="e1", workspace="w", type=EventType.CREATED, file_id="f", path="f", position="v:1",
                   timestamp=datetime.now(UTC), url="https://x.example/f")  # fmt: skip
    state.add_event(ev, EventStatus.PROCESSING)
    worker = IngestWorker(state=state, index=None, embedder=None, sources=None,  # type: ignore[arg-type]
                          config=WorkerConfig(backoff_seconds=2.0))  # fmt: skip
    now = datetime.now(UTC)
    record = EventRecord(ev, EventStatus.PROCESSING, now, now, attempts=1)
    outcome = worker.settler.failure(record, SourceUnavailableError("429 Too Many Requests", retry_after=90.0))
    assert outcome.delay == 90.0  # not the 2 s backoff: sooner would be refused again
    outcome = worker.settler.failure(record, SourceUnavailableError("503", retry_after=None))
    assert outcome.delay == 2.0
