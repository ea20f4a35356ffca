"""Which addresses the web fetcher may connect to, decided by calling the check (nothing is connected to)."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from tasks.sources.addresses import AddressGuard, BlockedAddress, refusal
from tasks.sources.web import WebConfig

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    "address, kind",
    [
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),  # carrier-grade NAT
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff0e::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        # is_global says yes to these on some patch releases (3.11.7 among them): our own list decides
        ("192.0.0.192", "protocol-assignment"),
        ("192.0.0.8", "protocol-assignment"),
        ("192.0.0.9", "protocol-assignment"),
        ("fec0::1", "site-local"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated), outside 2000::/3
        ("2001:db8::1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.88.99.1", "relay"),
        ("100::1", "discard-only"),
        ("2001::1", "protocol-assignment"),  # Teredo
    ],
)
def test_non_global_addresses_are_refused_with_their_kind(address, kind):
    assert refusal(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34"])
def test_global_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["192.0.0.192", "fec0::1", "10.0.0.1", "::1", "169.254.169.254"])
def test_the_verdict_does_not_depend_on_the_interpreters_is_global(monkeypatch, address):
    """A patch release whose `is_global`/`is_private` call everything global changes nothing."""
    for cls in (ipaddress.IPv4Address, ipaddress.IPv6Address):
        monkeypatch.setattr(cls, "is_global", property(lambda _self: True))
        monkeypatch.setattr(cls, "is_private", property(lambda _self: False))
    assert refusal(ipaddress.ip_address(address)) is not None


def guard(names: dict[str, list[str]], allow: list[str] = ()) -> AddressGuard:
    return AddressGuard(allow, resolve=lambda host, _port: names[host.rstrip(".")])  # one name, one FQDN


def test_a_name_is_judged_by_every_address_it_resolves_to():
    names = {
        "public.example": [PUBLIC],
        "metadata.example": ["169.254.169.254"],
        "mixed.example": [PUBLIC, "127.0.0.1"],
        "localhost": ["127.0.0.1", "::1"],
        "nowhere.example": [],
    }
    g = guard(names)
    assert g.check("https://public.example/page") == [PUBLIC]  # the pinned connect addresses
    assert g.pinned("public.example", 443) == [PUBLIC]
    with pytest.raises(BlockedAddress, match=r"metadata\.example.*169\.254\.169\.254.*link-local"):
        g.check("http://metadata.example/latest/meta-data/")
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1.*loopback"):
        g.check("http://mixed.example/")
    with pytest.raises(BlockedAddress, match="loopback"):
        g.check("http://localhost./")
    with pytest.raises(BlockedAddress, match="resolves to no address"):
        g.check("http://nowhere.example/")
    assert g.pinned("mixed.example", 80) == []  # nothing refused is ever pinned


def test_allow_hosts_matches_host_and_port_exactly():
    names = {"wiki.internal": ["10.0.0.5"], "other.internal": ["10.0.0.6"]}
    g = guard(names, ["wiki.internal:8080", "Other.Internal."])
    assert g.check("http://wiki.internal:8080/w/api.php") == ["10.0.0.5"]
    assert g.check("http://WIKI.internal.:8080/") == ["10.0.0.5"]  # case and the root dot do not matter
    for refused in ("http://wiki.internal/", "http://wiki.internal:8081/", "https://wiki.internal/"):
        with pytest.raises(BlockedAddress, match="private"):
            g.check(refused)
    assert g.check("http://other.internal/") == ["10.0.0.6"]  # no port: the scheme's default port
    with pytest.raises(BlockedAddress):
        g.check("http://other.internal:8080/")


@pytest.mark.parametrize(
    "entry", ["http://wiki.internal", "wiki.internal/w", "wiki.internal:http", "", "a b"]
)
def test_a_malformed_allow_hosts_entry_is_a_clear_error(entry):
    with pytest.raises(ValidationError, match=r"collect\.web\.allow_hosts"):
        WebConfig(allow_hosts=[entry])
