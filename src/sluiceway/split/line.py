"""A pipelined Redis connection for split mode's hot paths: jobs out, answers back.

Every request in split mode crosses Redis twice: the API node's admission, then the worker's
answer. On those paths redis-py's asyncio client costs more than Redis does: its command layer
(pool checkout, retry wrapper, observability hooks) took ~100 µs of a cold event loop per
command before the bytes were even written, and its Pub/Sub reader another ~35-100 µs per
message (a per-job timestamp trace; see ``deploy/README.md``). Those two legs
were most of what the broker hop added beyond Redis itself.

``RedisLine`` is the thin alternative: an ``asyncio.Protocol`` that writes packed commands the
moment they are sent and hands hiredis-parsed replies to futures in order, from the transport's
callback, so no task wakes per reply and commands pipeline freely. A subscriber line hands every
reply to a callback instead. Connection set-up reuses redis-py's URL parsing; everything off the
hot path (membership, claims, script loading) stays on redis-py.

A command cancelled by its caller's timeout leaves the line usable: its reply is read and
dropped when it comes. When the connection is lost, every pending command fails with
``redis.exceptions.ConnectionError`` (one of ``BROKER_ERRORS``) and the line stays closed;
callers open a new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sluiceway.split.pauses import within

_MAX_UNSENT_BYTES = 64 * 1024 * 1024
"""Bytes waiting in the transport beyond which Redis counts as stalled (a send fails)."""


def pack(*args: str | bytes | int | float) -> bytes:
    """One command in RESP, as hiredis packs it."""
    # hiredis's stubs type the argument as a one-element tuple; it takes any number.
    return bytes(hiredis.pack_command(cast(Any, args)))


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS settings a ``rediss://`` URL asks for, read as redis-py reads them
    (``ssl_ca_certs``, ``ssl_cert_reqs`` none/optional/required, ``ssl_check_hostname``), so
    both clients of a node connect alike; ``None`` for plain connections."""
    options = parse_url(url)
    if options.get("connection_class") is not SSLConnection:
        return None
    authority = options.get("ssl_ca_certs")
    context = ssl.create_default_context(cafile=str(authority) if authority else None)
    required = str(options.get("ssl_cert_reqs") or "required").lower()
    if options.get("ssl_check_hostname") is False or required == "none":
        context.check_hostname = False
    if required == "none":
        context.verify_mode = ssl.CERT_NONE
    elif required == "optional":
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _Pending:
    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []


class RedisLine(asyncio.Protocol):
    """One Redis connection: packed commands in, their replies (or pushes) out, in order."""

    def __init__(self, on_push: Callable[[Any], None] | None = None) -> None:
        self._on_push = on_push
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client_id: int | None = None
        """Redis's id of this connection (for ``CLIENT UNBLOCK``)."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        on_push: Callable[[Any], None] | None = None,
        timeout_s: float = 1.0,
    ) -> RedisLine:
        """Connect to ``url`` (``redis://``, ``rediss://`` or ``unix://``), authenticate, select
        the database and learn the connection's id; raise ``BROKER_ERRORS`` if Redis is not there.

        ``on_push``: make this a subscriber line that hands every reply to the callback, once the
        set-up commands have been answered.
        """
        line = cls()
        try:
            # Timed in this process's running time, as a stall is (``pauses.py``).
            replies = await within(line._set_up(url), timeout_s)
        except BaseException:
            line.close()
            raise
        errors = [reply for reply in replies if isinstance(reply, ResponseError)]
        if errors:
            line.close()
            raise RedisConnectionError(f"Redis refused the connection set-up: {errors[0]}")
        line.client_id = int(replies[-1])
        line._on_push = on_push
        return line

    async def _set_up(self, url: str) -> list[Any]:
        """Connect, authenticate, select the database; the replies, the connection's id last."""
        options = parse_url(url)
        loop = asyncio.get_running_loop()
        if "path" in options:
            await loop.create_unix_connection(lambda: self, options["path"])
        else:
            await loop.create_connection(
                lambda: self,
                options.get("host", "localhost"),
                int(options.get("port", 6379)),
                ssl=tls_context(url),
            )
        setup: list[bytes] = []
        if options.get("password") is not None:
            user = options.get("username")
            credentials = [user, options["password"]] if user else [options["password"]]
            setup.append(pack("AUTH", *credentials))
        if int(options.get("db", 0)):
            setup.append(pack("SELECT", int(options["db"])))
        setup.append(pack("CLIENT", "ID"))
        return await self.send(b"".join(setup), len(setup))

    # What callers use.

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write ``count`` packed commands now; the future gets their replies, in order.

        Error replies come back as ``ResponseError`` values, not raised: one failed command
        in a pipeline does not hide what the others did.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        transport = self._transport
        if transport is None or transport.is_closing():
            future.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return future
        if transport.get_write_buffer_size() > _MAX_UNSENT_BYTES:
            future.set_exception(RedisConnectionError("Redis is not reading its connection"))
            return future
        self._pending.append(_Pending(future, count))
        transport.write(packed)
        return future

    def write(self, packed: bytes) -> None:
        """Write commands whose replies come as pushes (``SUBSCRIBE`` on a subscriber line)."""
        if self._transport is None or self._transport.is_closing():
            raise RedisConnectionError("the connection to Redis is closed")
        self._transport.write(packed)

    async def call(self, *args: str | bytes | int | float) -> Any:
        """One command's reply; an error reply is raised."""
        (reply,) = await self.send(pack(*args), 1)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    @property
    def connected(self) -> bool:
        """Connected and not lost."""
        return self._transport is not None and not self._lost.done()

    async def wait_lost(self) -> None:
        """Return when the connection is lost or closed."""
        await asyncio.shield(self._lost)

    def close(self) -> None:
        """Drop the connection; pending commands fail."""
        if self._transport is not None:
            self._transport.close()
        self._fail(RedisConnectionError("the connection to Redis was closed"))

    # asyncio.Protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, though they are one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if self._on_push is not None:
                self._on_push(reply)
                continue
            if not self._pending:  # a reply nobody asked for: the stream is out of step
                self._transport_lost(RedisConnectionError("unexpected reply from Redis"))
                return
            head = self._pending[0]
            head.replies.append(reply)
            head.left -= 1
            if head.left == 0:
                self._pending.popleft()
                if not head.future.done():  # its caller may have given up meanwhile
                    head.future.set_result(head.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"lost the connection to Redis{reason}"))

    def _transport_lost(self, error: Exception) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(error)
        if not self._lost.done():
            self._lost.set_result(None)
