"""Server-side request forgery rules: which URLs eventrag may call out to, decided after DNS resolution.

A URL supplied by a user (an outbound webhook subscriber; a file to fetch) must not make the server call
into its own network: loopback, private ranges, link-local addresses and the cloud metadata endpoints. The
check resolves the host name and refuses the URL when *any* address is not public, then the caller connects
to exactly the address that was checked (`PinnedTarget`), so a DNS answer that changes between the check and
the connection (DNS rebinding) cannot slip a private address through.

`allow_private=True` (an operator's setting, for receivers on their own network) lets private, loopback and
link-local addresses through. The metadata endpoints stay refused even then: no legitimate receiver lives
there, and they hand out cloud credentials.

Shared by every outbound caller, so the rules are in one place (issue 11's URL fetching uses the same).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from stores.errors import EventragError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

# Instance metadata services: AWS/GCP/Azure/OpenStack (169.254.169.254), AWS over IPv6 (fd00:ec2::254),
# Alibaba Cloud (100.100.100.200), Oracle Cloud (192.0.0.192).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


class UnsafeURLError(EventragError):
    """The URL is not one eventrag may call: bad scheme, no host, or a host that resolves to an address
    inside the server's own network."""

    status_code = 422


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), as the operating system's resolver answers."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeURLError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped ::ffff:a.b.c.d, 6to4, NAT64 64:ff9b::/96)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why eventrag must not connect to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return refusal(inner, allow_private=allow_private)
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata endpoint"
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if ip.is_global:
        return None
    if allow_private:
        return None
    if ip.is_loopback:
        kind = "a loopback address"
    elif ip.is_link_local:
        kind = "a link-local address"
    elif ip.is_private:
        kind = "a private address"
    else:
        kind = "not a public address"
    return f"{ip} is {kind} (set the allow-private setting to call receivers on your own network)"


@dataclass(slots=True, frozen=True)
class PinnedTarget:
    """A URL checked against the rules, and the address to connect to for it."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def request_args(self) -> dict[str, Any]:
        """`httpx` arguments that connect to the checked address while speaking to the host by name: the
        Host header for HTTP, and the TLS server name (so the certificate is checked for the host)."""
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        default = {"http": 80, "https": 443}[self.scheme]
        netloc = literal if self.port == default else f"{literal}:{self.port}"
        host_header = self.host if self.port == default else f"{self.host}:{self.port}"
        if ":" in self.host:  # an IPv6 literal in the URL keeps its brackets in the Host header
            host_header = f"[{self.host}]" if self.port == default else f"[{self.host}]:{self.port}"
        return {
            "url": urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
            "headers": {"host": host_header},
            "extensions": {"sni_hostname": self.host} if self.scheme == "https" else {},
        }


def check_url(url: str, *, allow_private: bool = False, resolver: Resolver = system_resolver) -> PinnedTarget:
    """Refuse `url` (`UnsafeURLError`, saying why) unless it is http(s) and every address its host resolves to
    is allowed; returns the target pinned to the first of them."""
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
        addresses = resolver(host, port)
    if not addresses:
        raise UnsafeURLError(f"host {host!r} resolves to no address")
    for address in addresses:
        why = refusal(ipaddress.ip_address(address.split("%")[0]), allow_private=allow_private)
        if why is not None:
            raise UnsafeURLError(f"refusing {host!r}: {why}")
    return PinnedTarget(url=url, scheme=scheme, host=host, port=port, address=addresses[0])
