"""Downloading images from URLs the caller names, safely and fairly.

One shared connection pool, an end-to-end timeout per image, a size cap enforced while
streaming, the type judged from the first bytes and redirects followed by hand, each hop
checked again. Every failure is a ``FetchError`` (a ``BadInput``) whose message says what went
wrong.

Addresses: a host is resolved once per hop, every address it resolves to must be public (an
IPv4 address carried inside IPv6 in any form is judged as the IPv4 address it carries) unless
the allow-list names the host or address *with that port*, and the connection goes to the
checked address: the pool's network backend connects only to addresses this module pinned for
the host, so a DNS answer that changes between check and connect (DNS rebinding) is never used.
TLS still verifies the certificate against the host name.

The client is aiohttp's (its HTTP parser is C): httpx with httpcore spent ~1.6 ms of CPU per
downloaded photo at 16-32 downloads in flight, much of it its pool probing every idle
connection's socket on each request; this fetcher, every check included, spends ~0.3 ms
(``bench/fetch``). URLs are still parsed and joined with httpx's ``URL`` (the messages for a
bad URL stay the same).

Fairness: downloads in flight are bounded per process, per remote address (an IPv6 /64 counts
as one address: one host can hold a whole /64) and per request (a ``Share``), so a host that
answers one byte a second holds at most its own cap of the process's slots while other hosts'
downloads proceed. Waiting for a slot is bounded by the download timeout too.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import aiohttp
import certifi
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.inputs.images import sniff

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
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


class FetchError(BadInput):
    """An image URL could not be downloaded; the message says why."""


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


# Addresses checked for this task's current hop: (host, port) → address to connect to.
_PINNED: contextvars.ContextVar[dict[tuple[str, int], str]] = contextvars.ContextVar("pinned")


class _PinnedResolver(AbstractResolver):
    """Answers only with the address the check pinned for the host: never resolves again.

    aiohttp connects to an IP-literal host without asking a resolver; every name comes here,
    in the task that is downloading, so the task's pins are the ones seen.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = _PINNED.get({}).get((host.lower().strip("[]"), port))
        if address is None:  # a connection nobody checked: refuse rather than resolve
            raise OSError(f"{host}:{port} was not checked before connecting")
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": kind,
                "proto": 0,
                "flags": flags,
            }
        ]

    async def close(self) -> None:
        return None


@contextmanager
def _pinned(host: str, port: int, address: IPAddress) -> Iterator[None]:
    token = _PINNED.set({**_PINNED.get({}), (host, port): str(address)})
    try:
        yield
    finally:
        _PINNED.reset(token)


class Share:
    """One request's share of the download slots: at most ``size`` of its downloads at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()


class _HostGates:
    """One semaphore per remote address, kept only while someone holds or awaits it."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._gates: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        gate, users = self._gates.get(key, (asyncio.Semaphore(self.per_host), 0))
        self._gates[key] = (gate, users + 1)
        try:
            async with gate:
                yield
        finally:
            gate, users = self._gates[key]
            if users == 1:
                del self._gates[key]
            else:
                self._gates[key] = (gate, users - 1)


def host_key(address: IPAddress) -> str:
    """What one remote host is, for its cap: an IPv4 address, or an IPv6 /64."""
    if isinstance(address, ipaddress.IPv6Address) and not embedded_ipv4(address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    if isinstance(address, ipaddress.IPv6Address):
        return str(embedded_ipv4(address)[0])
    return str(address)


class ImageFetcher:
    """Downloads images over one shared connection pool. Close it with ``aclose``."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        max_bytes: int = 10 * 1024 * 1024,
        concurrency: int = 32,
        per_host: int = 4,
        per_request: int = 8,
        max_redirects: int = 5,
        allow: AllowList | None = None,
        resolve: Resolver | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.per_request = per_request
        self.allow = allow or AllowList()
        self._resolve = resolve or resolve_host
        self._slots = asyncio.Semaphore(concurrency)
        self._hosts = _HostGates(min(per_host, concurrency))
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The shared session, made on first use: aiohttp binds it to the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
                resolver=_PinnedResolver(),
                use_dns_cache=False,  # the pins are per task; a cache would outlive them
                ssl=ssl.create_default_context(cafile=certifi.where()),
            )
            # Direct connections only (trust_env=False: no proxy from the environment): a
            # proxy would resolve the host itself, and the check must pin what is connected to.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trust_env=False,
                headers={"User-Agent": "sluiceway-image-fetcher", "Accept": "image/*"},
            )
        return self._session

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        """The downloader configured by the ``SLUICEWAY_FETCH_*`` settings."""
        return cls(
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_bytes=settings.fetch_max_bytes,
            concurrency=settings.fetch_concurrency,
            per_host=settings.fetch_per_host,
            per_request=settings.fetch_per_request,
            max_redirects=settings.fetch_max_redirects,
            allow=AllowList.parse(settings.fetch_allow_hosts),
        )

    def share(self) -> Share:
        """A new request's share of the slots: pass it to each of that request's ``fetch``."""
        return Share(self.per_request)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str, share: Share | None = None) -> bytes:
        """The bytes of the image at ``url``, or ``FetchError`` saying why not.

        With a ``share``, the download first waits for one of its request's slots: for the
        request's own other downloads, each bounded by the timeout (and the whole wait by the
        request's deadline, which its caller keeps).
        """
        if share is None:
            return await self._fetch(url)
        await share.acquire()
        try:
            return await self._fetch(url)
        finally:
            share.release()

    async def _fetch(self, url: str) -> bytes:
        waiting: list[str] = []  # the host whose slot we wait for, while we wait
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, waiting)
        except aiohttp.ServerTimeoutError:  # aiohttp's connect or read timeout
            raise FetchError(f"download timed out (limit {self.timeout_s:g} s)") from None
        except TimeoutError:
            if waiting:
                raise FetchError(
                    f"no download slot for {waiting[0]} came free within {self.timeout_s:g} s"
                    " (its downloads are at their cap)"
                ) from None
            raise FetchError(f"download took longer than {self.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as error:
            raise FetchError(f"download failed: {error or type(error).__name__}") from None

    async def _follow(self, url: str, waiting: list[str]) -> bytes:
        current = _parse(url)
        for _ in range(self.max_redirects + 1):
            host, port = _host_of(current), _port_of(current)
            address = await self.check(current)
            waiting[:] = [host]
            async with self._slot(host_key(address)):
                waiting.clear()
                with _pinned(host, port, address):
                    target = URL(str(current), encoded=True)  # already encoded by httpx
                    async with self._client().get(target, allow_redirects=False) as response:
                        if response.status in _REDIRECTS and "location" in response.headers:
                            current = _parse(str(current.join(response.headers["location"])))
                            continue
                        if response.status != 200:
                            raise FetchError(f"server answered HTTP {response.status}")
                        return await self._read(response)
        raise FetchError(f"more than {self.max_redirects} redirects")

    @asynccontextmanager
    async def _slot(self, key: str) -> AsyncIterator[None]:
        """The remote host's slot, then a process slot: waiting on a busy host holds none of
        the process's slots."""
        async with self._hosts.slot(key), self._slots:
            yield

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"image is {declared} bytes; at most {self.max_bytes} are accepted")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            if not chunks and chunk and sniff(chunk) is None and len(chunk) >= 12:
                raise FetchError(
                    "not an image: the URL's bytes are not JPEG, PNG, GIF, WebP or BMP"
                )
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"image is over {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def check(self, url: httpx.URL) -> IPAddress:
        """The address to connect to for ``url``, or ``FetchError`` if any address the host
        resolves to is non-public and not allowed on that port."""
        host, port = _host_of(url), _port_of(url)
        addresses = await self._resolve(host, port)
        if not addresses:
            raise FetchError(f"cannot resolve host {host!r}: no addresses")
        if self.allow.allows_host(host, port):
            return addresses[0]
        for address in addresses:
            if is_public(address) or self.allow.allows(address, port):
                continue
            listed = host if host in self.allow.hosts else address
            if host in self.allow.hosts or self.allow.allows(address, None):
                raise FetchError(
                    f"refusing to fetch from {host}:{port}: the allow-list names {listed} "
                    f"but not port {port}"
                )
            raise FetchError(
                f"refusing to fetch from {host}: it resolves to non-public address {address}"
            )
        return addresses[0]


def _host_of(url: httpx.URL) -> str:
    """The host as the connection pool sees it (IDNA-encoded, lower case, no brackets)."""
    return url.raw_host.decode("ascii").lower().strip("[]")


def _port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise FetchError(f"not a valid URL: {error}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs can be fetched, not {parsed.scheme!r}")
    if not parsed.host:
        raise FetchError("URL has no host")
    return parsed


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (itself, if it is an address), in a stable order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(f"cannot resolve host {host!r}: {error}") from None
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return sorted(addresses, key=lambda address: (address.version, str(address)))
