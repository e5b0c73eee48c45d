"""The SSRF rules for URLs eventrag calls out to: decided on the addresses a name resolves to."""

from __future__ import annotations

import pytest

from stores.ssrf import UnsafeURLError, check_url


def resolving_to(*addresses: str):  # type: ignore[no-untyped-def]
    def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


@pytest.mark.parametrize(
    "addresses, why",
    [
        (["127.0.0.1"], "loopback"),
        (["::1"], "loopback"),
        (["10.1.2.3"], "private"),
        (["192.168.0.10"], "private"),
        (["172.16.5.5"], "private"),
        (["169.254.10.1"], "link-local"),
        (["fe80::1"], "link-local"),
        (["169.254.169.254"], "metadata"),
        (["fd00:ec2::254"], "metadata"),
        (["100.100.100.200"], "metadata"),
        (["::ffff:127.0.0.1"], "loopback"),  # IPv4-mapped IPv6
        (["64:ff9b::a00:1"], "private"),  # NAT64 of 10.0.0.1
        (["0.0.0.0"], "not a unicast"),
        (["93.184.215.14", "10.0.0.1"], "private"),  # one bad address is enough (round-robin DNS)
    ],
)
def test_names_resolving_inside_the_network_are_refused(addresses: list[str], why: str) -> None:
    with pytest.raises(UnsafeURLError, match=why):
        check_url("https://hooks.example.com/x", resolver=resolving_to(*addresses))


def test_public_addresses_pass_and_are_pinned() -> None:
    target = check_url("https://hooks.example.com:8443/in?x=1", resolver=resolving_to("93.184.215.14"))
    args = target.request_args()
    assert args["url"] == "https://93.184.215.14:8443/in?x=1"
    assert args["headers"] == {"host": "hooks.example.com:8443"}
    assert args["extensions"] == {"sni_hostname": "hooks.example.com"}  # the certificate is checked for the name
    v6 = check_url("http://[2606:2800:220:1::1]/", resolver=resolving_to()).request_args()
    assert v6["url"] == "http://[2606:2800:220:1::1]/" and v6["extensions"] == {}


def test_allow_private_lets_the_own_network_through_but_never_metadata() -> None:
    assert check_url("http://intranet/x", allow_private=True, resolver=resolving_to("10.0.0.5")).address == "10.0.0.5"
    assert check_url("http://127.0.0.1:9/x", allow_private=True).address == "127.0.0.1"
    with pytest.raises(UnsafeURLError, match="metadata"):
        check_url("http://169.254.169.254/latest/meta-data/", allow_private=True)


@pytest.mark.parametrize(
    "url, why",
    [
        ("file:///etc/passwd", "only http and https"),
        ("gopher://x/", "only http and https"),
        ("https:///path", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeURLError, match=why):
        check_url(url, resolver=resolving_to("93.184.215.14"))
