"""Downloading images from URLs the caller names, safely.

One shared connection pool, a bound on downloads in flight, an end-to-end timeout per image, a
size cap enforced while streaming, the type judged from the first bytes, redirects followed by
hand (each hop re-checked) and a refusal to reach private, loopback, link-local or otherwise
non-public addresses unless the allow-list names them. Every failure is a ``FetchError`` (a
``BadInput``) whose message says what went wrong.

Known gap: the address check resolves the host, then httpx resolves it again to connect, so a
DNS server that answers differently within that window (DNS rebinding) is not caught.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from sluiceway.config import Settings
from sluiceway.inputs.images import sniff
from sluiceway.runtime.errors import BadInput

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(BadInput):
    """An image URL could not be downloaded; the message says why."""


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and networks exempt from the private-address ban."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> AllowList:
        """From ``"127.0.0.1, 10.0.0.0/8, images.internal"`` (hosts, IPs or CIDRs)."""
        items = text.split(",") if isinstance(text, str) else list(text)
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in items:
            item = raw.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.strip("[]"))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable (not private, loopback, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class ImageFetcher:
    """Downloads images over one shared connection pool. Close it with ``aclose``."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        max_bytes: int = 10 * 1024 * 1024,
        concurrency: int = 32,
        max_redirects: int = 5,
        allow: AllowList | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.allow = allow or AllowList()
        self._slots = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            headers={"User-Agent": "sluiceway-image-fetcher", "Accept": "image/*"},
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        """The downloader configured by the ``SLUICEWAY_FETCH_*`` settings."""
        return cls(
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_bytes=settings.fetch_max_bytes,
            concurrency=settings.fetch_concurrency,
            max_redirects=settings.fetch_max_redirects,
            allow=AllowList.parse(settings.fetch_allow_hosts),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The bytes of the image at ``url``, or ``FetchError`` saying why not."""
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._follow(url)
            except TimeoutError:
                raise FetchError(f"download took longer than {self.timeout_s:g} s") from None
            except httpx.TimeoutException:
                raise FetchError(f"download timed out (limit {self.timeout_s:g} s)") from None
            except httpx.HTTPError as error:
                raise FetchError(f"download failed: {error or type(error).__name__}") from None

    async def _follow(self, url: str) -> bytes:
        current = _parse(url)
        for _ in range(self.max_redirects + 1):
            await self.check(current)
            async with self._client.stream("GET", current) as response:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    current = _parse(str(current.join(response.headers["location"])))
                    continue
                if response.status_code != 200:
                    raise FetchError(f"server answered HTTP {response.status_code}")
                return await self._read(response)
        raise FetchError(f"more than {self.max_redirects} redirects")

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"image is {declared} bytes; at most {self.max_bytes} are accepted")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            if not chunks and chunk and sniff(chunk) is None and len(chunk) >= 12:
                raise FetchError(
                    "not an image: the URL's bytes are not JPEG, PNG, GIF, WebP or BMP"
                )
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"image is over {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def check(self, url: httpx.URL) -> None:
        """Refuse a URL whose host resolves to any non-public address not on the allow-list."""
        host = url.host.lower()
        if host in self.allow.hosts:
            return
        for address in await _resolve(host, url.port or (443 if url.scheme == "https" else 80)):
            if not is_public(address) and not self.allow.allows(address):
                raise FetchError(
                    f"refusing to fetch from {host}: it resolves to non-public address {address}"
                )


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


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(f"cannot resolve host {host!r}: {error}") from None
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return sorted(addresses, key=str)
