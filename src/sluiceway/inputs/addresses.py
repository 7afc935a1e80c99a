"""Which remote addresses an image may be downloaded from, and what counts as one host.

A host's every address must be public (an IPv4 address carried inside IPv6 in any form is judged
as the IPv4 address it carries) unless the allow-list names the host or address *with that
port*. For the fairness caps one remote host is an IPv4 address or an IPv6 /64 (one host can
hold a whole /64).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULT_PORTS = frozenset({80, 443})

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 4291 compatible and
# mapped, RFC 2765 translated, RFC 6052 NAT64 well-known prefix).
_EMBEDDING_LAST_32 = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)
# RFC 8215 local-use NAT64: the IPv4 address may sit anywhere in it, so none of it is public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


Ports = frozenset[int] | None  # None: every port


def _ports(text: str, entry: str) -> Ports:
    if text == "":
        return _DEFAULT_PORTS
    if text == "*":
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allow-list entry {entry!r}: {text!r} is not a port (1-65535 or *)")
    return frozenset({int(text)})


def _split_entry(entry: str) -> tuple[str, str]:
    """``host[:port]``, ``[v6][:port]``, bare IPv6 (two colons or more) or a CIDR."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def _allowed(ports: Ports, port: int) -> bool:
    return ports is None or port in ports


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts, addresses and networks exempt from the private-address ban, each on its ports.

    An entry names its port (``127.0.0.1:8080``, ``[::1]:8080``, ``images.internal:8443``,
    ``10.0.0.0/8:80``) or every port with ``:*``; an entry without a port allows the HTTP
    defaults 80 and 443 only, so listing a host never opens its other ports (``/metrics`` of a
    server beside it, a database).
    """

    hosts: dict[str, Ports] = field(default_factory=dict)
    networks: tuple[tuple[IPNetwork, Ports], ...] = ()

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> AllowList:
        """From ``"127.0.0.1:8080, 10.0.0.0/8, images.internal:*"``; ``ValueError`` if bad."""
        items = text.split(",") if isinstance(text, str) else list(text)
        hosts: dict[str, Ports] = {}
        networks: list[tuple[IPNetwork, Ports]] = []
        for raw in items:
            entry = raw.strip().lower()
            if not entry:
                continue
            host, port_text = _split_entry(entry)
            ports = _ports(port_text, entry)
            try:
                networks.append((ipaddress.ip_network(host, strict=False), ports))
            except ValueError:
                if not host:
                    raise ValueError(f"allow-list entry {entry!r} names no host") from None
                known = hosts.get(host, frozenset())
                hosts[host] = None if ports is None or known is None else known | ports
        return cls(hosts, tuple(networks))

    def allows_host(self, host: str, port: int) -> bool:
        """Whether the host name itself is listed for ``port``."""
        return host in self.hosts and _allowed(self.hosts[host], port)

    def allows(self, address: IPAddress, port: int | None) -> bool:
        """Whether ``address`` is in a listed network for ``port`` (``None``: on any port)."""
        return any(
            address in network and (port is None or _allowed(ports, port))
            for network, ports in self.networks
        )


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, translated, NAT64,
    6to4, Teredo), which is where a packet to it ends up."""
    if any(address in prefix for prefix in _EMBEDDING_LAST_32):
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable (not private, loopback, link-local, ...).

    An IPv6 address that carries an IPv4 address is public only if what it carries is: the
    unspecified and loopback IPv6 addresses aside, every such form reaches its IPv4 address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return False
        if int(address) > 1:  # :: and ::1 are themselves, judged below
            carried = embedded_ipv4(address)
            if carried:
                return all(is_public(inner) for inner in carried)
    return address.is_global and not address.is_multicast


def host_key(address: IPAddress) -> str:
    """What one remote host is, for its cap: an IPv4 address, or an IPv6 /64."""
    if isinstance(address, ipaddress.IPv6Address) and not embedded_ipv4(address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv6Address):
        return str(embedded_ipv4(address)[0])
    return str(address)
