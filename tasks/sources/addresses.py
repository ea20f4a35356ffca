"""Where the web fetcher may connect: global addresses, plus the internal hosts a user names.

A URL from the web (or a redirect it sends) may point anywhere: at the cloud metadata service
(169.254.169.254), at a database on the private network, at this machine. So every hop is checked
after DNS resolution, and its host is refused unless every address it resolves to is global. The
address that was checked is pinned: the connection goes to it (`tasks.sources.pinned`), so a DNS
answer that changes between check and connect (rebinding) cannot redirect the socket.

Host names are compared as the URL parser leaves them (lower case, IDNA, IPv6 without brackets), so
`0x7f.1`, `2130706433`, `127.1` or `[::ffff:127.0.0.1]` are only ever judged by what they resolve to.
`allow_hosts` opts named internal hosts in, matched exactly on host and port.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses, in the order to try them

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: an IPv4 address inside
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")  # every IPv6 address outside it is unallocated


def _nets(kind: str, *cidrs: str) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    return [(ipaddress.ip_network(cidr), kind) for cidr in cidrs]


# Every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries (including the few marked
# globally reachable: a crawler has no business with anycast DNS sinks or relays), multicast, and the
# deprecated IPv6 site-local block; the first match names the kind. Written out rather than taken from
# `ipaddress.is_global`, whose answers change with the interpreter's patch release.
SPECIAL_PURPOSE = [
    *_nets("unspecified", "0.0.0.0/32", "::/128"),
    *_nets("this-network", "0.0.0.0/8"),
    *_nets("loopback", "127.0.0.0/8", "::1/128"),
    *_nets("link-local", "169.254.0.0/16", "fe80::/10"),
    *_nets("site-local", "fec0::/10"),
    *_nets("private", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "64:ff9b:1::/48"),
    *_nets("shared", "100.64.0.0/10"),  # carrier-grade NAT (RFC 6598)
    *_nets("multicast", "224.0.0.0/4", "ff00::/8"),
    *_nets("reserved", "240.0.0.0/4"),  # with 255.255.255.255, the limited broadcast
    *_nets("protocol-assignment", "192.0.0.0/24", "2001::/23"),
    *_nets(
        "documentation", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"
    ),
    *_nets("benchmarking", "198.18.0.0/15"),
    *_nets("relay", "192.88.99.0/24", "192.52.193.0/24"),  # 6to4 relay anycast, AMT
    *_nets("as112", "192.31.196.0/24", "192.175.48.0/24", "2620:4f:8000::/48"),
    *_nets("discard-only", "100::/64"),
    *_nets("segment-routing", "5f00::/16"),
]
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@?#]+)(:\d{1,5})?")


class BlockedAddress(Exception):
    """The URL's host is not a place the fetcher may go; the message says why and how to allow it."""


class ResolveTimeout(OSError):
    """A name lookup took longer than the time its request had left."""


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses `getaddrinfo` gives for host:port (numeric spellings are read without DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_within(resolve: Resolver, host: str, port: int, timeout: float | None) -> list[str]:
    """`resolve(host, port)`, given up after `timeout` seconds (None: no limit).

    getaddrinfo has no timeout and cannot be cancelled, so the lookup runs on a daemon thread and one that
    hangs is left to finish on its own; an address literal needs no lookup and no thread.
    """
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if timeout is None or literal:
        return resolve(host, port)
    outcome: list[list[str] | BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome.append(resolve(host, port))
        except BaseException as err:  # handed to the caller's thread below
            outcome.append(err)
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise ResolveTimeout(f"resolving {host} took longer than {max(timeout, 0.0):g} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which decides where it goes."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why the fetcher may not connect to `ip` (its kind: loopback, private, ...), or None if it is global."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None and (kind := refusal(embedded)) is not None:
        return kind
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in _NAT64):
        return None  # the IPv4 address inside is global
    for network, kind in SPECIAL_PURPOSE:
        if ip.version == network.version and ip in network:
            return kind
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def _canonical_host(host: str) -> str:
    """A host as httpx's URL parser writes it, without the root dot, so one name has one spelling."""
    return host.lower().rstrip(".")


def parse_allow_entry(entry: str) -> tuple[str, int | None]:
    """'host' or 'host:port' -> (canonical host, port or None); a ValueError names the field and the fix."""
    entry = entry.strip()
    bad = ValueError(
        f"collect.web.allow_hosts entry {entry!r} is not 'host' or 'host:port' (e.g. 'wiki.internal:8080', "
        f"'[fd00::5]:443'): write the host name without scheme, path or spaces"
    )
    if not _HOST_PORT.fullmatch(entry):
        raise bad
    try:
        url = httpx.URL(f"http://{entry}/")
    except httpx.InvalidURL as err:
        raise bad from err
    if not url.host or (url.port is not None and not 0 < url.port < 65536):
        raise bad
    explicit_port = url.port if ":" in entry.rsplit("]", 1)[-1] else None
    return _canonical_host(url.raw_host.decode("ascii")), explicit_port


class AddressGuard:
    """Checks each hop's host, and remembers the address each checked host:port must connect to."""

    def __init__(self, allow_hosts: Iterable[str] = (), *, resolve: Resolver = system_resolve) -> None:
        self.allowed = frozenset(parse_allow_entry(entry) for entry in allow_hosts)
        self.resolve = resolve
        self._pins: dict[tuple[str, int], list[str]] = {}

    def _is_allowed(self, host: str, port: int, scheme: str) -> bool:
        """allow_hosts matches exactly: an entry without a port stands for the scheme's default port."""
        name = _canonical_host(host)
        return (name, port) in self.allowed or (
            port == DEFAULT_PORTS.get(scheme) and (name, None) in self.allowed
        )

    def check(self, url: str | httpx.URL, timeout: float | None = None) -> list[str]:
        """Addresses to connect to for `url`, in order; BlockedAddress if refused, OSError if DNS fails
        (ResolveTimeout if it takes longer than `timeout` seconds)."""
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme, 0)
        self._pins.pop((host, port), None)  # a host that fails its check now is not reached on an old pin
        addresses = resolve_within(self.resolve, host, port, timeout)
        if not addresses:
            raise BlockedAddress(f"{host} resolves to no address")
        if not self._is_allowed(host, port, parsed.scheme):
            for address in addresses:
                kind = refusal(ipaddress.ip_address(address))
                if kind is not None:
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    raise BlockedAddress(
                        f"{where} resolves to {address}, which is not a global address ({kind}); "
                        f"to fetch from it anyway, add '{where}' to collect.web.allow_hosts"
                    )
        self._pins[(host, port)] = addresses
        return addresses

    def pinned(self, host: str, port: int) -> list[str]:
        """The addresses checked for host:port; none if that host:port was never checked (or refused)."""
        return self._pins.get((host, port), [])
