"""The pipelined Redis connection of split mode's hot paths, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sluiceway.split.connection import BROKER_ERRORS, connect
from sluiceway.split.line import RedisLine, pack, tls_context
from tests.fixtures.waiting import eventually
from tests.redis_server import RedisServer, free_port


def _key() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_pipelined_commands_get_their_replies_in_order(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    key = _key()
    try:
        first = line.send(pack("SET", key, b"\x00\xff binary") + pack("GET", key), 2)
        # A failing command in the middle comes back as a value; its neighbours still ran.
        second = line.send(pack("INCR", key) + pack("STRLEN", key) + pack("PING"), 3)
        assert await first == [b"OK", b"\x00\xff binary"]
        middle, length, pong = await second
        assert isinstance(middle, ResponseError) and "not an integer" in str(middle)
        assert (length, pong) == (9, b"PONG")
        with pytest.raises(ResponseError, match="unknown command"):
            await line.call("NO-SUCH-COMMAND")
        assert line.client_id is not None and line.connected
    finally:
        line.close()


async def test_a_command_given_up_on_leaves_the_line_in_step(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await line.send(pack("BLPOP", _key(), "0.3"), 1)
        # The BLPOP's nil reply arrives first and is dropped; PING still gets its own.
        assert await line.call("PING") == b"PONG"
    finally:
        line.close()


async def test_a_lost_connection_fails_what_is_pending(redis_server: RedisServer) -> None:
    line = await RedisLine.open(redis_server.url)
    redis = connect(redis_server.url)
    try:
        pending = line.send(pack("BLPOP", _key(), "5"), 1)

        async def blocked() -> bool:  # Redis flags a blocked client "b": the BLPOP waits
            (client,) = await redis.client_list(client_id=[line.client_id])
            return "b" in client["flags"]

        await eventually(blocked)
        await redis.client_kill_filter(_id=line.client_id)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 2)
        await asyncio.wait_for(line.wait_lost(), 1)
        assert not line.connected
        with pytest.raises(RedisConnectionError, match="closed"):
            await line.send(pack("PING"), 1)
    finally:
        line.close()
        await redis.aclose()


async def test_a_subscriber_line_hands_every_push_to_its_callback(
    redis_server: RedisServer,
) -> None:
    pushed: asyncio.Queue[object] = asyncio.Queue()
    line = await RedisLine.open(redis_server.url, on_push=pushed.put_nowait)
    redis = connect(redis_server.url)
    channel = _key()
    try:
        line.write(pack("SUBSCRIBE", channel))
        assert await asyncio.wait_for(pushed.get(), 2) == [b"subscribe", channel.encode(), 1]
        await redis.publish(channel, b"one")
        await redis.publish(channel, b"two")
        for data in (b"one", b"two"):
            assert await asyncio.wait_for(pushed.get(), 2) == [b"message", channel.encode(), data]
    finally:
        line.close()
        await redis.aclose()


async def test_the_url_chooses_the_database(redis_server: RedisServer) -> None:
    line = await RedisLine.open(f"{redis_server.url.rsplit('/', 1)[0]}/3")
    redis = connect(f"{redis_server.url.rsplit('/', 1)[0]}/3")
    key = _key()
    try:
        await line.call("SET", key, "in three")
        assert await redis.get(key) == b"in three"
    finally:
        line.close()
        await redis.delete(key)
        await redis.aclose()


async def test_opening_fails_clearly_when_redis_refuses_or_is_absent(
    redis_server: RedisServer,
) -> None:
    host_port = redis_server.url.split("//", 1)[1].split("/", 1)[0]
    with pytest.raises(RedisConnectionError, match="refused the connection set-up"):
        await RedisLine.open(f"redis://:wrong-password@{host_port}/0")
    with pytest.raises(BROKER_ERRORS):
        await RedisLine.open("redis://127.0.0.1:1/0")


def test_tls_settings_are_read_from_the_url_as_redis_py_reads_them() -> None:
    assert tls_context("redis://127.0.0.1:6379/0") is None
    strict = tls_context("rediss://cache.example:6380/0")
    assert strict is not None
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    relaxed = tls_context("rediss://cache.example:6380/0?ssl_cert_reqs=none")
    assert relaxed is not None
    assert relaxed.verify_mode == ssl.CERT_NONE and not relaxed.check_hostname
    named = tls_context("rediss://10.0.0.5:6380/0?ssl_check_hostname=false")
    assert named is not None
    assert named.verify_mode == ssl.CERT_REQUIRED and not named.check_hostname


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking only TLS, with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(cert), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield port, cert
    finally:
        server.terminate()
        server.wait(10)


async def test_rediss_urls_connect_over_tls_like_redis_py(tls_redis: tuple[int, Path]) -> None:
    port, cert = tls_redis
    trusted = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    line = await RedisLine.open(trusted)
    redis = connect(trusted)
    try:
        await line.call("SET", "over-tls", "yes")
        assert await redis.get("over-tls") == b"yes"
    finally:
        line.close()
        await redis.aclose()
    unchecked = await RedisLine.open(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
    try:
        assert await unchecked.call("PING") == b"PONG"
    finally:
        unchecked.close()
    with pytest.raises(ssl.SSLError):  # a certificate nobody vouched for is refused
        await RedisLine.open(f"rediss://127.0.0.1:{port}/0")
