"""Image downloads: every failure mode against a local server, each with its own message."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from sluiceway.inputs.addresses import AllowList, IPAddress, host_key, is_public
from sluiceway.inputs.fetch import FetchError, ImageFetcher
from tests.fixtures.fileserver import FileServer
from tests.fixtures.images import encoded, gradient_photo

LOCAL = AllowList.parse("127.0.0.0/8:*")
PHOTO = encoded(gradient_photo(seed=1), "JPEG")  # what photos_server serves as photo.jpg


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
    port = photos_server.base.rsplit(":", 1)[1]
    fetcher = ImageFetcher(allow=AllowList.parse([f"localhost:{port}"]))
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


def test_allow_list_entries_carry_their_ports() -> None:
    allow = AllowList.parse(
        " images.internal, 10.0.0.0/8:8080 ,127.0.0.1:*, [::1]:9000, cdn.internal:8443,"
    )
    ip = ipaddress.ip_address
    assert allow.allows_host("images.internal", 80) and allow.allows_host("images.internal", 443)
    assert not allow.allows_host("images.internal", 8000), "no port: 80 and 443 only"
    assert allow.allows_host("cdn.internal", 8443) and not allow.allows_host("cdn.internal", 443)
    assert allow.allows(ip("10.9.8.7"), 8080) and not allow.allows(ip("10.9.8.7"), 80)
    assert not allow.allows(ip("11.0.0.1"), 8080)
    assert allow.allows(ip("127.0.0.1"), 1) and allow.allows(ip("127.0.0.1"), 65535)
    assert allow.allows(ip("::1"), 9000) and not allow.allows(ip("::1"), 8000)


@pytest.mark.parametrize("entry", ["127.0.0.1:http", "127.0.0.1:0", "host:70000", ":80"])
def test_a_bad_allow_list_entry_is_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        AllowList.parse(entry)


def test_public_addresses() -> None:
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    assert not is_public(ipaddress.ip_address("100.64.0.1"))  # carrier-grade NAT
    assert not is_public(ipaddress.ip_address("224.0.0.1"))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:0:7f00:1", False),  # IPv4-translated (SIIT)
        ("64:ff9b::7f00:1", False),  # NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to the cloud metadata address
        ("64:ff9b:1::1", False),  # NAT64 local-use prefix
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:c0a8:1::1", False),  # 6to4 of 192.168.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo, client 192.0.2.45
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::ffff:8.8.8.8", True),
        ("2a00:1450:4001:81c::200e", True),
    ],
)
def test_ipv4_inside_ipv6_is_judged_by_the_ipv4_it_carries(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]",
        "[::ffff:0:7f00:1]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2002:7f00:1::]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",
        "2130706433",  # 127.0.0.1 as one number
        "0x7f.1",
        "127.1",
    ],
)
async def test_every_spelling_of_a_private_address_is_refused_before_connecting(
    host: str,
) -> None:
    strict = ImageFetcher(allow=AllowList())
    try:
        with pytest.raises(FetchError, match=r"non-public address|cannot resolve|not a valid URL"):
            await strict.fetch(f"http://{host}:9/x.jpg")
    finally:
        await strict.aclose()


async def test_an_allowed_host_is_allowed_on_its_port_only(photos_server: FileServer) -> None:
    # The trial: a redirect from an allow-listed host to another port of the same
    # machine (our own /metrics) was fetched. Now the port must be listed too.
    port = photos_server.base.rsplit(":", 1)[1]
    with FileServer({"metrics": b"\x89PNG\r\n\x1a\n secret metrics"}) as other:
        other_port = other.base.rsplit(":", 1)[1]
        fetcher = ImageFetcher(allow=AllowList.parse(f"127.0.0.1:{port}"))
        try:
            assert await fetcher.fetch(photos_server.url("files/photo.jpg")) == PHOTO
            for target in (f"localhost:{other_port}", f"127.0.0.1:{other_port}"):
                with pytest.raises(
                    FetchError, match=rf"names 127\.0\.0\.1 but not port {other_port}"
                ):
                    await fetcher.fetch(photos_server.url(f"redirect-to/{target}/files/metrics"))
            with pytest.raises(FetchError, match=f"not port {other_port}"):
                await fetcher.fetch(other.url("files/metrics"))
            assert other.hits["/files/metrics"] == 0
        finally:
            await fetcher.aclose()


async def test_a_bare_allow_list_entry_means_ports_80_and_443(photos_server: FileServer) -> None:
    fetcher = ImageFetcher(allow=AllowList.parse("127.0.0.1"))
    try:
        with pytest.raises(FetchError, match=r"names 127\.0\.0\.1 but not port"):
            await fetcher.fetch(photos_server.url("files/photo.jpg"))
    finally:
        await fetcher.aclose()


async def test_the_connection_goes_to_the_checked_address(photos_server: FileServer) -> None:
    # DNS rebinding: the check's answer must be the one connected to. ``.test`` names never
    # resolve in real DNS, so if anything resolved the host again at connect, this would fail.
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    fetcher = ImageFetcher(allow=LOCAL, resolve=resolve)
    try:
        url = photos_server.url("redirect/2/photo.jpg").replace("127.0.0.1", "images.test")
        assert await fetcher.fetch(url) == PHOTO
        assert asked == ["images.test"] * 3, "one resolution per hop, none at connect"
    finally:
        await fetcher.aclose()


async def test_a_rebinding_answer_is_checked_not_trusted() -> None:
    # The name first resolves to an allowed address, then to a private one: the second answer
    # is checked and refused, and nothing connects to it.
    answers = iter(["127.0.0.2", "127.0.0.1"])

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(next(answers))]

    with FileServer({"photo.jpg": PHOTO}, host="127.0.0.2") as allowed:
        port = int(allowed.base.rsplit(":", 1)[1])
        with FileServer({"photo.jpg": PHOTO}, host="127.0.0.1", port=port) as private:
            fetcher = ImageFetcher(allow=AllowList.parse("127.0.0.2:*"), resolve=resolve)
            try:
                url = f"http://images.test:{port}/files/photo.jpg"
                assert await fetcher.fetch(url) == PHOTO
                with pytest.raises(FetchError, match=r"non-public address 127\.0\.0\.1"):
                    await fetcher.fetch(url)
            finally:
                await fetcher.aclose()
            assert allowed.hits["/files/photo.jpg"] == 1
            assert private.hits["/files/photo.jpg"] == 0


def test_an_ipv6_host_is_one_slash_64() -> None:
    ip = ipaddress.ip_address
    assert host_key(ip("2001:db8:1:2::1")) == host_key(ip("2001:db8:1:2:ffff::9"))
    assert host_key(ip("2001:db8:1:2::1")) != host_key(ip("2001:db8:1:3::1"))
    assert host_key(ip("::ffff:8.8.8.8")) == host_key(ip("8.8.8.8"))


@pytest.fixture
def slow_host() -> Iterator[FileServer]:
    """Another remote host (127.0.0.2) that sends one byte, then waits to be released."""
    with FileServer({"photo.jpg": PHOTO}, host="127.0.0.2") as server:
        yield server


async def wait_until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_slow_host_holds_its_cap_while_others_download(
    photos_server: FileServer, slow_host: FileServer
) -> None:
    # The trial: ten requests naming a server that trickles bytes held every slot of
    # the process, and an ordinary bird request waited 29.5 s. Here the process has 4 slots
    # and a host 2: the slow host's ten downloads hold 2, and an ordinary one goes through.
    fetcher = ImageFetcher(concurrency=4, per_host=2, timeout_s=30, allow=LOCAL)
    try:
        slow = [
            asyncio.create_task(fetcher.fetch(slow_host.url("held/photo.jpg"))) for _ in range(10)
        ]
        await wait_until(lambda: slow_host.holding == 2, "the slow host holds its cap")
        for _ in range(3):  # more than the process's free slots, one after another
            ordinary = await asyncio.wait_for(
                fetcher.fetch(photos_server.url("files/photo.jpg")), 10
            )
            assert ordinary == PHOTO
        assert not any(task.done() for task in slow), "the slow host's downloads are still held"
        assert slow_host.most_held == 2
        slow_host.release()
        assert await asyncio.gather(*slow) == [PHOTO] * 10
        assert slow_host.most_held == 2, "never more than its cap at once"
    finally:
        slow_host.release()
        await fetcher.aclose()


async def test_one_request_holds_at_most_its_share(slow_host: FileServer) -> None:
    fetcher = ImageFetcher(concurrency=32, per_host=32, per_request=3, timeout_s=30, allow=LOCAL)
    try:
        share = fetcher.share()
        held = [
            asyncio.create_task(fetcher.fetch(slow_host.url("held/photo.jpg"), share))
            for _ in range(8)
        ]
        await wait_until(lambda: slow_host.holding == 3, "the request holds its share")
        other = asyncio.create_task(fetcher.fetch(slow_host.url("held/photo.jpg"), fetcher.share()))
        await wait_until(lambda: slow_host.holding == 4, "another request gets its own slot")
        slow_host.release()
        assert await asyncio.gather(*held, other) == [PHOTO] * 9
        assert slow_host.most_held == 4
    finally:
        slow_host.release()
        await fetcher.aclose()


async def test_waiting_for_a_busy_host_is_bounded_and_says_so(slow_host: FileServer) -> None:
    fetcher = ImageFetcher(per_host=1, timeout_s=30, allow=LOCAL)
    try:
        first = asyncio.create_task(fetcher.fetch(slow_host.url("held/photo.jpg")))
        await wait_until(lambda: slow_host.holding == 1, "the host is busy")
        fetcher.timeout_s = 0.2  # the next download's bound; the first keeps its 30 s
        with pytest.raises(FetchError, match=r"no download slot for 127\.0\.0\.2 came free"):
            await fetcher.fetch(slow_host.url("held/photo.jpg"))
        assert slow_host.holding == 1 and not first.done()
        slow_host.release()
        assert await first == PHOTO
    finally:
        slow_host.release()
        await fetcher.aclose()


async def test_a_proxy_from_the_environment_is_not_used(
    photos_server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would resolve the host itself, past the address check: downloads go direct.
    with FileServer({"photo.jpg": b"\x89PNG\r\n\x1a\n from the proxy"}) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        fetcher = ImageFetcher(allow=LOCAL)
        try:
            assert await fetcher.fetch(photos_server.url("files/photo.jpg")) == PHOTO
        finally:
            await fetcher.aclose()
        assert sum(proxy.hits.values()) == 0
