"""A response's head and body leave in one write (``sluiceway.edge_writes``), on a real socket.

Each test runs uvicorn with ``EdgeProtocol`` in the test's own event loop, serving a small ASGI
app that answers the way the test needs, and records every call the request cycle makes on
the connection's transport; the client speaks raw HTTP/1.1, since what matters is what
arrives, complete and in order, and that nothing held back is ever left unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from sluiceway.edge import EdgeProtocol
from tests.test_edge import read_response, read_until_closed

_HANG_S = 20.0


class _Recorder:
    """The real transport, with each write and writelines call recorded."""

    def __init__(self, transport: asyncio.Transport, calls: list[tuple[str, bytes]]) -> None:
        self._transport = transport
        self._calls = calls

    def write(self, data: bytes) -> None:
        self._calls.append(("write", bytes(data)))
        self._transport.write(data)

    def writelines(self, pieces: Any) -> None:
        pieces = [bytes(piece) for piece in pieces]
        self._calls.append(("writelines", b"".join(pieces)))
        self._transport.writelines(pieces)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.asynccontextmanager
async def server(app: Any) -> AsyncIterator[tuple[int, list[tuple[str, bytes]]]]:
    """Serve ``app`` through ``EdgeProtocol``; yield the port and the recorded transport calls."""
    calls: list[tuple[str, bytes]] = []

    class Recorded(EdgeProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_Recorder(transport, calls))  # type: ignore[arg-type]

    config = uvicorn.Config(app, http=Recorded, log_config=None, lifespan="off")
    uvicorn_server = uvicorn.Server(config)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    task = asyncio.create_task(uvicorn_server.serve(sockets=[listener]))
    try:
        while not uvicorn_server.started:
            assert not task.done(), "the server stopped while starting"
            await asyncio.sleep(0.01)
        yield listener.getsockname()[1], calls
    finally:
        uvicorn_server.should_exit = True
        await task
        listener.close()


def answer(body: bytes, *, length: bool = True, status: int = 200) -> Any:
    """An app answering ``body`` whole, with or without a ``Content-Length``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"%d" % len(body))] if length else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await read_response(reader)
    finally:
        writer.close()


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_small_answer_leaves_in_one_call_head_first() -> None:
    async with server(answer(b"0123456789")) as (port, calls):
        status, headers, body = await exchange(port, GET)
    assert (status, headers["content-length"], body) == (200, "10", b"0123456789")
    assert len(calls) == 1, calls
    kind, sent = calls[0]
    assert kind == "writelines"
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent.endswith(b"\r\n\r\n0123456789")


async def test_answers_on_one_connection_each_leave_whole_and_in_order() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = scope["path"].encode()
        await answer(body)(scope, receive, send)

    async with server(app) as (port, calls):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Pipelined: the second request waits for the first answer to end.
        writer.write(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n")
        first = await read_response(reader)
        second = await read_response(reader)
        writer.close()
    assert [first[2], second[2]] == [b"/one", b"/second"]
    # Written in order; the first answer, written while the second request was already
    # parsed, goes unheld (the edge only holds the current cycle's head).
    sent = b"".join(data for _, data in calls)
    assert sent.index(b"/one") < sent.index(b"HTTP/1.1", 1) < sent.index(b"/second")
    assert calls[-1][0] == "writelines"


async def test_a_head_request_gets_its_head_although_no_body_is_written() -> None:
    async with server(answer(b"0123456789")) as (port, calls):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HANG_S)
        # The connection is still good for the next request.
        writer.write(GET)
        status, _, body = await read_response(reader)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 10\r\n" in head
    assert (status, body) == (200, b"0123456789")
    assert calls[0] == ("write", head)


async def test_an_empty_or_chunked_answer_is_not_held() -> None:
    async with server(answer(b"", status=204)) as (port, calls):
        status, _, body = await exchange(port, GET)
    assert (status, body) == (204, b"")
    assert calls[0][0] == "write" and calls[0][1].startswith(b"HTTP/1.1 204")  # not held

    async with server(answer(b"streamed", length=False)) as (port, calls):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        raw = await read_until_closed(reader)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in raw
    assert raw.endswith(b"\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n")
    assert calls[0][0] == "write"  # the head went at once


async def test_a_head_held_is_sent_before_the_connection_closes_on_an_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise RuntimeError("the app failed after its head")

    async with server(app) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        raw = await read_until_closed(reader)
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"content-length: 10\r\n\r\n")


async def test_a_body_in_parts_follows_the_head_in_order() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"6")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"def"})

    async with server(app) as (port, calls):
        status, _, body = await exchange(port, GET)
    assert (status, body) == (200, b"abcdef")
    assert [kind for kind, _ in calls] == ["writelines", "write"]
    assert calls[1] == ("write", b"def")


async def test_100_continue_goes_out_before_the_answer() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        await answer(message["body"])(scope, receive, send)

    async with server(app) as (port, calls):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HANG_S)
        writer.write(b"ping")
        status, _, body = await read_response(reader)
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (status, body) == (200, b"ping")
    assert [kind for kind, _ in calls] == ["write", "writelines"]
