"""Downloading images from URLs the caller names, safely and fairly.

One shared connection pool, an end-to-end timeout per image, a size cap enforced while
streaming, the type judged from the first bytes and redirects followed by hand, each hop
checked again. Every failure is a ``FetchError`` (a ``BadInput``) whose message says what went
wrong.

Addresses: a host is resolved once per hop, every address it resolves to must be public or
allowed on that port (``addresses.py``), and the connection goes to the checked address: the
pool's resolver answers only with the address this module pinned for the host
(``pinning.py``), so a DNS answer that changes between check and connect (DNS rebinding) is
never used. TLS still verifies the certificate against the host name.

The client is aiohttp's (its HTTP parser is C): httpx with httpcore spent ~1.6 ms of CPU per
downloaded photo at 16-32 downloads in flight, much of it its pool probing every idle
connection's socket on each request; this fetcher, every check included, spends ~0.3 ms
(``bench/fetch``). URLs are still parsed and joined with httpx's ``URL`` (the messages for a
bad URL stay the same).

Fairness: downloads in flight are bounded per process, per remote host and per request
(``download_slots.py``). Waiting for a slot is bounded by the download timeout too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import certifi
import httpx
from yarl import URL

from sluiceway.config import Settings
from sluiceway.errors import BadInput
from sluiceway.inputs.addresses import AllowList, IPAddress, host_key, is_public
from sluiceway.inputs.download_slots import HostGates, Share
from sluiceway.inputs.images import sniff
from sluiceway.inputs.pinning import PinnedResolver, pinned

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(BadInput):
    """An image URL could not be downloaded; the message says why."""


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
        self._hosts = HostGates(min(per_host, concurrency))
        self._concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The shared session, made on first use: aiohttp binds it to the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._concurrency,
                resolver=PinnedResolver(),
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
                with pinned(host, port, address):
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
