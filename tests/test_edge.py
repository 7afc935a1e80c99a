"""The HTTP edge (``sluiceway.edge``) on a real socket: limits answered the way HTTP says.

Each test runs uvicorn with ``EdgeProtocol`` in the test's own event loop, on a loopback port,
and speaks raw HTTP/1.1 to it, since what is tested is what a client sees on the wire. Limits
are shrunk so the tests take milliseconds; ``_HANG_S`` only guards against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator

import uvicorn

from sluiceway.app import create_app
from sluiceway.edge import EdgeProtocol
from tests.conftest import fast_settings

_HANG_S = 20.0
KIOSK_BODY = (
    b'{"training_data": {"training_data": [[1, 2, 0], [2, 3, 1], [3, 4, 1], [-5, -5, 2]]},'
    b' "query_input": {"query_input": [2, 3]}}'
)


_SERVERS: dict[int, uvicorn.Server] = {}


async def until(port: int, connections: int = 0, requests: int = 0) -> None:
    """Wait until the server on ``port`` holds this many connections and requests in flight."""
    state = _SERVERS[port].server_state
    async with asyncio.timeout(_HANG_S):
        while len(state.connections) < connections or len(state.tasks) < requests:  # noqa: ASYNC110 (uvicorn offers no event)
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def edge_server(**settings: object) -> AsyncIterator[int]:
    """Serve ``create_app`` through ``EdgeProtocol`` on a free loopback port; yield the port."""
    app = create_app(fast_settings(**settings))
    config = uvicorn.Config(app, http=EdgeProtocol, log_config=None, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            assert not task.done(), "the server stopped while starting"
            await asyncio.sleep(0.01)
        _SERVERS[port] = server
        yield port
    finally:
        _SERVERS.pop(port, None)
        server.should_exit = True
        await task
        listener.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    with contextlib.suppress(ConnectionError):  # a reset once it has all been read
        while chunk := await asyncio.wait_for(reader.read(65536), _HANG_S):
            chunks.append(chunk)
    return b"".join(chunks)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body: status, headers (lower-case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HANG_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await connect(port)
    writer.write(raw)
    try:
        return await read_response(reader)
    finally:
        writer.close()


async def scrape(port: int) -> str:
    status, _, body = await request(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200
    return body.decode()


def counted(metrics: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_an_ordinary_request_and_keep_alive_pass_the_edge() -> None:
    async with edge_server() as port:
        reader, writer = await connect(port)
        ping = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
        classify = (
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(KIOSK_BODY), KIOSK_BODY)
        )
        for raw, expected in ((ping, b"OK"), (classify, b'{"classification_result":[1]}')):
            writer.write(raw)
            status, _, body = await read_response(reader)
            assert (status, body) == (200, expected)
        writer.close()


async def test_headers_over_the_size_limit_get_431_and_a_closed_connection() -> None:
    async with edge_server(max_header_bytes=4096) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b'{"detail":"request headers over 4096 bytes"}' in answer
        metrics = await scrape(port)
    refused = 'sluiceway_edge_refusals_total{reason="header_too_large",status="431"}'
    assert counted(metrics, refused) == 1


async def test_a_header_flood_in_many_reads_is_cut_off_without_reading_it_all() -> None:
    async with edge_server(max_header_bytes=4096) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Flood: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            # One header that never ends, a chunk at a time: the server must not wait for it.
            for _ in range(2000):  # 64 MB if nobody stops it
                writer.write(b"a" * 32768)
                await writer.drain()
                sent += 32768
                if reader.at_eof() or writer.transport.is_closing():
                    break
                await asyncio.sleep(0)
        # The server closed with the flood unread: the kernel resets the connection and may
        # drop the 431 before the client reads it, so the count tells what was answered.
        answer = await read_until_closed(reader)
        metrics = await scrape(port)
    assert sent < 2000 * 32768
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    refused = 'sluiceway_edge_refusals_total{reason="header_too_large",status="431"}'
    assert counted(metrics, refused) == 1


async def test_too_many_header_fields_get_431() -> None:
    async with edge_server(max_headers=10) as port:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(11))
        status, headers, body = await request(port, b"GET /ping HTTP/1.1\r\n" + fields + b"\r\n")
    assert status == 431
    assert headers["connection"] == "close"
    assert body == b'{"detail":"more than 10 headers"}'


async def test_headers_sent_too_slowly_get_408() -> None:
    async with edge_server(header_timeout_s=0.2) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request headers not received in 0.2 s" in answer
        metrics = await scrape(port)
    assert counted(metrics, 'sluiceway_edge_refusals_total{reason="header_timeout",status="408"}')


async def test_a_loop_late_on_every_turn_still_times_slow_headers_out() -> None:
    # A late timer waits a moment more for reads the loop may not have made (a paused
    # process), but only once: here every turn of the loop is slow, so every timer is late,
    # and the slow client must still get its 408 while that goes on.
    loop = asyncio.get_running_loop()
    hogging = True

    def hog() -> None:
        time.sleep(0.15)  # a turn of an overloaded loop
        if hogging:
            loop.call_soon(hog)

    async with edge_server(header_timeout_s=0.2) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        loop.call_soon(hog)
        try:
            answer = await asyncio.wait_for(reader.read(65536), 5.0)
            still_hogging = hogging
        finally:
            hogging = False
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert still_hogging


async def test_a_connection_that_never_sends_is_closed_without_an_answer() -> None:
    async with edge_server(header_timeout_s=0.2) as port:
        reader, _ = await connect(port)
        assert await read_until_closed(reader) == b""
        metrics = await scrape(port)
    assert counted(
        metrics, 'sluiceway_edge_refusals_total{reason="idle_connection",status="closed"}'
    )


async def test_a_body_that_stops_arriving_gets_408_and_frees_its_handler() -> None:
    async with edge_server(body_timeout_s=0.2) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + KIOSK_BODY[:10]
        )
        answer = await read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request body not received in time (10 bytes in 0 s)" in answer
        metrics = await scrape(port)
    assert counted(metrics, 'sluiceway_edge_refusals_total{reason="body_timeout",status="408"}')
    # The handler saw the connection end and was counted as the 408 it got, not as a 500.
    assert counted(
        metrics, 'sluiceway_requests_total{method="POST",route="/classify",status="408"}'
    )
    assert 'status="500"' not in metrics


async def test_a_slow_body_that_keeps_the_minimum_rate_is_not_cut_off() -> None:
    async with edge_server(body_timeout_s=1.0, body_min_rate=20) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(KIOSK_BODY)
        )
        # Past the 1 s grace in all, but each 15-byte step earns 0.75 s, more than it takes.
        for start in range(0, len(KIOSK_BODY), 15):
            writer.write(KIOSK_BODY[start : start + 15])
            await writer.drain()
            await asyncio.sleep(0.2)
        status, _, body = await read_response(reader)
        writer.close()
    assert (status, body) == (200, b'{"classification_result":[1]}')


async def test_a_body_over_many_reads_and_pauses_arrives_whole() -> None:
    """The edge keeps a body's pieces as reads bring them (several times the 64 KB at which
    reading pauses until the app takes them): the app gets every byte, in order."""
    body = KIOSK_BODY[:-1] + b" " * 300_000 + KIOSK_BODY[-1:]  # JSON allows the padding
    async with edge_server() as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(body), 7001):  # uneven pieces, some split across reads
            writer.write(body[start : start + 7001])
            await writer.drain()
        status, _, answer = await read_response(reader)
        writer.close()
    assert (status, answer) == (200, b'{"classification_result":[1]}')


async def test_connections_over_the_limit_get_503_with_retry_after() -> None:
    async with edge_server(max_connections=2) as port:
        _, first = await connect(port)
        _, second = await connect(port)
        await until(port, connections=2)
        status, headers, body = await request(port, b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        first.close()
        second.close()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body == b'{"detail":"server busy: too many connections"}'


async def test_requests_in_flight_over_the_limit_get_503_with_retry_after() -> None:
    async with edge_server(max_requests=1) as port:
        reader, writer = await connect(port)
        # In flight from its headers on: its handler waits for the rest of the body.
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(KIOSK_BODY) + KIOSK_BODY[:10]
        )
        await until(port, requests=1)
        status, headers, body = await request(port, b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (status, headers["retry-after"]) == (503, "1")
        assert body == b'{"detail":"server busy: too many requests in progress"}'
        writer.write(KIOSK_BODY[10:])
        status, _, _ = await read_response(reader)
        assert status == 200
        writer.close()
        metrics = await scrape(port)
    assert counted(metrics, 'sluiceway_edge_refusals_total{reason="request_limit",status="503"}')


async def test_a_malformed_request_line_gets_400() -> None:
    async with edge_server() as port:
        status, _, body = await request(port, b"GET /ping HTTP/1.1\r\nBad Header\r\n\r\n")
    assert (status, body) == (400, b'{"detail":"invalid HTTP request"}')


async def test_a_big_body_and_the_next_request_in_one_read_are_not_taken_for_a_big_head() -> None:
    async with edge_server(max_header_bytes=4096) as port:
        reader, writer = await connect(port)
        body = KIOSK_BODY + b" " * 6000  # JSON allows the padding; the read is over the limit
        writer.write(
            b"POST /classify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (len(body), body)
            + b"GET /ping HTTP/1.1\r\nHost: t\r\n"  # pipelined, its head not finished yet
        )
        status, _, answer = await read_response(reader)
        assert (status, answer) == (200, b'{"classification_result":[1]}')
        writer.write(b"\r\n")
        status, _, answer = await read_response(reader)
        assert (status, answer) == (200, b"OK")
        writer.close()


async def test_header_injection_attempts_never_reach_a_response_header() -> None:
    async with edge_server() as port:
        # Control characters and bare CR or LF in a value are refused by the parser...
        for value in (b"a\x01b", b"a\x7fb", b"a\rSet-Cookie: x=1"):
            status, _, body = await request(
                port, b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Request-ID: " + value + b"\r\n\r\n"
            )
            assert (status, body) == (400, b'{"detail":"invalid HTTP request"}'), value
        # ...and what it lets through beyond visible ASCII is not echoed as the request id.
        status, headers, body = await request(
            port, b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Request-ID: a\x80\xffb\r\n\r\n"
        )
        assert (status, body) == (200, b"OK")
        assert re.fullmatch(r"[0-9a-f]{16}", headers["x-request-id"])
