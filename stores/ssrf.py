"""Server-side request forgery rules: which addresses eventrag may connect to when a user names a URL.

Two callers name URLs: the URL content source (`ingest.sources_url`, a webhook's `data.url`) and the
outbound webhook relay (`app.outbound.relay`, a subscriber's URL). Both go through this module, so the
rules are one:

- `address_refusal`: loopback, private, link-local, shared, multicast, reserved and other non-public
  addresses are refused, looking through IPv4-mapped, 6to4, Teredo and NAT64 wrappers (the wrapped
  address is where the packets go), unless the network is listed in `allowed_networks` or
  `allow_private` is on. The cloud metadata endpoints are refused even then: no legitimate source or
  receiver lives there, and they hand out cloud credentials.
- `GuardedBackend` / `GuardedTransport`: an httpx transport that resolves the host itself, refuses the
  connection if *any* address the name resolves to is refused, and connects to an address it checked, so
  a DNS answer that changes between the check and the connection (DNS rebinding) cannot slip through.
  Proxies from the environment are never used (a proxy would resolve names itself).
- `check_url`: the same rules as a pre-flight check of a whole URL (scheme, host, credentials, addresses),
  for refusing a subscriber with a clear `422` when it is configured instead of at its first delivery.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from stores.errors import EventragError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

# Instance metadata services: AWS/GCP/Azure/OpenStack (169.254.169.254), AWS over IPv6 (fd00:ec2::254), AWS
# ECS task metadata (169.254.170.2), Alibaba Cloud (100.100.100.200), Oracle Cloud (192.0.0.192).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURLError(EventragError):
    """The URL is not one eventrag may call: bad scheme, no host, or a host that resolves to an address
    inside the server's own network."""

    status_code = 422


class UnresolvableHostError(UnsafeURLError):
    """The host name does not resolve (now): a later attempt may succeed."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), as the operating system's resolver answers."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnresolvableHostError(f"cannot resolve {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def _wrapped(ip: IPAddress) -> list[IPAddress]:
    """The IPv4 address an IPv6 address stands for, if it wraps one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    inner: list[IPAddress] = [
        w for w in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None) if w is not None
    ]
    if ip in _NAT64:
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return inner


def address_refusal(
    address: IPAddress,
    *,
    allow_private: bool,
    allowed_networks: tuple[IPNetwork, ...] = (),
    hint: str = "",
) -> str | None:
    """Why eventrag must not connect to `address`, or None when it may. `hint` names the setting that would
    allow a private address (each caller has its own)."""
    for ip in [*_wrapped(address), address]:  # the wrapped address first: it is where the packets really go
        if ip in METADATA_ADDRESSES:
            return f"{ip} is a cloud metadata address"
        if ip.is_multicast:
            return f"{ip} is a multicast address"
        if ip.is_unspecified:
            return f"{ip} is the unspecified address"
        if not allow_private and not ip.is_global and not any(ip in net for net in allowed_networks):
            if ip.is_loopback:
                kind = "loopback"
            elif ip.is_link_local:
                kind = "link-local"
            elif ip.is_private:
                kind = "private"
            else:
                kind = "not public"
            return f"{ip} is a {kind} address{f' ({hint})' if hint else ''}"
    return None


class GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself, refuses it if any of its addresses is refused, connects to a checked one.

    `refused` / `unresolved` build the exceptions raised (each caller raises its own error types)."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_networks: tuple[IPNetwork, ...] = (),
        hint: str = "",
        resolver: Resolver = system_resolver,
        refused: Callable[[str], Exception] = UnsafeURLError,
        unresolved: Callable[[str], Exception] = UnresolvableHostError,
    ) -> None:
        self.allow_private = allow_private
        self.allowed_networks = allowed_networks
        self.hint = hint
        self.resolver = resolver
        self.refused = refused
        self.unresolved = unresolved

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            found = self.resolver(host, port)
        except UnresolvableHostError as exc:
            raise self.unresolved(str(exc)) from exc
        if not found:
            raise self.unresolved(f"{host!r} resolves to no address")
        addresses = [ipaddress.ip_address(a) for a in found]
        for address in addresses:
            # Every address the name has: a resolver answering one public and one private address would
            # otherwise get the private one used on a retry or a later connection.
            why = address_refusal(
                address, allow_private=self.allow_private, allowed_networks=self.allowed_networks, hint=self.hint
            )
            if why is not None:
                raise self.refused(f"refused to connect to {host!r}: {why}")
        last: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


class GuardedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` over `GuardedBackend` (TLS is checked against the host name, as usual)."""

    def __init__(self, backend: GuardedBackend) -> None:
        super().__init__(trust_env=False, retries=0)
        # httpx builds its httpcore pool without a way to pass a network backend; the pool it builds is
        # replaced by the same pool over the guarded backend (tests/test_fetch_url.py proves it is used).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            max_keepalive_connections=5,
            network_backend=backend,
        )


@dataclass(slots=True, frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_url(
    url: str,
    *,
    allow_private: bool = False,
    allowed_networks: tuple[IPNetwork, ...] = (),
    hint: str = "set the allow-private setting to call receivers on your own network",
    resolver: Resolver | None = system_resolver,
) -> CheckedURL:
    """Refuse `url` (`UnsafeURLError`, saying why) unless it is http(s) without credentials and every
    address its host resolves to is allowed (`resolver=None`: check a literal address only, resolve no
    name). A pre-flight check: connections go through `GuardedBackend`, which checks again at connect time."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"not a valid URL: {url!r} ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURLError(f"the URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("credentials in the URL are not allowed: put them in the path or a header")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses: Sequence[str] = [str(ipaddress.ip_address(host))]  # a literal address: nothing to resolve
    except ValueError:
        if resolver is None:
            return CheckedURL(url, scheme, host, port, ())
        addresses = resolver(host, port)
    if not addresses:
        raise UnresolvableHostError(f"host {host!r} resolves to no address")
    for address in addresses:
        why = address_refusal(
            ipaddress.ip_address(address.split("%")[0]),
            allow_private=allow_private,
            allowed_networks=allowed_networks,
            hint=hint,
        )
        if why is not None:
            raise UnsafeURLError(f"refusing {host!r}: {why}")
    return CheckedURL(url, scheme, host, port, tuple(addresses))
