"""The URL content source: `data.url` fetched over HTTPS, within an allow-list, safe against SSRF.

A webhook that names a URL makes the worker send a request from inside your network. So:

- *allow-list*: only URLs under a configured prefix (`EVENTRAG_FETCH__ALLOWED_URLS`: a list for every
  workspace, or a map workspace -> list) are fetched; scheme, host and port must be equal and the path
  must be the prefix's or below it (`https://files.example.com/docs` allows `/docs` and `/docs/a.pdf`,
  not `/docs-private`). Nothing configured: URL fetching is off. `https` only, unless the operator allows
  plain HTTP. Checked at receive time (a `422`) and again on every redirect hop;
- *SSRF*: the host is resolved here, and the connection goes to the very address that was checked (no
  second lookup a DNS rebinding could answer differently): loopback, private, link-local, shared,
  multicast, reserved and other non-public addresses are refused, for every address the name resolves to
  and on every hop, except networks listed in `EVENTRAG_FETCH__ALLOWED_NETWORKS` (a file server on the
  LAN), or all of them with `EVENTRAG_FETCH__ALLOW_PRIVATE_ADDRESSES=true` (tests only). The cloud metadata
  endpoints (169.254.169.254, fd00:ec2::254) are refused even then. Proxies from the
  environment are ignored (a proxy would resolve names itself);
- *bounds*: connect and read timeouts, an overall deadline, at most `max_redirects` hops, and a size cap
  enforced while streaming (on the decoded body, so a gzip bomb stops at the cap too);
- *credentials*: an `Authorization` header configured for a host is sent to that host only, never to a
  host a redirect leads to.

Errors say what a retry can do: 404/410 are `SourceNotFoundError`; 429, 5xx, 408, timeouts and network
errors are `SourceUnavailableError` (retried with backoff, honouring `Retry-After`); refusals by policy
and other 4xx answers are `FetchRefusedError` (permanent).
"""

from __future__ import annotations

import email.utils
import ipaddress
import posixpath
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from ingest.errors import FetchRefusedError, InvalidEventError, SourceNotFoundError, SourceUnavailableError
from stores import ssrf
from stores.events import FileEvent
from stores.ports import FetchedFile

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class UrlPrefix:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, prefix: str) -> UrlPrefix:
        parts = urlsplit(prefix.strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{prefix!r} is not an http(s) URL prefix with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{prefix!r}: put credentials in EVENTRAG_FETCH__AUTHORIZATION, not in the URL")
        return cls(parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme], parts.path or "/")

    def allows(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        if self.path.endswith("/"):
            return path.startswith(self.path)
        return path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What the URL source may fetch; `app.container` builds it from `EVENTRAG_FETCH__*`."""

    allowed: Mapping[str | None, tuple[UrlPrefix, ...]]  # workspace -> prefixes; None: every workspace
    allow_private_addresses: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # non-public, yet allowed
    allow_http: bool = False
    max_bytes: int = 50 * 1024 * 1024
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 30.0
    total_timeout_seconds: float = 300.0
    max_redirects: int = 5
    authorization: Mapping[str, str] = field(default_factory=dict)  # "host" or "host:port" -> header value

    @classmethod
    def from_prefixes(cls, allowed: Iterable[str] | Mapping[str, Iterable[str]], **options: Any) -> FetchPolicy:
        if isinstance(allowed, Mapping):
            table: dict[str | None, tuple[UrlPrefix, ...]] = {
                ws: tuple(UrlPrefix.parse(p) for p in prefixes) for ws, prefixes in allowed.items()
            }
        else:
            table = {None: tuple(UrlPrefix.parse(p) for p in allowed)}
        return cls(allowed=table, **options)

    @property
    def enabled(self) -> bool:
        return any(self.allowed.values())

    def prefixes(self, workspace: str) -> tuple[UrlPrefix, ...]:
        return self.allowed.get(workspace, ()) + self.allowed.get(None, ())


def _normalise(url: str) -> tuple[str, str, str, int, str]:
    """(normalised URL, scheme, host, port, path); dot segments removed as a server would, so `/a/../b`
    cannot climb out of an allowed folder. Raises FetchRefusedError for what we never fetch."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchRefusedError(f"{url!r} is not a valid URL ({exc})") from exc
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise FetchRefusedError(f"{url!r} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise FetchRefusedError(f"{url!r} carries credentials; configure EVENTRAG_FETCH__AUTHORIZATION instead")
    raw_path = parts.path or "/"
    lowered = raw_path.lower()
    if "\\" in raw_path or "%2e" in lowered or "%2f" in lowered or "%5c" in lowered:
        # Encoded dots and slashes are decoded by some servers after our prefix check: never ambiguous.
        raise FetchRefusedError(f"{url!r}: encoded '.', '/' or '\\' in the path are not fetched")
    path = posixpath.normpath(raw_path)
    path = "/" + path.lstrip("/") + ("/" if raw_path.endswith("/") and path != "/" else "")
    port = port or _DEFAULT_PORTS[scheme]
    netloc = host if ":" not in host else f"[{host}]"
    if port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, path, parts.query, "")), scheme, host, port, path


_ALLOW_HINT = (
    "allow it with EVENTRAG_FETCH__ALLOWED_NETWORKS, or all of them with EVENTRAG_FETCH__ALLOW_PRIVATE_ADDRESSES=true"
)


def address_refusal(
    address: IPAddress,
    *,
    allow_private: bool,
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
) -> str | None:
    """Why we never connect to `address`, or None: the shared rules of `stores.ssrf`, with this source's
    settings named in the message."""
    return ssrf.address_refusal(
        address, allow_private=allow_private, allowed_networks=allowed_networks, hint=_ALLOW_HINT
    )


class _GuardedTransport(ssrf.GuardedTransport):
    """Resolves the host itself, refuses non-public addresses, connects to the address it checked
    (`stores.ssrf.GuardedBackend`), raising this source's errors."""

    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__(
            ssrf.GuardedBackend(
                allow_private=policy.allow_private_addresses,
                allowed_networks=policy.allowed_networks,
                hint=_ALLOW_HINT,
                refused=FetchRefusedError,
                unresolved=SourceUnavailableError,
            )
        )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UrlSource:
    """`ContentSource` for http(s) URLs under `policy` (see the module docstring)."""

    def __init__(self, policy: FetchPolicy, *, client: httpx.Client | None = None) -> None:
        self.policy = policy
        self.client = client or httpx.Client(
            transport=_GuardedTransport(policy),
            timeout=httpx.Timeout(
                connect=policy.connect_timeout_seconds,
                read=policy.read_timeout_seconds,
                write=policy.read_timeout_seconds,
                pool=policy.connect_timeout_seconds,
            ),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "eventrag"},
        )

    def close(self) -> None:
        self.client.close()

    def check(self, event: FileEvent) -> None:
        """At receive time: refuse (422) a URL that is not allowed for the event's workspace. No DNS here."""
        assert event.url is not None
        try:
            self._allowed(event.url, event.workspace)
        except FetchRefusedError as exc:
            raise InvalidEventError(str(exc)) from exc

    def _allowed(self, url: str, workspace: str) -> tuple[str, str, int]:
        normalised, scheme, host, port, path = _normalise(url)
        if scheme == "http" and not self.policy.allow_http:
            raise FetchRefusedError(f"{url!r} is plain HTTP; only https is fetched (EVENTRAG_FETCH__ALLOW_HTTP)")
        if not any(p.allows(scheme, host, port, path) for p in self.policy.prefixes(workspace)):
            raise FetchRefusedError(
                f"{url!r} is not under a URL prefix allowed for workspace {workspace!r} (EVENTRAG_FETCH__ALLOWED_URLS)"
            )
        return normalised, host, port

    def _headers(self, host: str, port: int) -> dict[str, str]:
        auth = self.policy.authorization
        value = auth.get(f"{host}:{port}") or auth.get(host)
        return {"Authorization": value} if value else {}

    def fetch(self, event: FileEvent) -> FetchedFile:
        assert event.url is not None
        deadline = time.monotonic() + self.policy.total_timeout_seconds
        url = event.url
        for _hop in range(self.policy.max_redirects + 1):
            target, host, port = self._allowed(url, event.workspace)
            try:
                with self.client.stream("GET", target, headers=self._headers(host, port)) as response:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchRefusedError(f"{target} answered {response.status_code} without a Location")
                        url = urljoin(target, location)
                        continue
                    self._raise_for_status(target, response)
                    return FetchedFile(self._read(target, response, deadline), response.headers.get("content-type"))
            except httpx.TimeoutException as exc:
                raise SourceUnavailableError(f"fetching {target} timed out ({type(exc).__name__})") from exc
            except httpx.HTTPError as exc:
                raise SourceUnavailableError(f"fetching {target} failed: {type(exc).__name__}: {exc}") from exc
        raise FetchRefusedError(f"{event.url!r} redirected more than {self.policy.max_redirects} times")

    @staticmethod
    def _raise_for_status(url: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        said = f"{url} answered {status} {response.reason_phrase}".rstrip()
        if status in (404, 410):
            raise SourceNotFoundError(said)
        if status in (408, 429) or status >= 500:
            raise SourceUnavailableError(said, retry_after=_retry_after(response.headers.get("retry-after")))
        hint = (
            " (if the file needs a token, set EVENTRAG_FETCH__AUTHORIZATION for its host)"
            if status in (401, 403)
            else ""
        )
        raise FetchRefusedError(said + hint)

    def _read(self, url: str, response: httpx.Response, deadline: float) -> bytes:
        cap = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise FetchRefusedError(
                f"{url} is {int(declared):,} bytes, over the limit of {cap:,} (EVENTRAG_FETCH__MAX_BYTES)"
            )
        body = bytearray()
        for piece in response.iter_bytes():
            body.extend(piece)
            if len(body) > cap:
                raise FetchRefusedError(
                    f"{url} is larger than the limit of {cap:,} bytes (EVENTRAG_FETCH__MAX_BYTES): stopped reading"
                )
            if time.monotonic() > deadline:
                raise SourceUnavailableError(
                    f"fetching {url} took longer than {self.policy.total_timeout_seconds:g} s"
                    " (EVENTRAG_FETCH__TOTAL_TIMEOUT_SECONDS)"
                )
        return bytes(body)
