"""Image downloads: every failure mode against a local server, each with its own message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sluiceway.inputs.fetch import AllowList, FetchError, ImageFetcher, is_public
from tests.fixtures.fileserver import FileServer

LOCAL = AllowList.parse("127.0.0.1")


@pytest.fixture
async def fetcher() -> AsyncIterator[ImageFetcher]:
    fetcher = ImageFetcher(timeout_s=1.0, max_bytes=1024 * 1024, max_redirects=3, allow=LOCAL)
    yield fetcher
    await fetcher.aclose()


async def test_downloads_an_image(fetcher: ImageFetcher, photos_server: FileServer) -> None:
    data = await fetcher.fetch(photos_server.url("files/photo.jpg"))
    assert data == photos_server.files["photo.jpg"]


async def test_follows_a_few_redirects(fetcher: ImageFetcher, photos_server: FileServer) -> None:
    data = await fetcher.fetch(photos_server.url("redirect/3/photo2.jpg"))
    assert data == photos_server.files["photo2.jpg"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("status/404", "HTTP 404"),
        ("status/500", "HTTP 500"),
        ("redirect-loop", "more than 3 redirects"),
        ("redirect/4/photo.jpg", "more than 3 redirects"),
        ("files/notes.txt", "not an image"),
        ("endless", "over 1048576 bytes"),
    ],
)
async def test_failures_say_what_went_wrong(
    fetcher: ImageFetcher, photos_server: FileServer, path: str, message: str
) -> None:
    with pytest.raises(FetchError, match=message):
        await fetcher.fetch(photos_server.url(path))


async def test_declared_oversize_is_refused_before_reading(photos_server: FileServer) -> None:
    small = ImageFetcher(max_bytes=1000, allow=LOCAL)
    try:
        size = len(photos_server.files["photo.jpg"])
        with pytest.raises(FetchError, match=f"{size} bytes; at most 1000"):
            await small.fetch(photos_server.url("files/photo.jpg"))
    finally:
        await small.aclose()


async def test_a_stalled_server_times_out(fetcher: ImageFetcher, photos_server: FileServer) -> None:
    started = time.perf_counter()
    with pytest.raises(FetchError, match=r"timed out|longer than"):
        await fetcher.fetch(photos_server.url("stall"))
    assert time.perf_counter() - started < 3


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.jpg",
        "http://localhost:9/x.jpg",
        "http://10.1.2.3/x.jpg",
        "http://192.168.0.1/x.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/x.jpg",
        "http://[::ffff:127.0.0.1]:9/x.jpg",
        "http://0.0.0.0/x.jpg",
    ],
)
async def test_private_addresses_are_refused(url: str) -> None:
    strict = ImageFetcher(allow=AllowList())
    try:
        with pytest.raises(FetchError, match="non-public address"):
            await strict.fetch(url)
    finally:
        await strict.aclose()


async def test_a_redirect_to_a_private_address_is_refused(photos_server: FileServer) -> None:
    # The first hop is allowed by name; the redirect target's address is re-checked.
    fetcher = ImageFetcher(allow=AllowList.parse(["localhost"]))
    try:
        url = photos_server.url("redirect-to/127.0.0.1/files/photo.jpg").replace(
            "127.0.0.1", "localhost", 1
        )
        with pytest.raises(FetchError, match=r"non-public address 127\.0\.0\.1"):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://example.com/x.jpg", "only http and https"), ("http:///x.jpg", "no host")],
)
async def test_unfetchable_urls(fetcher: ImageFetcher, url: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        await fetcher.fetch(url)


async def test_concurrency_is_bounded(photos_server: FileServer) -> None:
    fetcher = ImageFetcher(concurrency=2, allow=LOCAL)
    try:
        urls = [photos_server.url("files/photo.jpg")] * 6
        results = await asyncio.gather(*(fetcher.fetch(url) for url in urls))
        assert len(set(results)) == 1
    finally:
        await fetcher.aclose()


def test_allow_list_parses_hosts_ips_and_networks() -> None:
    allow = AllowList.parse(" images.internal, 10.0.0.0/8 ,127.0.0.1,")
    assert "images.internal" in allow.hosts
    assert allow.allows(__import__("ipaddress").ip_address("10.9.8.7"))
    assert not allow.allows(__import__("ipaddress").ip_address("11.0.0.1"))


def test_public_addresses() -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert not is_public(ipaddress.ip_address("100.64.0.1"))  # carrier-grade NAT
    assert not is_public(ipaddress.ip_address("224.0.0.1"))
