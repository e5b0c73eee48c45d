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
        (["169.254.170.2"], "metadata"),  # ECS task metadata
        (["100.64.0.1"], "not public"),  # carrier-grade NAT
        (["fe80::1"], "link-local"),
        (["169.254.169.254"], "metadata"),
        (["fd00:ec2::254"], "metadata"),
        (["100.100.100.200"], "metadata"),
        (["::ffff:127.0.0.1"], "loopback"),  # IPv4-mapped IPv6
        (["64:ff9b::a00:1"], "private"),  # NAT64 of 10.0.0.1
        (["0.0.0.0"], "unspecified"),
        (["224.0.0.1"], "multicast"),
        (["2002:a00:1::"], "private"),  # 6to4 of 10.0.0.1
        (["93.184.215.14", "10.0.0.1"], "private"),  # one bad address is enough (round-robin DNS)
    ],
)
def test_names_resolving_inside_the_network_are_refused(addresses: list[str], why: str) -> None:
    with pytest.raises(UnsafeURLError, match=why):
        check_url("https://hooks.example.com/x", resolver=resolving_to(*addresses))


def test_public_addresses_pass() -> None:
    checked = check_url("https://hooks.example.com:8443/in?x=1", resolver=resolving_to("93.184.215.14"))
    assert (checked.host, checked.port, checked.addresses) == ("hooks.example.com", 8443, ("93.184.215.14",))
    v6 = check_url("http://[2606:2800:220:1::1]/", resolver=resolving_to())
    assert v6.addresses == ("2606:2800:220:1::1",)
    assert check_url("https://name.example/", resolver=None).addresses == ()  # shape only, no lookup


def test_the_guarded_transport_refuses_at_connect_time_whatever_the_name() -> None:
    """A name that resolves to loopback is refused when the connection is made (so a URL that passed an
    earlier check and was re-pointed by DNS since is refused too); the refusal names the setting."""
    import httpx

    from stores.ssrf import GuardedBackend, GuardedTransport

    backend = GuardedBackend(hint="see SETTING", resolver=resolving_to("127.0.0.1"))
    with httpx.Client(transport=GuardedTransport(backend)) as client, pytest.raises(UnsafeURLError) as caught:
        client.get("http://rebinding.example.test:9/")
    assert "loopback" in str(caught.value) and "see SETTING" in str(caught.value)


def test_allow_private_lets_the_own_network_through_but_never_metadata() -> None:
    assert check_url("http://intranet/x", allow_private=True, resolver=resolving_to("10.0.0.5")).addresses == (
        "10.0.0.5",
    )
    assert check_url("http://127.0.0.1:9/x", allow_private=True).addresses == ("127.0.0.1",)
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
